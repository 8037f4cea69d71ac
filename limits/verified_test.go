package limits

import (
	"net/netip"
	"strings"
	"testing"

	"sluice/policy"
)

// A rule per dkim_domain counts each signing domain that passed, once per
// message, at end of message; a message no signature passed for counts
// nowhere. A rule per from_domain with match.dmarc = "pass" counts only
// messages whose From domain DMARC authenticated.
func TestVerifiedKeys(t *testing.T) {
	v := newTestEnv(t, rules(
		Rule{Name: "per-signer", Count: "messages", Per: "dkim_domain", Rate: "2/1d"},
		Rule{Name: "per-author", Count: "messages", Per: "from_domain", Rate: "1/1d", Match: Match{DMARC: "pass"}},
	), policy.ModeEnforce)
	if v.e.Needs(policy.StageMail) || !v.e.Needs(policy.StageData) {
		t.Fatalf("the rules count at MAIL FROM: they must wait for the end of the message")
	}
	s := v.e.NewSession()
	msg := func(dmarc, from string, signers ...string) []policy.Verdict {
		f := &policy.Facts{ClientIP: netip.MustParseAddr("192.0.2.1"), Sender: "a@x.example", DKIMDomains: signers, FromDomain: from, DMARC: dmarc}
		vs, _ := v.step(s, policy.StageData, f)
		return vs
	}
	if vs := msg("fail", "b.example", "a.example", "esp.example"); len(vs) != 0 {
		t.Fatalf("first message: %+v", vs)
	}
	if vs := msg("none", "c.example", "esp.example"); len(vs) != 0 {
		t.Fatalf("second message: %+v", vs)
	}
	// esp.example has signed two: a third is over, whichever else signs.
	vs := msg("fail", "d.example", "new.example", "esp.example")
	if len(vs) != 1 || vs[0].Source != "per-signer" || vs[0].Key != "dkim_domain:esp.example" {
		t.Fatalf("third message signed by esp.example: %+v", vs)
	}
	if vs := msg("fail", "e.example"); len(vs) != 0 {
		t.Fatalf("unsigned: %+v", vs)
	}
	// per-author counts DMARC passes only.
	for i, dmarc := range []string{"fail", "none", "pass"} {
		if vs := msg(dmarc, "author.example"); len(vs) != 0 {
			t.Fatalf("%s (message %d): %+v", dmarc, i, vs)
		}
	}
	vs = msg("pass", "Author.Example")
	if len(vs) != 1 || vs[0].Source != "per-author" || vs[0].Key != "from_domain:author.example" {
		t.Fatalf("second DMARC pass from author.example: %+v", vs)
	}
}

// What DKIM and DMARC verify is known at end of message only: a rule that
// counts anything but messages or bytes cannot read it.
func TestVerifiedKeysNeedTheEnd(t *testing.T) {
	for _, r := range []Rule{
		{Name: "r", Count: "recipients", Per: "dkim_domain", Rate: "1/1h"},
		{Name: "r", Count: "connections", Per: []any{"client_ip", "from_domain"}, Rate: "1/1h"},
		{Name: "r", Count: "recipients", Per: "rcpt", Rate: "1/1h", Match: Match{DMARC: "pass"}},
		{Name: "r", Count: "messages", Per: "sender", Rate: "1/1h", Match: Match{DMARC: "maybe"}},
	} {
		err := (&Config{Rules: []Rule{r}}).Validate(nil)
		if err == nil || !strings.Contains(err.Error(), "dmarc") && !strings.Contains(err.Error(), "end of message") {
			t.Errorf("%+v: %v", r, err)
		}
	}
	dkim, dmarc := (&Config{Rules: []Rule{{Name: "a", Count: "bytes", Per: "dkim_domain", Rate: "1MB/1h"}}}).UsesVerified()
	if !dkim || dmarc {
		t.Errorf("UsesVerified = %v, %v", dkim, dmarc)
	}
}
