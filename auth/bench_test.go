package auth

import (
	"context"
	"testing"

	"sluice/test/dnstest"
)

// BenchmarkMail measures one MAIL FROM with SPF, DNSBL, client_rdns and
// the sender and HELO checks, every answer in the resolver's cache: the
// cost sluice adds per message once DNS has answered.
func BenchmarkMail(b *testing.B) {
	z := dnstest.NewZone().NegativeTTL(3600).MustAddText(
		`1.2.0.192.in-addr.arpa. 3600 IN PTR mail.example.com.`,
		`mail.example.com. 3600 IN A 192.0.2.1`,
		`example.com. 3600 IN MX 10 mail.example.com.`,
		`example.com. 3600 IN TXT "v=spf1 mx a:mail.example.com include:_spf.example.com -all"`,
		`_spf.example.com. 3600 IN TXT "v=spf1 ip4:198.51.100.0/24 -all"`,
	)
	c, srv := realChecker(b, z, func(cfg *Config) {
		cfg.SPF.Enabled = true
		cfg.Checks.ClientRDNS = &ClientRDNS{Require: "fcrdns"}
		cfg.Checks.DNSBL = []DNSBL{{Zone: "zen.example"}, {Zone: "bl.example"}}
		cfg.Checks.SenderDomainExists = &DNSCheck{}
		cfg.Checks.RequireFQDNSender = &Check{}
		cfg.Checks.RequireFQDNHelo = &Check{}
		cfg.Checks.HeloSyntax = &Check{}
	})
	f := session{ip: "192.0.2.1", helo: "mail.example.com", sender: "alice@example.com"}.facts()
	var m Message
	c.Mail(context.Background(), f, nil, &m) // fill the cache
	if got, _ := m.SPF(); got != "pass" {
		b.Fatalf("spf %s", got)
	}
	before := srv.Queries()
	b.ReportAllocs()
	for b.Loop() {
		c.Mail(context.Background(), f, nil, &m)
		_ = c.Headers(&m, nil)
	}
	if n := srv.Queries() - before; n != 0 {
		b.Fatalf("%d queries during the benchmark: the cache did not answer", n)
	}
}
