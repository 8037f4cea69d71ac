package e2e

// Sender checks with real Postfix (and with Sendmail, in
// auth_sendmail_test.go): SPF and the client checks answered by a DNS
// server this test process runs on loopback (test/dnstest), which the
// sluice binary asks through [dns] servers. Tests pose as outside clients
// with XCLIENT, away from the default trusted 127.0.0.0/8.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/authres"

	"sluice/test/dnstest"
	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

const (
	authID = "mx.sluice.test" // sluice's authserv-id in these tests

	// Clients the tests pose as, and what DNS says of them.
	spfClient     = "198.51.100.7" // allowed by spf-pass.example, not by spf-fail.example
	listedClient  = "198.51.100.9" // listed in zen.example
	spfClient6    = "2001:db8:7::25"
	listedClient6 = "2001:db8:9::1"

	failSender = "alice@spf-fail.example"
	passSender = "bob@spf-pass.example"
)

// authDNS serves the tests' zone: two SPF policies and a blocklist.
// 127.0.0.1 (Sendmail's client) fails spf-fail.example too.
func authDNS(t *testing.T) *dnstest.Server {
	z := dnstest.NewZone().MustAddText(
		`spf-fail.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`,
		`spf-fail.example. 300 IN MX 10 mx.spf-fail.example.`,
		`spf-pass.example. 300 IN TXT "v=spf1 ip4:198.51.100.0/24 ip4:127.0.0.1 ip6:2001:db8::/32 -all"`,
		`9.100.51.198.zen.example. 300 IN A 127.0.0.2`,
		`9.100.51.198.zen.example. 300 IN TXT "listed for the test"`,
		`1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.9.0.0.0.8.b.d.0.1.0.0.2.zen.example. 300 IN A 127.0.0.4`,
		`spf-slow.example. 300 IN MX 10 mx.spf-slow.example.`,
	)
	// The SPF record of spf-slow.example never comes: a DNS timeout.
	z.Fault("spf-slow.example", dnstest.AnyType, dnstest.Timeout)
	return dnstest.Start(t, z)
}

// authConfig is a sluice config with SPF on and DNS asked of srv. top
// holds more top-level keys (mode, trusted); tables more tables, after
// [spf] (so a bare key there belongs to [spf]).
func authConfig(srv *dnstest.Server, top, spf, tables string) string {
	return fmt.Sprintf(`%s
authserv_id = %q

[log]
level = "info"

[dns]
servers = [%q]
timeout = "2s"

[spf]
enabled = true
%s
%s`, top, authID, srv.Addr(), spf, tables)
}

// startAuth starts sluice with config and a Postfix that uses it.
func startAuth(t *testing.T, config string) (*sluicetest.Sluice, *mta.Postfix) {
	t.Helper()
	sl := sluicetest.StartSluice(t, config)
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	return sl, pf
}

// sendAs sends one message from sender as client ip, with header lines
// first (before From:), and returns the transaction.
func sendAs(t *testing.T, addr, ip, sender, subject string, first ...string) mta.Transaction {
	t.Helper()
	c := session(t, addr, ip)
	defer c.Quit()
	var msg []byte
	for _, h := range first {
		msg = append(msg, h+"\r\n"...)
	}
	msg = append(msg, mta.NewMessage(sender, rcpt, subject)...)
	tr, err := c.Send(sender, []string{rcpt}, msg)
	if err != nil {
		t.Fatalf("%s: %v (%v)", subject, err, tr)
	}
	t.Logf("%s from %s as %s: %v", subject, sender, ip, tr)
	return tr
}

// bySubject finds the delivered message with subject.
func bySubject(t *testing.T, msgs []mta.Message, subject string) mta.Message {
	t.Helper()
	for _, m := range msgs {
		if m.Header.Get("Subject") == subject {
			return m
		}
	}
	t.Fatalf("no message %q in the sink (%d messages)", subject, len(msgs))
	return mta.Message{}
}

// fieldsOf returns the header fields of m in delivered order, logging them.
func fieldsOf(t *testing.T, m mta.Message) []mta.Field {
	t.Helper()
	fs, err := m.Fields()
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range fs {
		t.Logf("  %2d %s: %s", i, f.Name, f.Value)
	}
	return fs
}

// onlyMessage checks that the sink holds one message and returns its
// header fields.
func onlyMessage(t *testing.T, msgs []mta.Message) []mta.Field {
	t.Helper()
	if len(msgs) != 1 {
		t.Fatalf("delivered %d messages, want 1", len(msgs))
	}
	return fieldsOf(t, msgs[0])
}

func named(fs []mta.Field, name string) []string {
	var vs []string
	for _, f := range fs {
		if strings.EqualFold(f.Name, name) {
			vs = append(vs, f.Value)
		}
	}
	return vs
}

// ourSPF checks that fs carry exactly one Received-SPF and exactly one
// Authentication-Results with our authserv-id, both with result want for
// sender (Received-SPF quotes the address and an IPv6 address, as RFC 7208
// §9.1's grammar wants of what is not a dot-atom).
func ourSPF(t *testing.T, fs []mta.Field, want, sender, clientIP string) {
	t.Helper()
	rs := named(fs, "Received-SPF")
	if len(rs) != 1 {
		t.Fatalf("%d Received-SPF fields %q, want 1", len(rs), rs)
	}
	ipValue := clientIP
	if strings.Contains(ipValue, ":") { // not a dot-atom: quoted
		ipValue = `"` + ipValue + `"`
	}
	if !strings.HasPrefix(rs[0], want+" ") || !strings.Contains(rs[0], "client-ip="+ipValue+";") ||
		!strings.Contains(rs[0], `envelope-from="`+sender+`";`) || !strings.Contains(rs[0], "receiver="+authID+";") {
		t.Errorf("Received-SPF %q; want %s for client-ip=%s envelope-from=%s receiver=%s", rs[0], want, clientIP, sender, authID)
	}
	var ours []string
	for _, v := range named(fs, "Authentication-Results") {
		if id, _, err := authres.Parse(v); err == nil && strings.EqualFold(id, authID) {
			ours = append(ours, v)
		}
	}
	if len(ours) != 1 {
		t.Fatalf("%d Authentication-Results from %s: %q, want 1", len(ours), authID, ours)
	}
	_, results, err := authres.Parse(ours[0])
	if err != nil {
		t.Fatalf("Authentication-Results %q: %v", ours[0], err)
	}
	var spf *authres.SPFResult
	for _, r := range results {
		if r, ok := r.(*authres.SPFResult); ok {
			spf = r
		}
	}
	if spf == nil || string(spf.Value) != want || spf.From != sender {
		t.Errorf("Authentication-Results %q; want spf=%s smtp.mailfrom=%s", ours[0], want, sender)
	}
}

// wantAtTop checks that our Authentication-Results and Received-SPF are
// the first fields of the header, above the Received: of the MTA that
// took the message (RFC 8601 §5, RFC 7208 §9.1: prepended, never
// appended below the message's own fields).
func wantAtTop(t *testing.T, fs []mta.Field) {
	t.Helper()
	// smtp-sink writes a Received: of its own above what it was sent.
	if len(fs) > 0 && strings.Contains(fs[0].Value, "by smtp-sink (smtp-sink)") {
		fs = fs[1:]
	}
	if len(fs) < 3 {
		t.Fatalf("the header has %d fields", len(fs))
	}
	ours := 0
	for _, f := range fs {
		isOurs := strings.EqualFold(f.Name, "Received-SPF") ||
			strings.EqualFold(f.Name, "Authentication-Results") && strings.HasPrefix(strings.ToLower(f.Value), authID+";")
		if !isOurs {
			break
		}
		ours++
	}
	if ours != 2 {
		t.Errorf("the header starts with %d of our 2 fields (Authentication-Results, Received-SPF); want both at the top, above the MTA's Received:", ours)
	}
	if ours == 2 && (!strings.EqualFold(fs[0].Name, "Authentication-Results") || !strings.EqualFold(fs[2].Name, "Received")) {
		t.Errorf("header starts %s, %s, %s; want Authentication-Results, Received-SPF, Received", fs[0].Name, fs[1].Name, fs[2].Name)
	}
}

// refusalLine finds sluice's log line for a refusal by check.
func refusalLine(t *testing.T, sl *sluicetest.Sluice, check, clientIP string) {
	t.Helper()
	l := sl.WaitLog(10*time.Second, "refused by "+check, func(l sluicetest.LogLine) bool {
		return l.Msg() == "refused" && l.Str("rule") == check && l.Str("client_ip") == clientIP
	})
	t.Logf("sluice: %v", l)
}

// SPF fail in enforce mode ([spf] fail = "reject"): refused at MAIL FROM
// with 550 5.7.23; a sender whose domain allows the client is accepted
// from the same client, and carries spf=pass.
func TestPostfixAuthSPFFailRejected(t *testing.T) {
	testenv.Require(t)
	dns := authDNS(t)
	sl, pf := startAuth(t, authConfig(dns, "", `fail = "reject"`, ""))

	tr := sendAs(t, pf.Addr, spfClient, failSender, "spf fail")
	if stage, r := tr.Refused(); stage != "MAIL" || r.Code != 550 || !strings.HasPrefix(r.Text, "5.7.23") ||
		!strings.Contains(r.Text, spfClient) {
		t.Errorf("SPF fail: %v; want 550 5.7.23 naming %s at MAIL FROM", tr, spfClient)
	}
	refusalLine(t, sl, "spf", spfClient)

	if tr := sendAs(t, pf.Addr, spfClient, passSender, "spf pass"); !tr.Accepted() {
		t.Fatalf("SPF pass: %v; want it accepted", tr)
	}
	fs := onlyMessage(t, pf.WaitDelivered(1, time.Minute))
	ourSPF(t, fs, "pass", passSender, spfClient)
	wantAtTop(t, fs)
	if v := named(fs, "X-Sluice-Check"); len(v) != 0 {
		t.Errorf("a pass carries X-Sluice-Check %q", v)
	}
}

// The same SPF fail in tag mode, three ways: the default (every result
// only tagged: the result shows in Received-SPF and Authentication-Results
// alone), fail = "reject" with [spf] mode = "tag", and fail = "reject"
// under the global mode = "tag". In the last two the message also says
// what would have been done, in X-Sluice-Check, as a DNSBL listing does.
func TestPostfixAuthSPFFailTagged(t *testing.T) {
	testenv.Require(t)
	dns := authDNS(t)
	dnsbl := `
[[checks.dnsbl]]
zone = "zen.example"
action = "reject"
`
	for _, tc := range []struct {
		name, top, spf string
		check          string // the X-Sluice-Check wanted for SPF; "" none
	}{
		{"default", "", "", ""},
		{"spf mode tag", "", "fail = \"reject\"\nmode = \"tag\"", "spf=fail action=reject mode=tag"},
		{"global mode tag", `mode = "tag"`, `fail = "reject"`, "spf=fail action=reject mode=tag"},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			sl, pf := startAuth(t, authConfig(dns, tc.top, tc.spf, dnsbl))
			if tr := sendAs(t, pf.Addr, spfClient, failSender, "spf fail"); !tr.Accepted() {
				t.Fatalf("SPF fail in tag mode: %v; want it accepted", tr)
			}
			global := tc.top != ""
			if global {
				// Under the global tag mode the listed client gets through too.
				if tr := sendAs(t, pf.Addr, listedClient, passSender, "listed"); !tr.Accepted() {
					t.Fatalf("listed client in tag mode: %v; want it accepted", tr)
				}
			}
			msgs := pf.WaitDelivered(1, time.Minute)
			fs := fieldsOf(t, bySubject(t, msgs, "spf fail"))
			ourSPF(t, fs, "fail", failSender, spfClient)
			wantAtTop(t, fs)
			checks := named(fs, "X-Sluice-Check")
			switch {
			case tc.check == "" && len(checks) != 0:
				t.Errorf("X-Sluice-Check %q; want none (a tagged SPF result shows in Received-SPF and Authentication-Results)", checks)
			case tc.check != "" && (len(checks) != 1 || !strings.HasPrefix(checks[0], tc.check)):
				t.Errorf("X-Sluice-Check %q; want one starting %q", checks, tc.check)
			}
			if len(sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "refused" })) != 0 {
				t.Errorf("sluice logged a refusal in tag mode")
			}
			if !global {
				return
			}
			fs = fieldsOf(t, bySubject(t, msgs, "listed"))
			ourSPF(t, fs, "pass", passSender, listedClient)
			checks = named(fs, "X-Sluice-Check")
			if len(checks) != 1 || !strings.HasPrefix(checks[0], "dnsbl:zen.example=listed action=reject mode=tag") {
				t.Errorf("listed client: X-Sluice-Check %q; want dnsbl:zen.example=listed action=reject mode=tag", checks)
			}
		})
	}
}

// A client on a DNS blocklist is refused at MAIL FROM ([[checks.dnsbl]]
// action = "reject"); a client that is not listed gets through.
func TestPostfixAuthDNSBLRefused(t *testing.T) {
	testenv.Require(t)
	dns := authDNS(t)
	sl, pf := startAuth(t, authConfig(dns, "", "", `
[[checks.dnsbl]]
zone = "zen.example"
action = "reject"
`))
	tr := sendAs(t, pf.Addr, listedClient, passSender, "listed")
	if stage, r := tr.Refused(); stage != "MAIL" || r.Code/100 != 5 || !strings.Contains(r.Text, "zen.example") {
		t.Errorf("listed client: %v; want a 5xx naming zen.example at MAIL FROM", tr)
	}
	refusalLine(t, sl, "dnsbl:zen.example", listedClient)
	if got := dns.Count("9.100.51.198.zen.example.", 1); got == 0 {
		t.Errorf("sluice never asked zen.example about %s", listedClient)
	}
	if tr := sendAs(t, pf.Addr, spfClient, passSender, "not listed"); !tr.Accepted() {
		t.Fatalf("unlisted client: %v; want it accepted", tr)
	}
	fs := onlyMessage(t, pf.WaitDelivered(1, time.Minute))
	ourSPF(t, fs, "pass", passSender, spfClient)
	if v := named(fs, "X-Sluice-Check"); len(v) != 0 {
		t.Errorf("unlisted client carries X-Sluice-Check %q", v)
	}
}

// forged are the incoming Authentication-Results of the forgery tests:
// two claim to come from us (one in other letter case, folded), one comes
// from another host and must stay as it is.
var forged = []string{
	"Authentication-Results: " + authID + "; spf=pass smtp.mailfrom=ceo@spf-fail.example",
	"Authentication-Results: other.example; dkim=pass header.d=example.org",
	"Authentication-Results: MX.Sluice.TEST;\r\n\tdmarc=pass header.from=spf-fail.example",
}

// checkForgedGone checks that only our own Authentication-Results and the
// other host's are left.
func checkForgedGone(t *testing.T, fs []mta.Field) {
	t.Helper()
	var other, ours int
	for _, v := range named(fs, "Authentication-Results") {
		id, _, _ := authres.Parse(v)
		switch {
		case strings.EqualFold(id, authID):
			ours++
			if strings.Contains(v, "ceo@") || strings.Contains(v, "dmarc") {
				t.Errorf("a forged Authentication-Results reached the sink: %q", v)
			}
		case id == "other.example":
			other++
			if v != "other.example; dkim=pass header.d=example.org" {
				t.Errorf("the other host's Authentication-Results changed: %q", v)
			}
		}
	}
	if ours != 1 || other != 1 {
		t.Errorf("%d Authentication-Results from %s and %d from other.example; want 1 and 1", ours, authID, other)
	}
}

// A forged Authentication-Results with our authserv-id is removed at the
// sink, one from another authserv-id stays, and ours is at the top.
func TestPostfixAuthForgedResultsRemoved(t *testing.T) {
	testenv.Require(t)
	dns := authDNS(t)
	_, pf := startAuth(t, authConfig(dns, "", "", ""))
	if tr := sendAs(t, pf.Addr, spfClient, failSender, "forged", forged...); !tr.Accepted() {
		t.Fatalf("forged: %v; want it accepted", tr)
	}
	fs := onlyMessage(t, pf.WaitDelivered(1, time.Minute))
	checkForgedGone(t, fs)
	ourSPF(t, fs, "fail", failSender, spfClient)
	wantAtTop(t, fs)
}

// An IPv6 client through Postfix (XCLIENT ADDR=IPV6:...): SPF matches its
// ip6: mechanism, and the blocklist is asked with the nibble-reversed
// name, which lists the second client.
func TestPostfixAuthIPv6(t *testing.T) {
	testenv.Require(t)
	dns := authDNS(t)
	sl := sluicetest.StartSluice(t, authConfig(dns, "", `fail = "reject"`, `
[[checks.dnsbl]]
zone = "zen.example"
action = "reject"
`))
	// smtpd takes an IPv6 XCLIENT address only when it speaks IPv6.
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen, Main: map[string]string{"inet_protocols": "all"}})
	tr := sendAs(t, pf.Addr, "IPV6:"+listedClient6, passSender, "listed v6")
	if stage, r := tr.Refused(); stage != "MAIL" || r.Code != 550 || !strings.Contains(r.Text, "zen.example") {
		t.Errorf("listed IPv6 client: %v; want 550 naming zen.example at MAIL FROM", tr)
	}
	refusalLine(t, sl, "dnsbl:zen.example", listedClient6)
	tr = sendAs(t, pf.Addr, "IPV6:"+spfClient6, failSender, "spf fail v6")
	if stage, r := tr.Refused(); stage != "MAIL" || r.Code != 550 || !strings.Contains(r.Text, spfClient6) {
		t.Errorf("SPF fail from IPv6: %v; want 550 naming %s at MAIL FROM", tr, spfClient6)
	}
	if tr := sendAs(t, pf.Addr, "IPV6:"+spfClient6, passSender, "spf pass v6"); !tr.Accepted() {
		t.Fatalf("SPF pass from IPv6: %v; want it accepted", tr)
	}
	fs := onlyMessage(t, pf.WaitDelivered(1, time.Minute))
	ourSPF(t, fs, "pass", passSender, spfClient6)
	wantAtTop(t, fs)
}

// A DNS server that does not answer: SPF gives temperror within the
// [dns] timeout, long before Postfix's milter timeout, and temperror =
// "tempfail" answers 451 4.7.24, which the sender's MTA retries.
func TestPostfixAuthDNSTimeout(t *testing.T) {
	testenv.Require(t)
	dns := authDNS(t)
	sl, pf := startAuth(t, authConfig(dns, "", `temperror = "tempfail"`, ""))
	tr := sendAs(t, pf.Addr, spfClient, "carol@spf-slow.example", "slow")
	if stage, r := tr.Refused(); stage != "MAIL" || r.Code != 451 || !strings.HasPrefix(r.Text, "4.7.24") {
		t.Errorf("SPF temperror: %v; want 451 4.7.24 at MAIL FROM", tr)
	}
	refusalLine(t, sl, "spf", spfClient)
	if n := dns.Count("spf-slow.example.", 16); n == 0 {
		t.Errorf("sluice never asked for the TXT record of spf-slow.example")
	}
	if strings.Contains(pf.Log(), "milter") && strings.Contains(pf.Log(), "timeout") {
		t.Errorf("Postfix timed out on the milter:\n%s", pf.Log())
	}
}

// SMTP AUTH clients send from wherever their users are: SPF is skipped
// for them (skip_authenticated, the default), while the same sender from
// the same address without AUTH is refused.
func TestPostfixAuthSkipsAuthenticated(t *testing.T) {
	testenv.Require(t)
	dns := authDNS(t)
	sl := sluicetest.StartSluice(t, authConfig(dns, "trusted = []", `fail = "reject"`, ""))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen,
		SASLUsers: map[string]string{"alice@spf-fail.example": "secret"}})

	c, err := mta.Dial(pf.Addr)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Ehlo("client.example.net")
	mustOK(t, "EHLO", r, err)
	tr, err := c.Send(failSender, []string{rcpt}, mta.NewMessage(failSender, rcpt, "no auth"))
	if err != nil {
		t.Fatal(err)
	}
	if stage, r := tr.Refused(); stage != "MAIL" || r.Code != 550 {
		t.Errorf("without AUTH: %v; want 550 at MAIL FROM", tr)
	}
	c.Quit()

	c = authSession(t, pf.Addr, "alice@spf-fail.example", "secret")
	tr, err = c.Send(failSender, []string{rcpt}, mta.NewMessage(failSender, rcpt, "auth"))
	if err != nil || !tr.Accepted() {
		t.Fatalf("with AUTH: %v %v; want it accepted", tr, err)
	}
	c.Quit()
	fs := onlyMessage(t, pf.WaitDelivered(1, time.Minute))
	if v := named(fs, "Received-SPF"); len(v) != 0 {
		t.Errorf("an authenticated client's message carries Received-SPF %q", v)
	}
	if v := named(fs, "Authentication-Results"); len(v) != 0 {
		t.Errorf("an authenticated client's message carries Authentication-Results %q (nothing was checked)", v)
	}
}
