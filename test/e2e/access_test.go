package e2e

// Access tables through real Postfix and Sendmail: client_access (cidr:
// and regexp:) at connect, helo_access as a regexp: table, sender_access
// whose OK must not lift the client checks, a tarpit, and tables that
// fail check and a reload with their file and line. Tests pose as
// outside clients with XCLIENT (Postfix); Sendmail's client is
// 127.0.0.1, so its config empties the trusted list.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"sluice/test/dnstest"
	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// writeTable writes an access table into dir and returns its path.
func writeTable(t *testing.T, dir, name, text string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// heloSession opens a session as client ip with EHLO helo and returns the
// client, the reply to XCLIENT (Postfix's new greeting, which carries a
// refusal of the connect stage) and how long it took.
func heloSession(t *testing.T, addr, ip, helo string) (*mta.Client, mta.Reply, time.Duration) {
	t.Helper()
	c, err := mta.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	mustOK(t, "greeting", c.Greeting, nil)
	start := time.Now()
	r, err := c.XClient("ADDR=" + ip + " NAME=[UNAVAILABLE]")
	took := time.Since(start)
	if err != nil {
		t.Fatalf("XCLIENT as %s: %v", ip, err)
	}
	if r.OK() {
		if e, err := c.Ehlo(helo); err != nil || !e.OK() {
			t.Fatalf("EHLO %s as %s: %v %v", helo, ip, e, err)
		}
	}
	return c, r, took
}

// A whitelisted sender does not let a blocklisted client in: an OK in
// sender_access skips the sender checks (SPF too) and no client check,
// so a listed client with a forged MAIL FROM of a partner is refused by
// the blocklist, as Postfix refuses it; the partner's own mail from a
// clean client is accepted, without SPF.
func TestPostfixSenderWhitelistKeepsClientChecks(t *testing.T) {
	testenv.Require(t)
	dns := authDNS(t)
	senders := writeTable(t, t.TempDir(), "sender_access", "# partners\nspf-fail.example  OK\n")
	sl, pf := startAuth(t, authConfig(dns, "", `fail = "reject"`, fmt.Sprintf(`
[checks]
sender_access = %q

[[checks.dnsbl]]
zone = "zen.example"
action = "reject"
`, senders)))

	tr := sendAs(t, pf.Addr, listedClient, failSender, "forged partner")
	if stage, r := tr.Refused(); stage != "MAIL" || r.Code != 550 || !strings.Contains(r.Text, "zen.example") {
		t.Errorf("listed client, whitelisted sender: %v; want the blocklist's 550 at MAIL FROM", tr)
	}
	refusalLine(t, sl, "dnsbl:zen.example", listedClient)

	if tr := sendAs(t, pf.Addr, spfClient, failSender, "partner"); !tr.Accepted() {
		t.Fatalf("whitelisted sender from a clean client: %v; want it accepted (its SPF fail skipped)", tr)
	}
	fs := onlyMessage(t, pf.WaitDelivered(1, time.Minute))
	if v := named(fs, "Received-SPF"); len(v) != 0 {
		t.Errorf("a whitelisted sender was checked by SPF: %q", v)
	}
}

// accessTables writes the tables of the client_access tests: a cidr
// client table (REJECT, OK for a listed client, a tarpit, a tag), a
// regexp client table by host name, and a regexp HELO table.
func accessTables(t *testing.T) (clients, names, helos string) {
	dir := t.TempDir()
	clients = writeTable(t, dir, "client_access.cidr", `# Postfix's cidr: format, first match wins
198.51.100.9       OK
# a whole network of spam
203.0.113.0/24     REJECT Known spam network
192.0.2.0/24       DELAY 2s
198.51.100.0/24    TAG watched network
`)
	names = writeTable(t, dir, "client_names", "/\\.dyn\\.example$/  450 4.7.25 No dynamic hosts\n")
	helos = writeTable(t, dir, "helo_checks", "/jp-good\\.example$/  REJECT\n")
	return clients, names, helos
}

// accessConfig is authConfig with the client and HELO tables and a
// blocklist.
func accessConfig(dns *dnstest.Server, top, clients, names, helos string) string {
	return authConfig(dns, top, "", fmt.Sprintf(`
[checks]
client_access = ["cidr:%s", "regexp:%s"]
helo_access = "regexp:%s"

[[checks.dnsbl]]
zone = "zen.example"
action = "reject"
`, clients, names, helos))
}

// client_access through Postfix, answered at connect: a network in the
// table is refused with the table's text; the listed client the table
// allows gets past the blocklist; a tarpit network waits before its
// greeting; a tagged network's mail says so in X-Sluice-Check; a host
// name matches a regexp table. A regexp HELO table matches as Postfix's
// check_helo_access regexp: does.
func TestPostfixClientAccess(t *testing.T) {
	testenv.Require(t)
	dns := authDNS(t)
	clients, names, helos := accessTables(t)
	sl, pf := startAuth(t, accessConfig(dns, "", clients, names, helos))

	// Postfix answers a refusal at connect with 554 to XCLIENT, then the
	// milter's reply to every command.
	c, r, _ := heloSession(t, pf.Addr, "203.0.113.5", "client.example.net")
	t.Logf("203.0.113.5: XCLIENT: %v", r)
	if r.Code != 554 {
		t.Errorf("listed network: XCLIENT %v; want Postfix's 554", r)
	}
	mail, err := c.Mail("a@example.org")
	t.Logf("203.0.113.5: MAIL FROM: %v %v", mail, err)
	if mail.Code != 550 || !strings.Contains(mail.Text, "Client host rejected: Known spam network") {
		t.Errorf("listed network: MAIL FROM %v; want 550 with the table's text", mail)
	}
	refusalLine(t, sl, "client_access", "203.0.113.5")

	if tr := sendAs(t, pf.Addr, listedClient, passSender, "whitelisted"); !tr.Accepted() {
		t.Errorf("the listed client the table allows: %v; want it past the blocklist", tr)
	}
	if tr := sendAs(t, pf.Addr, "198.51.100.7", passSender, "watched"); !tr.Accepted() {
		t.Errorf("tagged network: %v", tr)
	}

	c, r, took := heloSession(t, pf.Addr, "192.0.2.7", "mail1.jp-good.example")
	t.Logf("192.0.2.7: XCLIENT %v after %v", r, took)
	if !r.OK() || took < 2*time.Second {
		t.Errorf("tarpit network: XCLIENT %v after %v; want a greeting after at least 2s", r, took)
	}
	mail, err = c.Mail(passSender)
	if err != nil || mail.Code != 550 || !strings.Contains(mail.Text, "<mail1.jp-good.example>: Helo command rejected") {
		t.Errorf("HELO mail1.jp-good.example: MAIL FROM %v %v; want the HELO table's 550", mail, err)
	}

	// A client's verified name, in the regexp table after the cidr one.
	c, err = mta.Dial(pf.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r, err = c.XClient("ADDR=10.9.9.9 NAME=host1.dyn.example")
	t.Logf("host1.dyn.example: XCLIENT %v %v", r, err)
	c.Ehlo("host1.dyn.example")
	mail, err = c.Mail(passSender)
	t.Logf("host1.dyn.example: MAIL FROM %v %v", mail, err)
	if mail.Code != 450 || !strings.HasPrefix(mail.Text, "4.7.25 Client host rejected: No dynamic hosts") {
		t.Errorf("dynamic host name: MAIL FROM %v; want the regexp table's 450 4.7.25", mail)
	}
	msgs := pf.WaitDelivered(2, time.Minute)
	fs := fieldsOf(t, bySubject(t, msgs, "watched"))
	if v := named(fs, "X-Sluice-Check"); len(v) != 1 || !strings.HasPrefix(v[0], "client_access=tag action=tag (198.51.100.7 matched 198.51.100.0/24 at "+clients+":6: watched network)") {
		t.Errorf("tagged network: X-Sluice-Check %q", v)
	}
	if v := named(fs, "X-Sluice-Limit"); len(v) != 0 {
		t.Errorf("tagged network: X-Sluice-Limit %q; a table's tag shows in X-Sluice-Check alone", v)
	}
	fs = fieldsOf(t, bySubject(t, msgs, "whitelisted"))
	if v := named(fs, "X-Sluice-Check"); len(v) != 0 {
		t.Errorf("whitelisted client: X-Sluice-Check %q", v)
	}
	if got := dns.Count("9.100.51.198.zen.example.", 1); got != 0 {
		t.Errorf("sluice asked the blocklist about the client the table allows (%d queries)", got)
	}
}

// The same tables through Sendmail, whose client is 127.0.0.1: the
// client table tarpits, then (after a reload that reads it again)
// refuses; a table broken on disk fails the reload with its file and
// line and the table loaded before stays in force; the HELO table
// matches by regexp.
func TestSendmailClientAccessAndReload(t *testing.T) {
	testenv.Require(t)
	dns := authDNS(t)
	clients, names, helos := accessTables(t)
	os.WriteFile(clients, []byte("127.0.0.0/8  DELAY 2s\n"), 0o644)
	sl := sluicetest.StartSluice(t, "milter_timeout = \"10s\"\nmax_delay = \"5s\"\n"+accessConfig(dns, "trusted = []", clients, names, helos))
	sm := mta.StartSendmail(t, mta.SendmailOptions{Milter: sl.Listen})

	start := time.Now()
	c, err := mta.Dial(sm.Addr)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("greeting %v after %v", c.Greeting, took)
	if !c.Greeting.OK() || took < 2*time.Second {
		t.Errorf("tarpit: greeting %v after %v; want it after at least 2s", c.Greeting, took)
	}
	r, err := c.Ehlo("mail1.jp-good.example")
	mustOK(t, "EHLO", r, err)
	tr, err := c.Send(passSender, []string{rcpt}, mta.NewMessage(passSender, rcpt, "helo"))
	if stage, r := tr.Refused(); err != nil || stage != "MAIL" || r.Code != 550 || !strings.Contains(r.Text, "Helo command rejected") {
		t.Errorf("HELO mail1.jp-good.example: %v %v; want the HELO table's 550 at MAIL FROM", tr, err)
	}
	c.Quit()

	os.WriteFile(clients, []byte("127.0.0.1  REJECT Not from here\n"), 0o644)
	sl.Signal(syscall.SIGHUP)
	waitLogCount(t, sl, "reloaded", 1, 20*time.Second)
	// Sendmail answers a refusal at connect with a 554 greeting of its
	// own and refuses every command; sluice's log says which table did.
	refused := func(what string) {
		t.Helper()
		before := len(sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "refused" && l.Str("rule") == "client_access" }))
		c, err := mta.Dial(sm.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Ehlo("client.example.net")
		r, err := c.Mail(passSender)
		t.Logf("%s: greeting %v; MAIL FROM %v %v", what, c.Greeting, r, err)
		if c.Greeting.Code != 554 || r.Code/100 != 5 {
			t.Errorf("%s: greeting %v, MAIL FROM %v; want Sendmail's 554 and a refusal", what, c.Greeting, r)
		}
		l := sl.WaitLog(10*time.Second, what+": the client table's refusal", func(l sluicetest.LogLine) bool {
			return l.Msg() == "refused" && l.Str("rule") == "client_access"
		})
		if n := len(sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "refused" && l.Str("rule") == "client_access" })); n != before+1 ||
			!strings.Contains(l.Str("detail"), "127.0.0.1 matched 127.0.0.1 at "+clients+":1") {
			t.Errorf("%s: %d refusals by client_access (had %d), last %v", what, n, before, l)
		}
	}
	refused("after the reload")

	os.WriteFile(clients, []byte("127.0.0.1  OK\n127.0.0.2  NOPE\n"), 0o644)
	sl.Signal(syscall.SIGHUP)
	fail := sl.WaitLog(20*time.Second, "the failed reload", func(l sluicetest.LogLine) bool {
		return strings.HasPrefix(l.Msg(), "reload failed")
	})
	t.Logf("sluice: %v", fail)
	if reason := fail.Str("error"); !strings.Contains(reason, clients+":2:") || !strings.Contains(reason, `unknown action "NOPE"`) {
		t.Errorf("reload failure %q; want it to name %s:2 and the bad action", reason, clients)
	}
	refused("after the failed reload")
}

// A class's tarpit as a rule (Postfix's sleep in a restriction class):
// action = "delay" with no limit delays every MAIL FROM of the class by
// at least its delay, message after message, and refuses none.
func TestPostfixClassTarpit(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, `trusted = []

[lists]
slow = ["192.0.2.0/24"]

[[limit]]
name = "slow-class"
count = "messages"
action = "delay"
delay = "2s"
match.client = ["slow"]
`)
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	c := session(t, pf.Addr, "192.0.2.7")
	for i := range 3 {
		start := time.Now()
		r, err := c.Mail("alice@example.test")
		took := time.Since(start)
		t.Logf("MAIL FROM %d: %v after %v", i+1, r, took)
		if err != nil || !r.OK() || took < 2*time.Second {
			t.Errorf("MAIL FROM %d: %v %v after %v; want it accepted after at least 2s", i+1, r, err, took)
		}
		c.Rset()
	}
	c.Quit()
	if n := len(sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "delayed" && l.Str("rule") == "slow-class" })); n != 3 {
		t.Errorf("%d delayed lines, want 3", n)
	}
}
