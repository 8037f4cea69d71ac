package limits

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sluice/conf"
	"sluice/limits/memstore"
	"sluice/lists"
	"sluice/policy"
)

// matchEngine compiles rules with [lists] lc on a fresh memory store.
func matchEngine(t *testing.T, trusted []string, lc lists.Config, mode policy.Mode, rules ...Rule) *Engine {
	t.Helper()
	st, err := memstore.New(memstore.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := &Config{Trusted: trusted, Rules: rules}
	cfg.Defaults()
	if err := lc.Validate(); err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for n := range lc {
		names[n] = true
	}
	if err := cfg.Validate(names); err != nil {
		t.Fatal(err)
	}
	set, _, err := lc.Build(nil)
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(cfg, set, Options{Store: st, Mode: global(mode)})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// facts is a session as the milter would describe it at RCPT.
func facts(e *Engine, ip string) policy.Facts {
	f := policy.Facts{
		Listener: "smtpd", ClientName: "unknown", Helo: "mail.example.org",
		Sender: "alice@example.org", Rcpt: "bob@example.net",
	}
	if ip != "" {
		f.ClientIP = netip.MustParseAddr(ip)
	}
	f.Trusted = e.Trusted(f.ClientIP)
	return f
}

// crossed runs one event at st and returns the names of the rules crossed.
func crossed(t *testing.T, e *Engine, st policy.Stage, f policy.Facts) []string {
	t.Helper()
	s := e.NewSession()
	vs, err := e.Check(context.Background(), st, &f, s)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	refused := false
	for _, v := range vs {
		names = append(names, v.Source)
		refused = refused || v.Action.Refuses()
	}
	e.Settle(context.Background(), s, refused)
	return names
}

// oneShot is a rule that every event it applies to crosses: a per-message
// cap of 0 recipients already taken (RcptCount 1, cap 1).
func oneShot(name string, m Match) Rule {
	return Rule{Name: name, Count: "recipients", MaxRcptPerMessage: 1, Match: m}
}

func boolp(b bool) *bool { return &b }

// applies reports whether the rule named name crossed on the event.
func applies(t *testing.T, e *Engine, f policy.Facts) bool {
	t.Helper()
	f.RcptCount = 1
	return len(crossed(t, e, policy.StageRcpt, f)) > 0
}

func TestMatchConditions(t *testing.T) {
	dir := t.TempDir()
	jp := filepath.Join(dir, "jp.cidr")
	if err := os.WriteFile(jp, []byte("# Japan\n203.0.113.0/24\n.example.jp\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	lc := lists.Config{
		"jp":       "file:" + jp,
		"freemail": []any{"gmail.com", "yahoo.co.jp", `/^mail\.ru$/`},
		"partners": []any{"example.org", ".partner.example"},
	}
	type tc struct {
		name string
		m    Match
		f    func(*policy.Facts)
		want bool
	}
	cases := []tc{
		{"no condition", Match{}, nil, true},
		{"listener", Match{Listener: []string{"submission"}}, func(f *policy.Facts) { f.Listener = "submission" }, true},
		{"listener other", Match{Listener: []string{"submission"}}, nil, false},
		{"listener any of", Match{Listener: []string{"submission", "smtpd"}}, nil, true},
		{"authenticated", Match{Authenticated: boolp(true)}, func(f *policy.Facts) { f.SASLUser = "alice" }, true},
		{"authenticated not", Match{Authenticated: boolp(true)}, nil, false},
		{"unauthenticated", Match{Authenticated: boolp(false)}, nil, true},
		{"unauthenticated not", Match{Authenticated: boolp(false)}, func(f *policy.Facts) { f.SASLUser = "alice" }, false},
		{"client inline CIDR", Match{Client: []string{"192.0.2.0/24"}}, nil, true},
		{"client inline CIDR miss", Match{Client: []string{"198.51.100.0/24"}}, nil, false},
		{"client inline address", Match{Client: []string{"192.0.2.7"}}, nil, true},
		{"client IPv6", Match{Client: []string{"2001:db8::/32"}}, func(f *policy.Facts) { f.ClientIP = netip.MustParseAddr("2001:db8::25") }, true},
		{"client named list (file)", Match{Client: []string{"jp"}}, func(f *policy.Facts) { f.ClientIP = netip.MustParseAddr("203.0.113.9") }, true},
		{"client named list miss", Match{Client: []string{"jp"}}, nil, false},
		{"client by host name", Match{Client: []string{"jp"}}, func(f *policy.Facts) { f.ClientName = "mx1.example.jp" }, true},
		{"client unknown name", Match{Client: []string{".example.jp"}}, func(f *policy.Facts) { f.ClientName = "unknown" }, false},
		{"client list or inline", Match{Client: []string{"jp", "192.0.2.0/24"}}, nil, true},
		{"client without address", Match{Client: []string{"0.0.0.0/0", "::/0"}}, func(f *policy.Facts) { f.ClientIP = netip.Addr{} }, false},
		{"sender_domain named", Match{SenderDomain: []string{"partners"}}, nil, true},
		{"sender_domain suffix", Match{SenderDomain: []string{"partners"}}, func(f *policy.Facts) { f.Sender = "x@a.partner.example" }, true},
		{"sender_domain miss", Match{SenderDomain: []string{"freemail"}}, nil, false},
		{"sender_domain inline", Match{SenderDomain: []string{"Example.ORG"}}, nil, true},
		{"sender_domain regexp", Match{SenderDomain: []string{"freemail"}}, func(f *policy.Facts) { f.Sender = "x@MAIL.ru" }, true},
		{"sender_domain angle brackets", Match{SenderDomain: []string{"partners"}}, func(f *policy.Facts) { f.Sender = "<alice@example.org.>" }, true},
		{"sender_domain null sender", Match{SenderDomain: []string{"partners"}}, func(f *policy.Facts) { f.Sender = "" }, false},
		{"rcpt_domain", Match{RcptDomain: []string{"freemail"}}, func(f *policy.Facts) { f.Rcpt = "someone@Gmail.com" }, true},
		{"rcpt_domain miss", Match{RcptDomain: []string{"freemail"}}, nil, false},
		{"rcpt_domain inline", Match{RcptDomain: []string{"gmail.com", "example.net"}}, nil, true},
		{"helo", Match{Helo: `^mail\.`}, nil, true},
		{"helo ignores case", Match{Helo: `^MAIL\.EXAMPLE\.ORG$`}, nil, true},
		{"helo case on", Match{Helo: `(?-i)^MAIL\.`}, nil, false},
		{"helo miss", Match{Helo: `^\[`}, nil, false},
		{"sender regexp", Match{Sender: `^alice@`}, nil, true},
		{"sender regexp ignores case", Match{Sender: `^ALICE@`}, nil, true},
		{"sender regexp miss", Match{Sender: `^bob@`}, nil, false},
		{"sender regexp null sender", Match{Sender: `^$`}, func(f *policy.Facts) { f.Sender = "" }, true},
		{"all hold", Match{Listener: []string{"smtpd"}, Client: []string{"192.0.2.0/24"}, SenderDomain: []string{"partners"},
			RcptDomain: []string{"example.net"}, Helo: "example", Sender: "alice", Authenticated: boolp(false)}, nil, true},
		{"all but one", Match{Listener: []string{"smtpd"}, Client: []string{"192.0.2.0/24"}, SenderDomain: []string{"partners"},
			RcptDomain: []string{"example.net"}, Helo: "example", Sender: "bob", Authenticated: boolp(false)}, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := matchEngine(t, []string{}, lc, policy.ModeEnforce, oneShot("r", c.m))
			f := facts(e, "192.0.2.7")
			if c.f != nil {
				c.f(&f)
			}
			if got := applies(t, e, f); got != c.want {
				t.Errorf("rule applies = %v, want %v (facts %+v)", got, c.want, f)
			}
			// explain agrees with Check, and says why when it does not apply.
			tr := e.Explain(policy.StageRcpt, &f)
			if len(tr) != 1 || tr[0].Applies != c.want || (tr[0].Why == "") != c.want {
				t.Errorf("Explain = %+v", tr)
			}
			if !c.want {
				t.Logf("why not: %s", tr[0].Why)
			}
		})
	}
}

func TestMatchCompileErrors(t *testing.T) {
	names := map[string]bool{"jp": true}
	for _, tc := range []struct {
		r    Rule
		want string
	}{
		{Rule{Name: "r", Count: "connections", Per: "client_ip", Rate: "1/1m", Match: Match{Helo: "x"}}, "match.helo: not known at connect"},
		{Rule{Name: "r", Count: "connections", Per: "client_ip", Rate: "1/1m", Match: Match{Sender: "x"}}, "match.sender: not known at connect"},
		{Rule{Name: "r", Count: "concurrent", Per: "client_ip", Max: 1, Match: Match{Authenticated: boolp(true)}}, "match.authenticated: not known at connect"},
		{Rule{Name: "r", Count: "connections", Per: "client_ip", Rate: "1/1m", Match: Match{SenderDomain: []string{"x.org"}}}, "match.sender_domain: not known at connect"},
		{Rule{Name: "r", Count: "messages", Per: "client_ip", Rate: "1/1m", Match: Match{RcptDomain: []string{"gmail.com"}}}, "match.rcpt_domain: only a rule that counts recipients"},
		{Rule{Name: "r", Count: "bytes", Per: "client_ip", Rate: "1MB/1m", Match: Match{RcptDomain: []string{"gmail.com"}}}, "match.rcpt_domain: only a rule that counts recipients"},
		{Rule{Name: "r", Count: "messages", Per: "client_ip", Rate: "1/1m", Match: Match{Helo: "("}}, `match.helo: bad regexp "(": missing closing )`},
		{Rule{Name: "r", Count: "messages", Per: "client_ip", Rate: "1/1m", Match: Match{Sender: "[a"}}, `match.sender: bad regexp "[a": missing closing ]`},
		{Rule{Name: "r", Count: "messages", Per: "client_ip", Rate: "1/1m", Match: Match{Client: []string{"japan"}}}, `match.client.0: no list named "japan"`},
		{Rule{Name: "r", Count: "messages", Per: "client_ip", Rate: "1/1m", Match: Match{Client: []string{"192.0.2.0/33"}}}, "match.client: entry 1: bad network"},
		{Rule{Name: "r", Count: "messages", Per: "client_ip", Rate: "1/1m", Match: Match{SenderDomain: []string{"jp", "bad..domain"}}}, "match.sender_domain: entry 1"},
		{Rule{Name: "r", Count: "messages", Per: "client_ip", Rate: "1/1m", Match: Match{Listener: []string{"smtpd", ""}}}, "match.listener.1: empty listener name"},
		{Rule{Name: "r", Count: "messages", Per: "client_ip", Rate: "1/1m", Action: policy.MustAction("disconnect"), Reply: policy.MustReply("451 4.7.1 x")}, "needs a 421"},
		{Rule{Name: "r", Count: "messages", Per: "client_ip", Rate: "1/1m", Action: policy.MustAction("reject"), Reply: policy.MustReply("451 4.7.1 x")}, "needs a 5xx"},
		{Rule{Name: "r", Count: "messages", Per: "client_ip", Rate: "1/1m", Action: policy.MustAction("tempfail"), Reply: policy.MustReply("550 5.7.1 x")}, "needs a 4xx"},
		{Rule{Name: "r", Count: "messages", Per: "client_ip", Rate: "1/1m", Action: policy.MustAction("tag"), Reply: policy.MustReply("451 4.7.1 x")}, "sends no reply"},
		{Rule{Name: "r", Count: "messages", Per: "client_ip", Rate: "1/1m", Action: policy.MustAction("hold"), Reply: policy.MustReply("451 4.7.1 x")}, "sends no reply"},
		{Rule{Name: "r", Count: "messages", Per: "client_ip", Rate: "1/1m", Action: policy.MustAction("delay")}, "delay"},
	} {
		cfg := Config{Trusted: []string{}, Rules: []Rule{tc.r}}
		err := cfg.Validate(names)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.r.Match, err, tc.want)
		}
	}
	// A rule counting at RCPT may match on everything.
	ok := Rule{Name: "r", Count: "recipients", Per: "rcpt_domain", Rate: "6/1m", Match: Match{
		Listener: []string{"smtpd"}, Authenticated: boolp(false), Client: []string{"jp"}, SenderDomain: []string{"x.org"},
		RcptDomain: []string{"gmail.com"}, Helo: ".", Sender: "."}}
	cfg := &Config{Rules: []Rule{ok}}
	cfg.Defaults()
	if err := cfg.Validate(names); err != nil {
		t.Errorf("a rule at RCPT with every condition: %v", err)
	}
}

func TestTrustedAndExcept(t *testing.T) {
	rules := []Rule{
		oneShot("plain", Match{}),
		{Name: "for-trusted", Count: "recipients", MaxRcptPerMessage: 1, ApplyToTrusted: true},
		{Name: "excepting", Count: "recipients", MaxRcptPerMessage: 1, Except: []string{"192.0.2.0/24", "partner.example"}},
	}
	// The default trusted list: loopback.
	e := matchEngine(t, nil, nil, policy.ModeEnforce, rules...)
	for _, tc := range []struct {
		ip, sender string
		want       string
	}{
		{"127.0.0.1", "a@x.org", "for-trusted"},
		{"::1", "a@x.org", "for-trusted"},
		{"192.0.2.7", "a@x.org", "plain,for-trusted"},
		{"198.51.100.1", "a@x.org", "plain,for-trusted,excepting"},
		{"198.51.100.1", "a@partner.example", "plain,for-trusted"},
	} {
		f := facts(e, tc.ip)
		f.Sender, f.RcptCount = tc.sender, 1
		if got := strings.Join(crossed(t, e, policy.StageRcpt, f), ","); got != tc.want {
			t.Errorf("%s %s: crossed %q, want %q", tc.ip, tc.sender, got, tc.want)
		}
		tr := e.Explain(policy.StageRcpt, &f)
		for _, r := range tr {
			if r.Applies != strings.Contains(tc.want, r.Rule) {
				t.Errorf("%s: explain %s applies=%v (%s)", tc.ip, r.Rule, r.Applies, r.Why)
			}
		}
	}
	// trusted = [] trusts nobody.
	e = matchEngine(t, []string{}, nil, policy.ModeEnforce, rules...)
	f := facts(e, "127.0.0.1")
	f.RcptCount = 1
	if got := strings.Join(crossed(t, e, policy.StageRcpt, f), ","); got != "plain,for-trusted,excepting" {
		t.Errorf("trusted = []: %q", got)
	}
	// An explicit list replaces the default.
	e = matchEngine(t, []string{"192.0.2.0/24"}, nil, policy.ModeEnforce, rules...)
	if !e.Trusted(netip.MustParseAddr("192.0.2.9")) || e.Trusted(netip.MustParseAddr("127.0.0.1")) {
		t.Error("an explicit trusted list")
	}
}

// trusted and except may name lists of [lists] beside inline entries; a
// bare word must name a list in both — a SASL login is sasl_user:NAME —
// so that a list never defined is an error, not a login that never comes.
func TestTrustedAndExceptNameLists(t *testing.T) {
	lc := lists.Config{
		"mynetworks": []any{"10.0.0.0/8"},
		"partners":   []any{"198.51.100.0/24", "partner.example"},
	}
	rules := []Rule{
		{Name: "excepting", Count: "recipients", MaxRcptPerMessage: 1, Except: []string{"partners", "192.0.2.0/24", "sasl_user:relayuser"}},
	}
	e := matchEngine(t, []string{"mynetworks", "::1"}, lc, policy.ModeEnforce, rules...)
	for ip, want := range map[string]bool{"10.1.2.3": true, "::1": true, "127.0.0.1": false, "192.0.2.1": false} {
		if got := e.Trusted(netip.MustParseAddr(ip)); got != want {
			t.Errorf("Trusted(%s) = %v, want %v", ip, got, want)
		}
	}
	for _, tc := range []struct {
		ip, sender, user string
		crossed          bool
	}{
		{"203.0.113.1", "a@x.org", "", true},
		{"198.51.100.9", "a@x.org", "", false},          // named list, network
		{"203.0.113.1", "a@partner.example", "", false}, // named list, domain
		{"192.0.2.9", "a@x.org", "", false},             // inline network
		{"203.0.113.1", "a@x.org", "relayuser", false},  // sasl_user:relayuser
		{"203.0.113.1", "a@x.org", "RelayUser", false},  // logins compared without case
		{"203.0.113.1", "a@x.org", "otheruser", true},
	} {
		f := facts(e, tc.ip)
		f.Sender, f.SASLUser, f.RcptCount = tc.sender, tc.user, 1
		if got := len(crossed(t, e, policy.StageRcpt, f)) > 0; got != tc.crossed {
			t.Errorf("%+v: crossed = %v", tc, got)
		}
	}
	cfg := &Config{Trusted: []string{"mynetwork"}}
	cfg.Defaults()
	err := cfg.Validate(map[string]bool{"mynetworks": true})
	if err == nil || !strings.Contains(err.Error(), `no list named "mynetwork"`) {
		t.Errorf("a misspelt list in trusted: %v", err)
	}
	for _, except := range [][]string{{"mynetworks"}, {"192.0.2.0/24", "mynetwork"}} {
		cfg = &Config{Rules: []Rule{{Name: "r", Count: "messages", Per: "sender", Rate: "1/1h", Except: except}}}
		cfg.Defaults()
		err = cfg.Validate(map[string]bool{"partners": true})
		var ce *conf.Error
		if !errors.As(err, &ce) || strings.Join(ce.Path, ".") != fmt.Sprintf("limit.0.except.%d", len(except)-1) ||
			!strings.Contains(err.Error(), "no list named") || !strings.Contains(err.Error(), "sasl_user:NAME") {
			t.Errorf("except = %q with no such list: %v; want an error at its entry", except, err)
		}
	}
}

// Rule order is the file's; a final rule that applies stops the later
// ones of its stage: a class that replaces the defaults.
func TestFinal(t *testing.T) {
	e := matchEngine(t, []string{}, lists.Config{"office": []any{"192.0.2.0/24"}}, policy.ModeEnforce,
		Rule{Name: "office", Count: "recipients", MaxRcptPerMessage: 5, Final: true, Match: Match{Client: []string{"office"}}},
		oneShot("default-a", Match{}),
		oneShot("default-b", Match{}),
		Rule{Name: "at-mail", Count: "messages", Per: "client_ip", Rate: "1/1h"}, // another stage: not stopped
	)
	for _, tc := range []struct {
		ip   string
		want string
	}{
		{"192.0.2.7", ""}, // the office class: 5 a message, the defaults skipped
		{"198.51.100.1", "default-a,default-b"},
	} {
		f := facts(e, tc.ip)
		f.RcptCount = 1
		if got := strings.Join(crossed(t, e, policy.StageRcpt, f), ","); got != tc.want {
			t.Errorf("%s: crossed %q, want %q", tc.ip, got, tc.want)
		}
	}
	f := facts(e, "192.0.2.7")
	f.RcptCount = 5
	if got := strings.Join(crossed(t, e, policy.StageRcpt, f), ","); got != "office" {
		t.Errorf("the office class's own limit: %q", got)
	}
	tr := e.Explain(policy.StageRcpt, &f)
	if len(tr) != 3 || !tr[0].Applies || !tr[0].Final || tr[1].Applies || !strings.Contains(tr[1].Why, "office, before it, is final") {
		t.Errorf("explain: %+v", tr)
	}
	// A final rule that does not apply stops nothing.
	f = facts(e, "198.51.100.1")
	tr = e.Explain(policy.StageRcpt, &f)
	if tr[0].Applies || !tr[1].Applies || !tr[2].Applies {
		t.Errorf("explain for a client outside the class: %+v", tr)
	}
	// At MAIL, the final rule at RCPT stops nothing.
	f = facts(e, "192.0.2.7")
	crossed(t, e, policy.StageMail, f)
	if got := crossed(t, e, policy.StageMail, f); len(got) != 1 || got[0] != "at-mail" {
		t.Errorf("at mail: %v", got)
	}
}

// Per-destination throttling: 6 recipients a minute at gmail.com, shared
// by every sender and client; other domains pass.
func TestPerDestinationThrottle(t *testing.T) {
	e := matchEngine(t, []string{}, nil, policy.ModeEnforce, Rule{
		Name: "gmail-throttle", Count: "recipients", Per: "rcpt_domain", Rate: "6/1m",
		Match: Match{RcptDomain: []string{"gmail.com"}},
	})
	refused := 0
	for i := range 10 {
		f := facts(e, "192.0.2.7")
		f.Sender = []string{"a@x.org", "b@y.org"}[i%2]
		f.Rcpt = "user" + string(rune('a'+i)) + "@GMail.com"
		if got := crossed(t, e, policy.StageRcpt, f); len(got) > 0 {
			refused++
			if i < 6 {
				t.Errorf("recipient %d refused within the rate", i+1)
			}
		}
	}
	if refused != 4 {
		t.Errorf("%d of 10 recipients refused, want 4", refused)
	}
	f := facts(e, "192.0.2.7")
	f.Rcpt = "someone@example.net"
	if got := crossed(t, e, policy.StageRcpt, f); len(got) != 0 {
		t.Errorf("another domain refused: %v", got)
	}
	// The verdict tempfails with the rule's key and a retry time.
	s := e.NewSession()
	f.Rcpt = "late@gmail.com"
	vs, _ := e.Check(context.Background(), policy.StageRcpt, &f, s)
	if len(vs) != 1 || vs[0].Action != policy.ActionTempfail || vs[0].Key != "rcpt_domain:gmail.com" || vs[0].RetryAfter <= 0 {
		t.Errorf("verdict %+v", vs)
	}
	e.Settle(context.Background(), s, true)
}

func TestExplainReasons(t *testing.T) {
	e := matchEngine(t, []string{"127.0.0.0/8"}, lists.Config{"jp": []any{"203.0.113.0/24"}}, policy.ModeEnforce,
		Rule{Name: "sub", Count: "messages", Per: "sasl_user", Rate: "100/1h", Match: Match{Listener: []string{"submission"}}},
		Rule{Name: "authed", Count: "messages", Per: "sasl_user", Rate: "100/1h", Match: Match{Authenticated: boolp(true)}},
		Rule{Name: "jp", Count: "messages", Per: "client_ip", Rate: "10/1m", Match: Match{Client: []string{"jp"}}},
		Rule{Name: "freemail", Count: "messages", Per: "sender", Rate: "10/1m", Match: Match{SenderDomain: []string{"gmail.com"}}},
		Rule{Name: "helo", Count: "messages", Per: "sender", Rate: "10/1m", Match: Match{Helo: `^\[`}},
		Rule{Name: "bounces", Count: "messages", Per: "client_ip", Rate: "10/1m", Match: Match{Sender: `^$`}},
		Rule{Name: "per-sender", Count: "messages", Per: "sender", Rate: []any{"30/1m", "500/1d"}},
		Rule{Name: "local", Count: "messages", Per: "client_ip", Rate: "10/1m", ApplyToTrusted: true, Match: Match{Client: []string{"127.0.0.0/8"}}},
	)
	f := facts(e, "192.0.2.7")
	f.Sender = ""
	tr := e.Explain(policy.StageMail, &f)
	want := map[string]string{
		"sub":        `match.listener: listener "smtpd" is not one of ["submission"]`,
		"authed":     "match.authenticated: the client did not authenticate",
		"jp":         "match.client: client 192.0.2.7 (unknown) is in none of jp",
		"freemail":   "match.sender_domain: sender <> has no domain",
		"helo":       `match.helo: HELO "mail.example.org" does not match /^\[/`,
		"bounces":    "",
		"per-sender": `counts nothing: the null sender is not counted per sender (null_sender = "skip")`,
		"local":      "match.client: client 192.0.2.7 (unknown) is in none of client (inline)",
	}
	for _, r := range tr {
		if w, ok := want[r.Rule]; !ok || !strings.HasPrefix(r.Why, w) || (w == "") != (r.Why == "") {
			t.Errorf("%s: why %q, want %q", r.Rule, r.Why, w)
		}
	}
	if tr[6].Burst != 30 || tr[6].Limit != "30/1m,500/1d" || tr[5].Key != "client_ip:192.0.2.7" {
		t.Errorf("per-sender burst %d limit %q; bounces key %q", tr[6].Burst, tr[6].Limit, tr[5].Key)
	}
	f = facts(e, "127.0.0.1")
	tr = e.Explain(policy.StageMail, &f)
	if !strings.Contains(tr[6].Why, "127.0.0.1 is trusted") || !tr[7].Applies {
		t.Errorf("trusted client: %+v", tr)
	}
}

// What a trace says of a rule's limit reads once, with its burst.
func TestExplainWhat(t *testing.T) {
	e := matchEngine(t, nil, nil, policy.ModeEnforce,
		Rule{Name: "rate", Count: "messages", Per: "sender", Rate: "30/1m", Burst: 5},
		Rule{Name: "windows", Count: "messages", Per: "sender", Rate: []any{"30/1m", "500/1d"}},
		Rule{Name: "cap", Count: "recipients", MaxRcptPerMessage: 1000},
		Rule{Name: "both", Count: "recipients", Per: "sender", Rate: "100/1h", MaxRcptPerMessage: 50},
		Rule{Name: "conc", Count: "concurrent", Per: "client_ip", Max: 20},
		Rule{Name: "tarpit", Count: "connections", Action: policy.MustAction("delay"), Delay: conf.Duration(time.Second)},
	)
	want := map[string]string{
		"rate":    "messages 30/1m (burst 5)",
		"windows": "messages 30/1m,500/1d (burst 30,500)",
		"cap":     "1000 recipients a message",
		"both":    "recipients 100/1h (burst 100), 50 recipients a message",
		"conc":    "concurrent 20 at once",
		"tarpit":  "every connection",
	}
	f := facts(e, "192.0.2.7")
	for _, st := range []policy.Stage{policy.StageConnect, policy.StageMail, policy.StageRcpt} {
		for _, tr := range e.Explain(st, &f) {
			if tr.What != want[tr.Rule] {
				t.Errorf("%s: %q, want %q", tr.Rule, tr.What, want[tr.Rule])
			}
		}
	}
}
