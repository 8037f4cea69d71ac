package auth

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"sluice/conf"
	"sluice/test/dnstest"
)

// patient gives lookups the time a server takes to build answers of
// thousands of records on a busy machine, so that a slow answer does not
// pass for the bound under test.
func patient(cfg *Config) {
	cfg.DNS.Timeout = conf.Duration(10 * time.Second) // the most [dns] allows
}

// boundsZone serves answers past sluice's DNS bounds, and policies that
// reach them.
func boundsZone() *dnstest.Zone {
	z := dnstest.HostileZone().MustAddText(
		// an a term whose answer is too large to read
		`huge-a.example. 300 IN TXT "v=spf1 a:r1.huge.attacker.example -all"`,
		// mx terms that each lead to 10 hosts of 1,800 addresses
		`fanout.example. 300 IN TXT "v=spf1 mx:m1.mxs.example mx:m2.mxs.example mx:m3.mxs.example mx:m4.mxs.example mx:m5.mxs.example mx:m6.mxs.example mx:m7.mxs.example mx:m8.mxs.example -all"`,
		// a victim's policy with a ptr term, and the client's reverse
		// zone answering it with 10 names of 1,800 + 1,100 addresses
		`victim.example. 300 IN TXT "v=spf1 ptr include:_spf.victim.example -all"`,
		`_spf.victim.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`,
	).AddAddrs("*.hosts.example.", 300, dnstest.Addrs("10.3.0.0", 1800)...).
		AddAddrs("*.rev.attacker.example.", 300, dnstest.Addrs("10.4.0.0", 1800)...).
		AddAddrs("*.rev.attacker.example.", 300, dnstest.Addrs("2001:db8:4::", 1100)...)
	rev, _ := dns.ReverseAddr("2001:db8:99::1")
	for i := range 10 {
		z.MustAddText(fmt.Sprintf("*.mxs.example. 300 IN MX 10 h%d.hosts.example.", i))
		z.MustAddText(fmt.Sprintf("%s 300 IN PTR n%d.rev.attacker.example.", rev, i))
	}
	// a TXT answer and an MX answer over 32 KiB
	for i := range 140 {
		z.MustAddText(fmt.Sprintf(`huge-txt.example. 300 IN TXT "v=spf1 -all %03d%s"`, i, strings.Repeat("x", 230)))
	}
	for i := range 2000 {
		z.MustAddText(fmt.Sprintf("huge-mx.example. 300 IN MX 10 mx%04d.huge-mx.example.", i))
	}
	return z
}

// An SPF term whose DNS answer is too large to read, and a policy whose
// answers exceed check_bytes, are the publisher's doing: permerror, with
// the reason in the result. With a larger check_bytes the same policy is
// evaluated to its end.
func TestSPFBeyondDNSBoundsIsPermError(t *testing.T) {
	c, _ := realChecker(t, boundsZone(), func(cfg *Config) {
		patient(cfg)
		cfg.SPF.Enabled = true
		cfg.DNS.CheckBytes = 512 << 10
	})
	for _, tc := range []struct{ sender, want, problem string }{
		{"a@huge-a.example", "permerror", "too large"},
		{"a@huge-txt.example", "permerror", "too large"},
		{"a@fanout.example", "permerror", "524288 bytes one check may read"},
	} {
		_, m := mail(c, session{ip: "192.0.2.1", helo: "client.example", sender: tc.sender})
		r, _ := result(m, "spf")
		if r.Value != tc.want || !strings.Contains(r.Detail, tc.problem) {
			t.Errorf("%s: spf %s (%s), want %s with %q", tc.sender, r.Value, r.Detail, tc.want, tc.problem)
		}
	}
	roomy, _ := realChecker(t, boundsZone(), func(cfg *Config) {
		patient(cfg)
		cfg.SPF.Enabled = true
		cfg.DNS.CheckBytes = 4 << 20
	})
	_, m := mail(roomy, session{ip: "192.0.2.1", helo: "client.example", sender: "a@fanout.example"})
	if r, _ := result(m, "spf"); r.Value != "fail" {
		t.Errorf("fanout.example with check_bytes = 4 MiB: spf %s (%s), want fail", r.Value, r.Detail)
	}
}

// A client's reverse zone answering a victim's ptr term with all it can
// (10 names, a full answer of addresses in each family) does not use up
// check_bytes at its least: the victim's fail stays a fail. With less
// room than that, it would have become a permerror.
func TestSPFReverseZoneCannotUseUpBudget(t *testing.T) {
	c, _ := realChecker(t, boundsZone(), func(cfg *Config) {
		patient(cfg)
		cfg.SPF.Enabled = true
		cfg.DNS.CheckBytes = 512 << 10 // the least Validate allows
	})
	s := session{ip: "2001:db8:99::1", helo: "client.example", sender: "a@victim.example"}
	_, m := mail(c, s)
	if r, _ := result(m, "spf"); r.Value != "fail" {
		t.Fatalf("spf %s (%s), want fail", r.Value, r.Detail)
	}
	c.checkBytes = 200 << 10
	_, m = mail(c, s)
	if r, _ := result(m, "spf"); r.Value != "permerror" {
		t.Errorf("with 200 KB to read: spf %s (%s); want permerror, or the test does not reach the bound", r.Value, r.Detail)
	}
}

// A sender domain whose MX answer is too large to read exists: it
// answered.
func TestDomainExistsTooLargeAnswer(t *testing.T) {
	c, _ := realChecker(t, boundsZone(), func(cfg *Config) { patient(cfg); cfg.Checks.SenderDomainExists = &DNSCheck{} })
	_, m := mail(c, session{ip: "192.0.2.1", helo: "client.example", sender: "a@huge-mx.example"})
	if r, _ := result(m, "sender_domain_exists"); r.Value != "pass" || !strings.Contains(r.Detail, "too large") {
		t.Errorf("sender_domain_exists %s (%s), want pass", r.Value, r.Detail)
	}
}
