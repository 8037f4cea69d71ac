package auth

import (
	"context"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"sluice/conf"
	"sluice/policy"
	"sluice/test/dnstest"
)

// realChecker is a Checker whose DNS goes through the real resolver to a
// real server on loopback.
func realChecker(t testing.TB, z *dnstest.Zone, edit func(*Config)) (*Checker, *dnstest.Server) {
	t.Helper()
	srv := dnstest.Start(t, z)
	cfg := &Config{AuthservID: "mx.sluice.test", DNS: resolverConfig(srv.Addr(), func(c *resolverCfg) {
		c.Timeout = conf.Duration(300 * time.Millisecond)
	})}
	edit(cfg)
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	c, err := New(cfg, zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	if err != nil {
		t.Fatal(err)
	}
	return c, srv
}

// TestChecksOverDNS runs the DNS checks against a real server, with
// SERVFAIL and timeouts coming from the wire.
func TestChecksOverDNS(t *testing.T) {
	z := dnstest.NewZone().NegativeTTL(60).MustAddText(
		`1.2.0.192.in-addr.arpa. 300 IN PTR mail.good.example.`,
		`mail.good.example. 300 IN A 192.0.2.1`,
		`good.example. 300 IN MX 10 mail.good.example.`,
		`good.example. 300 IN TXT "v=spf1 a:mail.good.example -all"`,
		`2.2.0.192.zen.example. 300 IN A 127.0.0.2`,
	).Fault("3.2.0.192.in-addr.arpa", dnstest.AnyType, dnstest.ServFail).
		Fault("3.2.0.192.zen.example", dnstest.AnyType, dnstest.Timeout).
		Fault("slow.example", dnstest.AnyType, dnstest.Timeout).
		Fault("broken.example", dnstest.AnyType, dnstest.ServFail)
	c, _ := realChecker(t, z, func(c *Config) {
		c.SPF.Enabled = true
		c.Checks.ClientRDNS = &ClientRDNS{Require: "fcrdns"}
		c.Checks.DNSBL = []DNSBL{{Zone: "zen.example", DNSCheck: DNSCheck{TempError: policy.MustAction("tempfail")}}}
		c.Checks.SenderDomainExists = &DNSCheck{}
	})
	for _, tc := range []struct {
		ip, sender                string
		rdns, dnsbl, domain, spfR string
	}{
		{"192.0.2.1", "a@good.example", "pass", "pass", "pass", "pass"},
		{"192.0.2.2", "a@missing.example", "fail", "listed", "fail", "none"},
		{"192.0.2.3", "a@slow.example", "temperror", "temperror", "temperror", "temperror"},
		{"192.0.2.3", "a@broken.example", "temperror", "temperror", "temperror", "temperror"},
	} {
		_, m := mail(c, session{ip: tc.ip, helo: "h.example", sender: tc.sender})
		for check, want := range map[string]string{"client_rdns": tc.rdns, "dnsbl:zen.example": tc.dnsbl,
			"sender_domain_exists": tc.domain, "spf": tc.spfR} {
			if r, _ := result(m, check); r.Value != want {
				t.Errorf("%s %s: %s = %q (%s), want %s", tc.ip, tc.sender, check, r.Value, r.Detail, want)
			}
		}
	}
}

// TestConnectStartsClientLookups: the lookups started at Connect are the
// ones MAIL FROM needs, so by then they come from the cache.
func TestConnectStartsClientLookups(t *testing.T) {
	z := dnstest.NewZone().NegativeTTL(60).MustAddText(
		`1.2.0.192.in-addr.arpa. 300 IN PTR mail.good.example.`,
		`mail.good.example. 300 IN A 192.0.2.1`,
	)
	c, srv := realChecker(t, z, func(c *Config) {
		c.Checks.ClientRDNS = &ClientRDNS{Require: "fcrdns"}
		c.Checks.DNSBL = []DNSBL{{Zone: "zen.example"}, {Zone: "bl.example"}}
	})
	f := session{ip: "192.0.2.1", helo: "h.example", sender: "a@good.example"}.facts()
	c.Connect(context.Background(), f, nil)
	want := map[string]uint16{
		"1.2.0.192.in-addr.arpa": dns.TypePTR,
		"mail.good.example":      dns.TypeA,
		"1.2.0.192.zen.example":  dns.TypeA,
		"1.2.0.192.bl.example":   dns.TypeA,
	}
	deadline := time.Now().Add(5 * time.Second)
	for name, qt := range want {
		for srv.Count(name, qt) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("Connect did not ask about %s", name)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	before := srv.Queries()
	var m Message
	c.Mail(context.Background(), f, nil, &m)
	if r, _ := result(&m, "client_rdns"); r.Value != "pass" {
		t.Errorf("client_rdns %+v", r)
	}
	if n := srv.Queries() - before; n != 0 {
		t.Errorf("MAIL FROM sent %d more queries; the Connect lookups should have answered", n)
	}

	// trusted clients and clients without an address cost nothing
	srv.ResetCounts()
	c.Connect(context.Background(), session{ip: "192.0.2.9", trusted: true}.facts(), nil)
	c.Connect(context.Background(), &policy.Facts{}, nil)
	time.Sleep(50 * time.Millisecond)
	if srv.Queries() != 0 {
		t.Errorf("%d queries for a trusted or unknown client", srv.Queries())
	}
}
