package e2e

// The OpenSPF RFC 7208 suite through real Postfix and the sluice binary:
// each case is an SMTP session posing as the case's client (XCLIENT),
// saying its HELO and MAIL FROM, and the result is read from the
// Received-SPF and Authentication-Results of the message the sink
// received. milter/spfsuite_test.go runs the same suite against the
// milter server alone, faster; this one proves the whole path.

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"sluice/auth/spftest"
	"sluice/test/dnstest"
	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

func TestPostfixRFC7208Suite(t *testing.T) {
	testenv.Require(t)
	dns := dnstest.Start(t, nil)
	// Every result is only tagged (the default), so each case is a
	// delivered message; the rate cap is far above what the suite sends,
	// and a short timeout keeps the TIMEOUT cases quick.
	sl := sluicetest.StartSluice(t, fmt.Sprintf(`authserv_id = %q

[log]
level = "info"

[dns]
servers = [%q]
timeout = "500ms"
rate = 100000
burst = 10000

[spf]
enabled = true
`, authID, dns.Addr()))
	// smtpd takes an IPv6 XCLIENT address only when it speaks IPv6.
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen, Main: map[string]string{"inet_protocols": "all"}})

	// Cases that cannot reach a milter through Postfix: smtpd refuses the
	// address itself.
	known := map[string]string{}
	for k, v := range spftest.KnownFailures {
		known[k] = v
	}
	for _, name := range []string{"emptylabel", "toolonglabel"} {
		known[name] = "not reachable through Postfix: smtpd refuses the sender's domain (501 5.1.7 Bad sender address syntax) before any milter sees it"
	}
	delivered := 0
	outcomes := spftest.Run(t, spftest.Options{
		Path:       spftest.SuitePath(),
		Server:     dns,
		AuthservID: authID,
		Known:      known,
	}, func(t *testing.T, c spftest.Case) ([]spftest.Field, error) {
		ip, err := netip.ParseAddr(c.Host)
		if err != nil {
			return nil, fmt.Errorf("bad host %q: %w", c.Host, err)
		}
		addr := ip.String()
		if ip.Is6() {
			addr = "IPV6:" + addr
		}
		cl, err := mta.Dial(pf.Addr)
		if err != nil {
			return nil, err
		}
		defer cl.Close()
		for _, step := range []func() (mta.Reply, error){
			func() (mta.Reply, error) { return cl.XClient("ADDR=" + addr + " NAME=[UNAVAILABLE]") },
			func() (mta.Reply, error) { return cl.Ehlo(c.Helo) },
		} {
			if r, err := step(); err != nil || !r.OK() {
				return nil, fmt.Errorf("session as %s, HELO %s: %v %v", addr, c.Helo, r, err)
			}
		}
		subject := "suite " + c.Name
		tr, err := cl.Send(smtpPath(c.MailFrom), []string{rcpt}, mta.NewMessage("someone@example.com", rcpt, subject))
		if err != nil || !tr.Accepted() {
			return nil, fmt.Errorf("MAIL FROM:<%s> from %s: %v %v", c.MailFrom, addr, tr, err)
		}
		cl.Quit()
		delivered++
		msgs := pf.WaitDelivered(delivered, time.Minute)
		for _, m := range msgs {
			if m.Header.Get("Subject") != subject {
				continue
			}
			fs, err := m.Fields()
			if err != nil {
				return nil, err
			}
			var out []spftest.Field
			for _, f := range fs {
				out = append(out, spftest.Field{Name: f.Name, Value: f.Value})
			}
			return out, nil
		}
		return nil, fmt.Errorf("message %q not in the sink", subject)
	})
	summary := spftest.Summary(outcomes, known)
	t.Log("RFC 7208 suite through Postfix and sluice: " + summary)
	if os.Getenv("SPF_SUITE_SUMMARY") != "" {
		fmt.Print(summary)
	}
}

// smtpPath writes an address as an SMTP client must: a local part with a
// space is a quoted-string (RFC 5321 §4.1.2).
func smtpPath(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 || !strings.ContainsAny(addr[:i], " \"") {
		return addr
	}
	return strconv.Quote(addr[:i]) + addr[i:]
}
