package auth

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"sluice/auth/spftest"
	"sluice/conf"
	"sluice/policy"
	"sluice/test/dnstest"
)

// TestRFC7208Suite runs the OpenSPF suite through Checker.Mail and
// Checker.Headers, with the zones served by a real DNS server on loopback
// and asked through the real resolver.
func TestRFC7208Suite(t *testing.T) {
	srv := dnstest.Start(t, nil)
	cfg := &Config{
		AuthservID: "mx.sluice.test",
		DNS: resolverConfig(srv.Addr(), func(c *resolverCfg) {
			c.Timeout = conf.Duration(400 * time.Millisecond)
		}),
		SPF: SPFConfig{Enabled: true},
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	chk, err := New(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	outcomes := spftest.Run(t, spftest.Options{
		Path:       spftest.SuitePath(),
		Server:     srv,
		AuthservID: cfg.AuthservID,
	}, func(t *testing.T, c spftest.Case) ([]spftest.Field, error) {
		ip, err := netip.ParseAddr(c.Host)
		if err != nil {
			return nil, fmt.Errorf("bad host %q: %w", c.Host, err)
		}
		f := &policy.Facts{ClientIP: ip, ClientName: "unknown", Helo: c.Helo, Sender: c.MailFrom}
		var m Message
		chk.Mail(context.Background(), f, nil, &m)
		var out []spftest.Field
		for _, h := range chk.Headers(&m, nil) {
			out = append(out, spftest.Field{Name: h.Name, Value: h.Value})
		}
		return out, nil
	})
	summary := spftest.Summary(outcomes, nil)
	t.Log("RFC 7208 suite through auth.Checker: " + summary)
	if os.Getenv("SPF_SUITE_SUMMARY") != "" {
		fmt.Print(summary)
	}
}
