package e2e

// sluice with real Postfix: attached through
// smtpd_milters, tests posing as outside clients with XCLIENT (loopback
// may be exempt from limits by default).

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

const rcpt = "rcpt@example.org"

// senderLimit is the config of cases 1, 2 and 4: msgs-per-sender at rate
// ("10/1h"), in mode ("enforce" or "tag").
func senderLimit(mode, rate string) string {
	return fmt.Sprintf(`mode = %q

[log]
level = "info"

[[limit]]
name = "msgs-per-sender"
count = "messages"
per = "sender"
rate = %q
action = "tempfail"
`, mode, rate)
}

// session opens an SMTP session to addr posing as client ip (XCLIENT),
// and says EHLO; it fails t on any refusal.
func session(t *testing.T, addr, ip string) *mta.Client {
	t.Helper()
	c, first := trySession(t, addr, ip, "")
	if first.Code != 0 {
		t.Fatalf("session as %s: %v", ip, first)
	}
	return c
}

// trySession opens a session as ip and runs XCLIENT, EHLO and, when from
// is set, MAIL FROM. It returns the client and the first refusal (zero
// Reply when there was none); a client closed by the server on 421 is
// returned closed.
func trySession(t *testing.T, addr, ip, from string) (*mta.Client, mta.Reply) {
	t.Helper()
	c, err := mta.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	steps := []func() (mta.Reply, error){
		func() (mta.Reply, error) { return c.Greeting, nil },
		func() (mta.Reply, error) { return c.XClient("ADDR=" + ip + " NAME=[UNAVAILABLE]") },
		func() (mta.Reply, error) { return c.Ehlo("client.example.net") },
	}
	if from != "" {
		steps = append(steps, func() (mta.Reply, error) { return c.Mail(from) })
	}
	for _, step := range steps {
		r, err := step()
		if err != nil {
			t.Fatalf("session as %s: %v", ip, err)
		}
		if !r.OK() {
			return c, r
		}
	}
	return c, mta.Reply{}
}

// sendN sends n messages from sender on one connection, subjects
// "<sender> 1".."<sender> n", and returns each transaction.
func sendN(t *testing.T, c *mta.Client, sender string, n int) []mta.Transaction {
	t.Helper()
	trs := make([]mta.Transaction, n)
	for i := range n {
		subject := fmt.Sprintf("%s %d", sender, i+1)
		tr, err := c.Send(sender, []string{rcpt}, mta.NewMessage(sender, rcpt, subject))
		if err != nil {
			t.Fatalf("message %q: %v (%v)", subject, err, tr)
		}
		t.Logf("%-24s %v", subject+":", tr)
		trs[i] = tr
	}
	return trs
}

// wantTempfailAtMail checks that messages first..last (1-based) of trs
// were refused at MAIL FROM with sluice's 451 4.7.1, and the others
// accepted.
func wantTempfailAtMail(t *testing.T, trs []mta.Transaction, first, last int) {
	t.Helper()
	for i, tr := range trs {
		n := i + 1
		if n >= first && n <= last {
			stage, r := tr.Refused()
			if stage != "MAIL" || r.Code != 451 || !strings.HasPrefix(r.Text, "4.7.1") {
				t.Errorf("message %d: %v; want 451 4.7.1 at MAIL FROM", n, tr)
			}
			continue
		}
		if !tr.Accepted() {
			t.Errorf("message %d: %v; want it accepted", n, tr)
		}
	}
}

// ruleLines returns sluice's log lines about rule (one per refusal or tag).
func ruleLines(sl *sluicetest.Sluice, rule string) []sluicetest.LogLine {
	return sl.Find(func(l sluicetest.LogLine) bool { return l.Str("rule") == rule })
}

// checkRuleLines checks the refusal/tag log lines: n of them, each with
// the fields the contract names. trs are the transactions the test sent
// and over the 1-based numbers of those over the limit (refused, or
// tagged): a queue_id in a line must be that of a message over the limit
// (a tagged one), never that of a message under it.
func checkRuleLines(t *testing.T, lines []sluicetest.LogLine, n int, clientIP, sender string, needQueueID bool, trs []mta.Transaction, over [2]int) {
	t.Helper()
	under := map[string]int{}
	for i, tr := range trs {
		if id := tr.QueueID(); id != "" && (i+1 < over[0] || i+1 > over[1]) {
			under[id] = i + 1
		}
	}
	for _, l := range lines {
		t.Logf("sluice: %v", l)
	}
	if len(lines) != n {
		t.Errorf("sluice logged %d lines for the rule, want %d", len(lines), n)
	}
	for _, l := range lines {
		if got := l.Str("client_ip"); got != clientIP {
			t.Errorf("log line client_ip %q, want %q: %v", got, clientIP, l)
		}
		if got := l.Str("sender"); got != sender {
			t.Errorf("log line sender %q, want %q: %v", got, sender, l)
		}
		if !strings.Contains(l.Str("key"), sender) {
			t.Errorf("log line key %q does not name %s: %v", l.Str("key"), sender, l)
		}
		if l.Str("action") == "" {
			t.Errorf("log line has no action: %v", l)
		}
		if _, ok := l["queue_id"]; !ok || (needQueueID && l.Str("queue_id") == "") {
			t.Errorf("log line has no queue_id: %v", l)
		}
		if m, ok := under[l.Str("queue_id")]; ok {
			t.Errorf("log line names queue_id %s, which is message %d's, under the limit: %v", l.Str("queue_id"), m, l)
		}
	}
}

// checkTags checks that exactly the messages of sender numbered
// first..last carry an X-Sluice-Limit header for rule, naming the key.
func checkTags(t *testing.T, msgs []mta.Message, sender, rule string, first, last int) {
	t.Helper()
	tagged := 0
	for _, m := range mta.FromSender(msgs, sender) {
		var n int
		fmt.Sscanf(strings.TrimPrefix(m.Header.Get("Subject"), sender+" "), "%d", &n)
		vals := m.Header["X-Sluice-Limit"]
		want := n >= first && n <= last
		if !want {
			if len(vals) != 0 {
				t.Errorf("message %d carries X-Sluice-Limit %q; want none", n, vals)
			}
			continue
		}
		tagged++
		if len(vals) != 1 {
			t.Errorf("message %d carries %d X-Sluice-Limit headers %q; want 1", n, len(vals), vals)
			continue
		}
		v := vals[0]
		t.Logf("message %2d: X-Sluice-Limit: %s", n, v)
		if !strings.HasPrefix(v, rule) || !strings.Contains(v, "key=sender:"+sender) {
			t.Errorf("message %d: X-Sluice-Limit %q; want it to start with %q and name key=sender:%s", n, v, rule, sender)
		}
	}
	if tagged != last-first+1 {
		t.Errorf("%d messages of %s were to be tagged, %d found in the sink", last-first+1, sender, tagged)
	}
	if got := len(mta.WithHeader(msgs, "X-Sluice-Limit")); got != last-first+1 {
		t.Errorf("%d messages carry X-Sluice-Limit, want exactly %d", got, last-first+1)
	}
}

// A per-sender limit of 10/1h: 15 messages from one sender give 10
// delivered and 5 refused with 451 4.7.1 at MAIL FROM; a second sender
// from the same client is unaffected.
func TestPostfixSenderLimit(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, senderLimit("enforce", "10/1h"))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})

	alice, carol := "alice@example.test", "carol@example.test"
	c := session(t, pf.Addr, "192.0.2.1")
	aliceTrs := sendN(t, c, alice, 15)
	wantTempfailAtMail(t, aliceTrs, 11, 15)
	c.Quit()

	c = session(t, pf.Addr, "192.0.2.1")
	trs := sendN(t, c, carol, 3)
	wantTempfailAtMail(t, trs, 0, -1)
	c.Quit()

	msgs := pf.WaitDelivered(13, time.Minute)
	if a, c := len(mta.FromSender(msgs, alice)), len(mta.FromSender(msgs, carol)); a != 10 || c != 3 || len(msgs) != 13 {
		t.Errorf("delivered: %d from %s, %d from %s, %d in all; want 10, 3, 13", a, alice, c, carol, len(msgs))
	}
	checkRuleLines(t, ruleLines(sl, "msgs-per-sender"), 5, "192.0.2.1", alice, false, aliceTrs, [2]int{11, 15})

	// The start-up line names the listener and the version; SIGTERM
	// stops sluice cleanly.
	start := sl.WaitLog(time.Second, "the start-up line", func(l sluicetest.LogLine) bool { return l.Msg() == "listening" })
	if !strings.Contains(start.String(), `"`+sl.Listen+`"`) || start.Str("version") == "" {
		t.Errorf("start-up line %v: want the listener %s and the version", start, sl.Listen)
	}
	if code := sl.Stop(10 * time.Second); code != 0 {
		t.Errorf("sluice exited with %d on SIGTERM, want 0", code)
	}
}

// The same policy with mode = "tag": all 15 delivered, exactly
// the 5 over the limit carry X-Sluice-Limit.
func TestPostfixSenderLimitTagMode(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, senderLimit("tag", "10/1h"))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})

	alice := "alice@example.test"
	c := session(t, pf.Addr, "192.0.2.1")
	trs := sendN(t, c, alice, 15)
	wantTempfailAtMail(t, trs, 0, -1)
	c.Quit()

	msgs := pf.WaitDelivered(15, time.Minute)
	if len(msgs) != 15 {
		t.Errorf("delivered %d messages, want 15", len(msgs))
	}
	checkTags(t, msgs, alice, "msgs-per-sender", 11, 15)
	checkRuleLines(t, ruleLines(sl, "msgs-per-sender"), 5, "192.0.2.1", alice, false, trs, [2]int{11, 15})
}

// A concurrent max of 3 per client IP: the 4th simultaneous session
// from one IP gets 421 4.7.0, another IP is not affected, and after one
// session closes a new one is accepted.
func TestPostfixConcurrencyLimit(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, `mode = "enforce"

[log]
level = "info"

[[limit]]
name = "conn-per-ip"
count = "concurrent"
per = "client_ip"
max = 3
`)
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	const ip = "192.0.2.3"
	sender := "dave@example.test"

	var open []*mta.Client
	for i := 1; i <= 3; i++ {
		c, refused := trySession(t, pf.Addr, ip, sender)
		if refused.Code != 0 {
			t.Fatalf("session %d of 3 from %s: %v; want it accepted", i, ip, refused)
		}
		t.Logf("session %d from %s: accepted up to MAIL FROM", i, ip)
		open = append(open, c)
	}

	// Postfix runs the milter's connect stage again at XCLIENT, and
	// answers a 421 there with a text of its own; its log shows sluice's.
	_, refused := trySession(t, pf.Addr, ip, sender)
	t.Logf("session 4 from %s: %v", ip, refused)
	if refused.Code != 421 {
		t.Errorf("session 4 from %s: first refusal %v; want 421", ip, refused)
	}
	want := "milter-reject: XCLIENT from unknown[" + ip + "]: 421 4.7.0 "
	if err := pollFor(5*time.Second, func() bool { return strings.Contains(pf.Log(), want) }); err != nil {
		t.Errorf("Postfix's log has no %q", want)
	}
	for _, line := range strings.Split(pf.Log(), "\n") {
		if strings.Contains(line, "milter-reject") {
			t.Logf("postfix: %s", line)
		}
	}

	other, refused := trySession(t, pf.Addr, "192.0.2.4", sender)
	if refused.Code != 0 {
		t.Errorf("a session from another IP while %s is at its limit: %v; want it accepted", ip, refused)
	}
	other.Quit()

	// The slot is released when Postfix closes its milter connection,
	// which happens after the SMTP session ends: poll for it.
	open[0].Quit()
	var after mta.Reply
	err := pollFor(10*time.Second, func() bool {
		var c *mta.Client
		c, after = trySession(t, pf.Addr, ip, sender)
		if after.Code == 0 {
			open[0] = c
			return true
		}
		c.Close()
		return false
	})
	if err != nil {
		t.Errorf("after one of the 3 sessions from %s closed, a new one still gets %v", ip, after)
	} else {
		t.Logf("after one session closed, a new session from %s: accepted up to MAIL FROM", ip)
	}

	// The three open sessions still work: one delivers a message.
	if r, err := open[1].Rset(); err != nil || r.Code != 250 {
		t.Fatalf("RSET: %v %v", r, err)
	}
	tr, err := open[1].Send(sender, []string{rcpt}, mta.NewMessage(sender, rcpt, "still open"))
	if err != nil || !tr.Accepted() {
		t.Errorf("a message on one of the open sessions: %v %v", tr, err)
	}
	for _, c := range open {
		c.Quit()
	}
	lines := ruleLines(sl, "conn-per-ip")
	for _, l := range lines {
		t.Logf("sluice: %v", l)
	}
	if len(lines) == 0 {
		t.Errorf("sluice logged no line for the refused session")
	}
}

// A unix-socket listener: created with mode 0660 over a stale socket file
// left by a crash, and used by Postfix.
func TestPostfixUnixSocket(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.NewSluice(t)
	sock := filepath.Join(sl.Dir, "sluice.sock")
	sl.Listen = "unix:" + sock
	sl.Group = "postfix"
	leaveStaleSocket(t, sock)

	sl.Start(senderLimit("enforce", "2/1h"))
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o660 {
		t.Errorf("socket mode %v, want 0660", perm)
	}
	t.Logf("socket %s: %v", sock, fi.Mode())

	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	c := session(t, pf.Addr, "192.0.2.5")
	trs := sendN(t, c, "erin@example.test", 3)
	wantTempfailAtMail(t, trs, 3, 3)
	c.Quit()
	msgs := pf.WaitDelivered(2, time.Minute)
	if len(msgs) != 2 {
		t.Errorf("delivered %d messages, want 2", len(msgs))
	}
}

// leaveStaleSocket leaves a socket file at path with nobody listening, as
// a crashed daemon does.
func leaveStaleSocket(t *testing.T, path string) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket: %v", err)
	}
}

func pollFor(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}
