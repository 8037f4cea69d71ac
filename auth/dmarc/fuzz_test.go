package dmarc

import (
	"context"
	"strings"
	"testing"
)

// Whatever a zone publishes, parsing a record never panics, and what
// parses has policies and a pct the evaluation can use.
func FuzzParseRecord(f *testing.F) {
	for _, s := range []string{
		"v=DMARC1; p=reject", "v=DMARC1; p=none; sp=quarantine; np=reject; pct=0; adkim=s; aspf=r",
		"v=DMARC1;p=quarantine;rua=mailto:a@b.example,mailto:c@d.example;ri=3600;fo=0:1:d:s;rf=afrf",
		"v = DMARC1 ; p = reject ;", "v=DMARC1; p=reject; pct=-1", "v=DMARC1; np=", "v=DMARC1; p=reject; p=none",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRecord(s)
		if err != nil {
			return
		}
		for _, p := range []Policy{r.Policy, r.SubdomainPolicy, r.NP} {
			switch p {
			case "", PolicyNone, PolicyQuarantine, PolicyReject:
			default:
				t.Fatalf("%q: policy %q", s, p)
			}
		}
		if r.Policy == "" {
			t.Fatalf("%q: parsed without p", s)
		}
		if pct := r.Percent(); pct < 0 || pct > 100 {
			t.Fatalf("%q: pct %d", s, pct)
		}
		if r.DKIMAlignment != "r" && r.DKIMAlignment != "s" || r.SPFAlignment != "r" && r.SPFAlignment != "s" {
			t.Fatalf("%q: alignment %q %q", s, r.DKIMAlignment, r.SPFAlignment)
		}
		// A record that parses is one the evaluation takes whole.
		z := &zone{txt: map[string][]string{"_dmarc.fuzz.example": {s}}}
		e := newEvaluator(t, z, Config{})
		res := e.Evaluate(context.Background(), &Input{From: []string{"a@fuzz.example"}})
		if res.Value != Fail || res.Policy != r.Policy {
			t.Fatalf("%q: %+v", s, res)
		}
	})
}

// Alignment is an equivalence on the names it holds: every normalized
// domain is aligned with itself, alignment does not depend on the order,
// strict implies relaxed, and relaxed is exactly a shared organizational
// domain.
func FuzzAligned(f *testing.F) {
	for _, p := range [][2]string{
		{"example.com", "mail.example.com"}, {"a.example.co.uk", "b.example.co.uk"}, {"co.uk", "example.co.uk"},
		{"EXAMPLE.com.", "example.com"}, {"b\u00fccher.example", "xn--bcher-kva.example"}, {"com", "com"}, {"", "x"},
	} {
		f.Add(p[0], p[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		na, nb := NormalizeDomain(a), NormalizeDomain(b)
		if na != "" && NormalizeDomain(na) != na {
			t.Fatalf("NormalizeDomain(%q) = %q, not a fixed point", a, na)
		}
		for _, m := range []Mode{Strict, Relaxed} {
			if na != "" && !Aligned(na, na, m) {
				t.Fatalf("%q not aligned with itself (%s)", na, m)
			}
			if Aligned(na, nb, m) != Aligned(nb, na, m) {
				t.Fatalf("%q, %q: alignment depends on order (%s)", na, nb, m)
			}
		}
		if Aligned(na, nb, Strict) && !Aligned(na, nb, Relaxed) {
			t.Fatalf("%q, %q: strict but not relaxed", na, nb)
		}
		if na != "" && nb != "" && Aligned(na, nb, Relaxed) != (OrgDomain(na) == OrgDomain(nb)) {
			t.Fatalf("%q, %q: relaxed %v but org domains %q, %q", na, nb, Aligned(na, nb, Relaxed), OrgDomain(na), OrgDomain(nb))
		}
		if org := OrgDomain(na); na != "" && !(org == na || strings.HasSuffix(na, "."+org)) {
			t.Fatalf("OrgDomain(%q) = %q, not a parent", na, org)
		}
		// The From domain of an address is normalized the same way.
		if na != "" && strings.Contains(na, ".") {
			if d, err := FromDomain([]string{"x@" + na}); err != nil || d != na {
				t.Fatalf("FromDomain(x@%s) = %q, %v", na, d, err)
			}
		}
	})
}
