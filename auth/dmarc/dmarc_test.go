package dmarc

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/authres"

	"sluice/policy"
)

// zone is a resolver answering from a map: TXT records by name, and names
// that time out; every other name is NXDOMAIN.
type zone struct {
	txt     map[string][]string
	exists  map[string]bool // names with an A record
	timeout map[string]bool
	asked   []string
}

func (z *zone) LookupTXT(ctx context.Context, name string) ([]string, error) {
	z.asked = append(z.asked, name)
	if z.timeout[name] {
		return nil, &net.DNSError{Err: "i/o timeout", Name: name, IsTimeout: true}
	}
	if t, ok := z.txt[name]; ok {
		return t, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func (z *zone) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func (z *zone) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if z.exists[host] {
		return []netip.Addr{netip.MustParseAddr("192.0.2.1")}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func newEvaluator(t *testing.T, z *zone, cfg Config) *Evaluator {
	t.Helper()
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	e, err := New(&cfg, z, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// The domains of the matrix below and their records.
func matrixZone() *zone {
	return &zone{txt: map[string][]string{
		"_dmarc.reject.example":     {"v=DMARC1; p=reject"},
		"_dmarc.strict.example":     {"v=DMARC1; p=reject; adkim=s; aspf=s"},
		"_dmarc.quarantine.example": {"v=spf1 -all", "v=DMARC1; p=quarantine; rua=mailto:d@quarantine.example"},
		"_dmarc.none.example":       {"v=DMARC1; p=none"},
		"_dmarc.sp.example":         {"v=DMARC1; p=reject; sp=none"},
		"_dmarc.pct0.example":       {"v=DMARC1; p=reject; pct=0"},
		"_dmarc.pct0q.example":      {"v=DMARC1; p=quarantine; pct=0"},
		"_dmarc.np.example":         {"v=DMARC1; p=none; sp=quarantine; np=reject"},
		"_dmarc.two.example":        {"v=DMARC1; p=reject", "v=DMARC1; p=none"},
		"_dmarc.sub.twoorg.example": {"v=DMARC1; p=none", "v=DMARC1; p=none"},
		"_dmarc.twoorg.example":     {"v=DMARC1; p=reject"},
		"_dmarc.bad.example":        {"v=DMARC1; p=maybe"},
		"_dmarc.uk-org.co.uk":       {"v=DMARC1; p=reject"},
	}, exists: map[string]bool{"mail.np.example": true}, timeout: map[string]bool{"_dmarc.slow.example": true}}
}

// The DMARC matrix: aligned SPF only, aligned DKIM only, neither; relaxed
// and strict alignment; a subdomain under sp; pct=0; p=none; np for a
// subdomain that does not exist; no record; two records at one name;
// a broken record; a DNS timeout; a From that names no single domain.
func TestEvaluateMatrix(t *testing.T) {
	for _, tc := range []struct {
		name    string
		from    string
		spf     string // result:domain
		dkim    []string
		value   string
		policy  Policy
		applied Policy
		key     string // the config key the outcome maps to
	}{
		{"aligned SPF only", "a@reject.example", "pass:reject.example", nil, Pass, PolicyReject, PolicyNone, ""},
		{"aligned DKIM only", "a@reject.example", "fail:other.example", []string{"reject.example"}, Pass, PolicyReject, PolicyNone, ""},
		{"neither", "a@reject.example", "pass:other.example", []string{"other.example"}, Fail, PolicyReject, PolicyReject, "reject"},
		{"relaxed: SPF of a subdomain", "a@reject.example", "pass:bounce.reject.example", nil, Pass, PolicyReject, PolicyNone, ""},
		{"relaxed: DKIM of the parent", "a@news.reject.example", "", []string{"reject.example"}, Pass, PolicyReject, PolicyNone, ""},
		{"strict: SPF of a subdomain", "a@strict.example", "pass:bounce.strict.example", nil, Fail, PolicyReject, PolicyReject, "reject"},
		{"strict: DKIM of a subdomain", "a@strict.example", "", []string{"mail.strict.example"}, Fail, PolicyReject, PolicyReject, "reject"},
		{"strict: exact DKIM", "a@strict.example", "", []string{"STRICT.example."}, Pass, PolicyReject, PolicyNone, ""},
		{"SPF not pass never aligns", "a@reject.example", "softfail:reject.example", nil, Fail, PolicyReject, PolicyReject, "reject"},
		{"quarantine", "a@quarantine.example", "", nil, Fail, PolicyQuarantine, PolicyQuarantine, "quarantine"},
		{"p=none", "a@none.example", "", nil, Fail, PolicyNone, PolicyNone, "none"},
		{"subdomain under sp", "a@mail.sp.example", "", nil, Fail, PolicyNone, PolicyNone, "none"},
		{"org domain itself keeps p", "a@sp.example", "", nil, Fail, PolicyReject, PolicyReject, "reject"},
		{"pct=0 reject becomes quarantine", "a@pct0.example", "", nil, Fail, PolicyReject, PolicyQuarantine, "quarantine"},
		{"pct=0 quarantine becomes none", "a@pct0q.example", "", nil, Fail, PolicyQuarantine, PolicyNone, "none"},
		{"np: subdomain that does not exist", "a@ghost.np.example", "", nil, Fail, PolicyReject, PolicyReject, "reject"},
		{"np: subdomain that exists takes sp", "a@mail.np.example", "", nil, Fail, PolicyQuarantine, PolicyQuarantine, "quarantine"},
		{"no record", "a@norecord.example", "", nil, None, "", "", ""},
		{"two records: no policy", "a@two.example", "", nil, None, "", "", ""},
		{"two records at the From domain: not the org's", "a@sub.twoorg.example", "", nil, None, "", "", ""},
		{"public suffix of two labels", "a@mail.uk-org.co.uk", "", nil, Fail, PolicyReject, PolicyReject, "reject"},
		{"broken record", "a@bad.example", "", nil, PermError, "", "", "permerror"},
		{"DNS timeout", "a@slow.example", "", nil, TempError, "", "", "temperror"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEvaluator(t, matrixZone(), Config{})
			e.sample = func() int { return 50 }
			in := Input{From: []string{"Someone <" + tc.from + ">"}, DKIM: tc.dkim}
			in.SPF, in.SPFDomain, _ = strings.Cut(tc.spf, ":")
			r := e.Evaluate(context.Background(), &in)
			if r.Value != tc.value || r.Policy != tc.policy || r.Applied != tc.applied {
				t.Errorf("%+v; want %s policy %q applied %q", r, tc.value, tc.policy, tc.applied)
			}
			v, key := e.Outcome(&r)
			if key != tc.key {
				t.Errorf("outcome key %q, want %q", key, tc.key)
			}
			if (v != nil) != (tc.key != "") {
				t.Errorf("verdict %+v for key %q", v, tc.key)
			}
			if v != nil && (v.Action != policy.ActionTag || v.Source != "dmarc") {
				t.Errorf("verdict %+v, want the default tag from dmarc", v)
			}
		})
	}
}

// pct samples: with pct=30 a message drawn below 30 gets the policy, one
// drawn at 30 or above the next one down.
func TestPercentSample(t *testing.T) {
	z := &zone{txt: map[string][]string{"_dmarc.p.example": {"v=DMARC1; p=reject; pct=30"}}}
	e := newEvaluator(t, z, Config{})
	for draw, want := range map[int]Policy{0: PolicyReject, 29: PolicyReject, 30: PolicyQuarantine, 99: PolicyQuarantine} {
		e.sample = func() int { return draw }
		r := e.Evaluate(context.Background(), &Input{From: []string{"a@p.example"}})
		if r.Applied != want || r.Percent != 30 {
			t.Errorf("draw %d: applied %q pct %d, want %q", draw, r.Applied, r.Percent, want)
		}
	}
}

// A From that names no single author is permerror before any DNS is
// asked: two From fields, two addresses in one, none at all, or one that
// does not parse (CVE-2019-16378: opendmarc took the first).
func TestFromPermError(t *testing.T) {
	for _, from := range [][]string{
		{"a@reject.example", "b@other.example"},
		{"a@other.example, b@reject.example"},
		{},
		{"not an address"},
		{"a@"},
		{"<a@localhost>"},
		{"undisclosed:;"},
	} {
		z := matrixZone()
		e := newEvaluator(t, z, Config{PermError: policy.MustAction("reject")})
		r := e.Evaluate(context.Background(), &Input{From: from, SPF: "pass", SPFDomain: "reject.example"})
		if r.Value != PermError || len(z.asked) != 0 {
			t.Errorf("From %q: %+v, asked %v; want permerror without DNS", from, r, z.asked)
			continue
		}
		v, key := e.Outcome(&r)
		if key != "permerror" || v == nil || v.Action != policy.ActionReject {
			t.Errorf("From %q: outcome %q %+v", from, key, v)
		}
	}
}

// The From domain is the address's, not what a display name says.
func TestFromDomain(t *testing.T) {
	for in, want := range map[string]string{
		`"ceo@bank.example" <x@attacker.example>`:        "attacker.example",
		"Alice <Alice@Example.ORG>":                      "example.org",
		"bob@xn--bcher-kva.example":                      "xn--bcher-kva.example",
		"=?utf-8?q?B=C3=B6b?= <bob@b\u00fccher.example>": "xn--bcher-kva.example",
		"Folded\n <f@fold.example>":                      "fold.example",
	} {
		got, err := FromDomain([]string{in})
		if err != nil || got != want {
			t.Errorf("FromDomain(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// Records: np read beside go-msgauth's tags, v=DMARC1 first, unknown
// tags ignored, bad values refused.
func TestParseRecord(t *testing.T) {
	r, err := ParseRecord("v=DMARC1; p=none; np=reject; future=1; pct=40; adkim=s")
	if err != nil || r.NP != PolicyReject || r.Policy != PolicyNone || r.Percent() != 40 || r.DKIMAlignment != "s" {
		t.Errorf("%+v %v", r, err)
	}
	for _, bad := range []string{"p=reject; v=DMARC1", "v=DMARC2; p=reject", "v=DMARC1; p=none; np=maybe", "v=DMARC1", "v=DMARC1; p=reject; pct=101", strings.Repeat("x", 5000)} {
		if _, err := ParseRecord(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// The Authentication-Results entry parses back with header.from and
// policy.dmarc.
func TestAuthResult(t *testing.T) {
	r := Result{Value: Fail, FromDomain: "reject.example", Policy: PolicyReject, Applied: PolicyQuarantine}
	id, rs, err := authres.Parse(authres.Format("mx.example", []authres.Result{r.AuthResult()}))
	if err != nil || id != "mx.example" || len(rs) != 1 {
		t.Fatalf("%v %v %v", id, rs, err)
	}
	g := rs[0].(*authres.DMARCResult)
	if g.Value != "fail" || g.From != "reject.example" {
		t.Errorf("%+v", g)
	}
	perm := Result{Value: PermError, Reason: `2 From fields; "x"`}
	s := authres.Format("mx.example", []authres.Result{perm.AuthResult()})
	if strings.Count(s, ";") != 1 || !strings.Contains(s, "dmarc=permerror") {
		t.Errorf("%q", s)
	}
}
