package e2e

// Outbound abuse control through real Postfix with SMTP AUTH (Cyrus
// sasldb): per-customer quotas from a table and at runtime, distinct
// recipient domains and client networks per SASL user, and restricted
// senders held in Postfix's hold queue until released.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// saslUsers are the accounts of the outbound tests, each with password
// "pw-" and its name.
func saslUsers(names ...string) map[string]string {
	m := map[string]string{}
	for _, n := range names {
		m[n] = "pw-" + n
	}
	return m
}

// login opens a session as ip (XCLIENT), says EHLO and logs in as user.
func login(t *testing.T, addr, ip, user string) *mta.Client {
	t.Helper()
	c, err := mta.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r, err := c.XClient("ADDR=" + ip + " NAME=[UNAVAILABLE]")
	mustOK(t, "XCLIENT", r, err)
	r, err = c.Ehlo("client.example.net")
	mustOK(t, "EHLO", r, err)
	if r, err = c.AuthPlain(user, "pw-"+user); err != nil || r.Code != 235 {
		t.Fatalf("AUTH as %s: %v %v", user, r, err)
	}
	return c
}

// sendTo sends one message of user to rcpts and returns its RCPT codes
// ("250 250 451") and the transaction.
func sendTo(t *testing.T, c *mta.Client, user string, rcpts []string) (string, mta.Transaction) {
	t.Helper()
	tr, err := c.Send(user, rcpts, mta.NewMessage(user, rcpts[0], "from "+user))
	if err != nil {
		t.Fatalf("%s: %v (%v)", user, err, tr)
	}
	t.Logf("%s: %v", user, tr)
	return rcptCodes(tr), tr
}

// cliOn runs `sluice counters ARGS -socket sock` and checks its exit code.
func cliOn(t *testing.T, sock string, want int, args ...string) string {
	t.Helper()
	r := sluicetest.RunSluice(t, append(append([]string{"counters"}, args...), "-socket", sock)...)
	t.Logf("$ sluice counters %s  (exit %d)\n%s%s", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	if r.Code != want {
		t.Fatalf("sluice counters %s: exit %d, want %d\n%s%s", strings.Join(args, " "), r.Code, want, r.Stdout, r.Stderr)
	}
	return r.Stdout + r.Stderr
}

// heldIDs lists the queue ids in Postfix's hold queue, sorted.
func heldIDs(pf *mta.Postfix) []string {
	var ids []string
	for _, e := range pf.Queue() {
		if e.QueueName == "hold" {
			ids = append(ids, e.QueueID)
		}
	}
	slices.Sort(ids)
	return ids
}

func codes(s ...string) string { return strings.Join(s, " ") }

func repeat(code string, n int) string {
	return strings.TrimSpace(strings.Repeat(code+" ", n))
}

// Quotas per customer: the rule's 2/1h, bob's table line 5/1h, carol
// unlimited, the 3/1h of every account at partner.test (a domain line);
// a reload that raises bob to 7/1h applies at once to the share of the
// hour he used; a table with a bad line fails check and a reload, with
// its file and line, and the table in force stays; a runtime limit for
// dave applies at once and goes with unlimit.
func TestOutboundQuotasPostfix(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.NewSluice(t)
	sock := filepath.Join(sl.Dir, "admin.sock")
	table := filepath.Join(sl.Dir, "quotas")
	writeQuotas := func(bob string, extra ...string) {
		t.Helper()
		text := "# per-customer quotas\nsasl_user:bob@example.test " + bob + "\nsasl_user:carol@example.test unlimited\n\nsasl_user:@partner.test 3/1h\n" + strings.Join(extra, "\n") + "\n"
		if err := os.WriteFile(table, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeQuotas("5/1h")
	config := limitsConfig(fmt.Sprintf(`[[limit]]
name = "rcpts"
count = "recipients"
per = "sasl_user"
rate = "2/1h"
overrides = "file:%s"

[admin]
socket = %q
`, table, sock))
	sl.Start(config)
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen,
		SASLUsers: saslUsers("alice@example.test", "bob@example.test", "carol@example.test", "dave@example.test", "erin@partner.test")})
	send := func(user string, n int, want string) {
		t.Helper()
		c := login(t, pf.Addr, "192.0.2.50", user)
		if got, _ := sendTo(t, c, user, rcpts(n, "example.org")); got != want {
			t.Errorf("%s, %d recipients: %s, want %s", user, n, got, want)
		}
		c.Quit()
	}
	send("alice@example.test", 3, codes("250 250", "451"))
	send("carol@example.test", 9, repeat("250", 9))
	send("erin@partner.test", 4, codes("250 250 250", "451"))
	send("bob@example.test", 2, "250 250")

	// sluice explain says where bob's limit comes from.
	r := sluicetest.RunSluice(t, "explain", "-config", sl.Config, "-no-dns", "-client", "192.0.2.50", "-auth", "bob@example.test",
		"-sender", "bob@example.test", "-rcpt", "x@example.org", "-n", "3")
	if r.Code != 0 || !strings.Contains(r.Stdout, "recipients 5/1h") || !strings.Contains(r.Stdout, "the key's own limit: table "+table+":2") {
		t.Errorf("explain for bob:\n%s%s", r.Stdout, r.Stderr)
	}

	// A reload raises bob to 7/1h: he used 2/5 of the hour, 2.8 of 7, so
	// 4 more pass (not 3 as at 5/1h, not 7 as from nothing).
	writeQuotas("7/1h")
	sl.Signal(syscall.SIGHUP)
	sl.WaitLog(10*time.Second, "reloaded", func(l sluicetest.LogLine) bool { return l.Msg() == "reloaded" })
	send("bob@example.test", 5, codes("250 250 250 250", "451"))

	// A bad line: check and the reload fail with the file and line, and
	// the table in force stays.
	writeQuotas("7/1h", "sasl_user:zed@example.test 5/fortnight")
	chk := sluicetest.RunSluice(t, "check", "-config", sl.Config)
	if chk.Code != 1 || !strings.Contains(chk.Stderr, table+":6: sasl_user:zed@example.test: rate") {
		t.Errorf("check of a bad table: exit %d\n%s%s", chk.Code, chk.Stdout, chk.Stderr)
	}
	sl.Signal(syscall.SIGHUP)
	l := sl.WaitLog(10*time.Second, "reload failed", func(l sluicetest.LogLine) bool { return l.Msg() == "reload failed; the running config stays in force" })
	if !strings.Contains(l.Str("error"), table+":6:") {
		t.Errorf("reload failure names no file and line: %v", l)
	}
	out := cliOn(t, sock, 0, "show", "sasl_user:bob@example.test")
	if !strings.Contains(out, "7/1h") || !strings.Contains(out, "table "+table+":2") {
		t.Errorf("show bob after the failed reload: want his 7/1h from the table in force\n%s", out)
	}
	writeQuotas("7/1h") // the file as in force again, for explain below

	// A runtime limit for dave applies at once; unlimit takes it away.
	out = cliOn(t, sock, 0, "limit", "rcpts", "sasl_user:dave@example.test", "1/1h", "-for", "2h")
	if !strings.Contains(out, "limited to 1/1h until") {
		t.Errorf("limit: %s", out)
	}
	send("dave@example.test", 2, codes("250", "451"))
	r = sluicetest.RunSluice(t, "explain", "-config", sl.Config, "-no-dns", "-client", "192.0.2.50", "-auth", "dave@example.test",
		"-sender", "dave@example.test", "-rcpt", "x@example.org", "-n", "3", "-admin", sock)
	if r.Code != 0 || !strings.Contains(r.Stdout, "recipients 1/1h") || !strings.Contains(r.Stdout, "the key's own limit: runtime, set by") {
		t.Errorf("explain -admin for dave:\n%s%s", r.Stdout, r.Stderr)
	}
	out = cliOn(t, sock, 0, "limits")
	if !strings.Contains(out, "sasl_user:dave@example.test") || !strings.Contains(out, "1/1h") || !strings.Contains(out, "rule rcpts: table "+table+", 3 entries") {
		t.Errorf("limits: %s", out)
	}
	cliOn(t, sock, 0, "unlimit", "rcpts", "sasl_user:dave@example.test")
	if out := cliOn(t, sock, 0, "limits"); strings.Contains(out, "dave") {
		t.Errorf("dave's limit listed after unlimit:\n%s", out)
	}
	cliOn(t, sock, 1, "limit", "rcpts", "sender:x@example.test", "1/1h")
	pf.WaitDelivered(6, time.Minute)
	if n := len(sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "runtime limit set by admin" })); n != 1 {
		t.Errorf("%d audit lines for the runtime limit, want 1", n)
	}
}

// Distinct recipient domains: alice may send to 20 different domains an
// hour; the 21st to 30th are refused, while repeats to a domain she sent
// to before still pass.
func TestOutboundDistinctDomainsPostfix(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, limitsConfig(`[[limit]]
name = "domains"
count = "distinct"
of = "rcpt_domain"
per = "sasl_user"
rate = "20/1h"
`))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen, SASLUsers: saslUsers("alice@example.test", "bob@example.test")})
	c := login(t, pf.Addr, "192.0.2.60", "alice@example.test")
	var got []string
	for m := range 3 { // 3 messages of 10 new domains each, then repeats
		var to []string
		for i := range 10 {
			to = append(to, fmt.Sprintf("u%d@d%02d.example", i, m*10+i))
		}
		codes, _ := sendTo(t, c, "alice@example.test", to)
		got = append(got, codes)
	}
	again, _ := sendTo(t, c, "alice@example.test", []string{"x@d03.example", "y@D17.Example", "z@d29.example"})
	c.Quit()
	want := []string{repeat("250", 10), repeat("250", 10), repeat("451", 10)}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("alice's 30 domains:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if again != "250 250 451" {
		t.Errorf("repeats to d03 and d17, then d29 again: %s, want 250 250 451 (a repeat is not counted again)", again)
	}
	b := login(t, pf.Addr, "192.0.2.60", "bob@example.test")
	if codes, _ := sendTo(t, b, "bob@example.test", []string{"a@d25.example"}); codes != "250" {
		t.Errorf("bob, another account: %s", codes)
	}
	b.Quit()
	lines := ruleLines(sl, "domains")
	if len(lines) != 11 || lines[0].Str("detail") != "distinct=21" || lines[0].Str("key") != "sasl_user:alice@example.test" {
		t.Errorf("%d log lines, first %v; want 11 refusals, the first at distinct=21", len(lines), lines)
	}
	pf.WaitDelivered(4, time.Minute)
}

// Distinct client networks: alice logs in from a fourth /24 within the
// day and is restricted; her next message, even from her first network,
// is held.
func TestOutboundDistinctNetworksPostfix(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, limitsConfig(`[[limit]]
name = "nets"
count = "distinct"
of = "client_net"
per = "sasl_user"
rate = "3/1d"
restrict_for = "24h"
`))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen, SASLUsers: saslUsers("alice@example.test")})
	var got []string
	for _, ip := range []string{"192.0.2.10", "192.0.2.99", "198.51.100.10", "203.0.113.10", "10.20.30.40", "192.0.2.10"} {
		c := login(t, pf.Addr, ip, "alice@example.test")
		_, tr := sendTo(t, c, "alice@example.test", []string{"friend@example.org"})
		got = append(got, fmt.Sprint(tr.Mail.Code))
		c.Quit()
	}
	if want := "250 250 250 250 451 250"; strings.Join(got, " ") != want {
		t.Errorf("MAIL replies from 192.0.2.10, .99, 198.51.100.10, 203.0.113.10, 10.20.30.40, 192.0.2.10: %s, want %s", strings.Join(got, " "), want)
	}
	if l := sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "restricted" && l.Str("rule") == "nets" }); len(l) != 1 {
		t.Errorf("want one 'restricted' line: %v", l)
	}
	pf.WaitDelivered(4, time.Minute)
	if held := heldIDs(pf); len(held) != 1 {
		t.Errorf("hold queue %v, want 1 message (the one after the restriction)", held)
	}
}

// A restricted sender: alice's crossing restricts her until midnight; her
// next messages are held in Postfix's hold queue though the window has
// room again, and stay so across a restart (the snapshot); release lists
// the queue ids held, postsuper -H lets them go, and her next message is
// delivered.
func TestOutboundRestrictPostfix(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.NewSluice(t)
	sock := filepath.Join(sl.Dir, "admin.sock")
	config := limitsConfig(fmt.Sprintf(`[[limit]]
name = "rcpts"
count = "recipients"
per = "sasl_user"
rate = "3/10s"
restrict_for = "today"

[store]
snapshot = %q

[admin]
socket = %q
`, filepath.Join(sl.Dir, "counters.snap"), sock))
	sl.Start(config)
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen, SASLUsers: saslUsers("alice@example.test", "bob@example.test")})
	c := login(t, pf.Addr, "192.0.2.70", "alice@example.test")
	if got, _ := sendTo(t, c, "alice@example.test", rcpts(4, "example.org")); got != "250 250 250 451" {
		t.Fatalf("alice's crossing: %s", got)
	}
	time.Sleep(11 * time.Second) // the 10s window has room again
	var held []string
	_, tr := sendTo(t, c, "alice@example.test", []string{"later@example.org"})
	if !tr.Accepted() {
		t.Fatalf("a held message is accepted: %v", tr)
	}
	held = append(held, tr.QueueID())
	c.Quit()
	out := cliOn(t, sock, 0, "restricted")
	if !strings.Contains(out, "rcpts") || !strings.Contains(out, "sasl_user:alice@example.test") || !strings.Contains(out, "4 (limit 3/10s)") {
		t.Errorf("restricted does not list alice with the count that crossed:\n%s", out)
	}

	// A restart keeps the restriction (memory snapshot).
	if code := sl.Stop(15 * time.Second); code != 0 {
		t.Fatalf("sluice exit %d", code)
	}
	sl.Start(config)
	c = login(t, pf.Addr, "192.0.2.71", "alice@example.test")
	_, tr = sendTo(t, c, "alice@example.test", []string{"after-restart@example.org"})
	held = append(held, tr.QueueID())
	c.Quit()
	b := login(t, pf.Addr, "192.0.2.72", "bob@example.test")
	sendTo(t, b, "bob@example.test", []string{"bob@example.org"})
	b.Quit()
	pf.WaitDelivered(2, time.Minute) // alice's first (3 recipients) and bob's
	inHold := heldIDs(pf)
	if sorted := slices.Sorted(slices.Values(held)); !slices.Equal(inHold, sorted) {
		t.Fatalf("hold queue %v, want alice's two messages %v", inHold, held)
	}

	out = cliOn(t, sock, 0, "release", "sasl_user:alice@example.test")
	for _, id := range held {
		if !strings.Contains(out, id) {
			t.Errorf("release does not name held message %s:\n%s", id, out)
		}
	}
	// The command as printed: one -H per queue id.
	i := strings.Index(out, "postsuper -H ")
	j := strings.Index(out, "(Postfix)")
	if i < 0 || j < i {
		t.Fatalf("release does not print the postsuper command:\n%s", out)
	}
	args := strings.Fields(out[i+len("postsuper ") : j])
	if len(args) != 2*len(held) {
		t.Errorf("postsuper arguments %q for %d held messages", args, len(held))
	}
	pf.Postsuper(args...)
	pf.Flush()
	c = login(t, pf.Addr, "192.0.2.70", "alice@example.test")
	if got, tr := sendTo(t, c, "alice@example.test", []string{"released@example.org"}); got != "250" || !tr.Accepted() {
		t.Errorf("alice after release: %s %v", got, tr)
	}
	c.Quit()
	msgs := pf.WaitDelivered(5, time.Minute)
	if ids := heldIDs(pf); len(ids) > 0 {
		t.Errorf("still held after release: %v", ids)
	}
	if n := len(mta.FromSender(msgs, "alice@example.test")); n != 4 {
		t.Errorf("%d of alice's messages delivered, want 4", n)
	}
	if out := cliOn(t, sock, 0, "restricted"); !strings.Contains(out, "released; grace until") {
		t.Errorf("after release, restricted shows no grace:\n%s", out)
	}
}
