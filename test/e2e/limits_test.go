package e2e

// Counting with real Postfix: recipients per SASL user (SMTP AUTH
// against a sasldb), bytes per sender, max_rcpt_per_message, and counters
// that survive a restart through the snapshot file. The configs set
// trusted = [] because these clients connect from loopback, which is
// trusted by default.

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// authSession opens an SMTP session to addr, says EHLO and logs in with
// AUTH PLAIN; it fails t on any refusal.
func authSession(t *testing.T, addr, user, pass string) *mta.Client {
	t.Helper()
	c, err := mta.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r, err := c.Ehlo("client.example.net")
	mustOK(t, "EHLO", r, err)
	r, err = c.AuthPlain(user, pass)
	if err != nil || r.Code != 235 {
		t.Fatalf("AUTH as %s: %v %v", user, r, err)
	}
	return c
}

// rcptCodes is the RCPT replies of a transaction, as "250 250 451".
func rcptCodes(tr mta.Transaction) string {
	var codes []string
	for _, r := range tr.Rcpt {
		codes = append(codes, strconv.Itoa(r.Code))
	}
	return strings.Join(codes, " ")
}

func rcpts(n int, domain string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("rcpt%d@%s", i+1, domain)
	}
	return out
}

// delivered counts, per envelope sender, the recipients the sink got.
func delivered(msgs []mta.Message) map[string]int {
	n := map[string]int{}
	for _, m := range msgs {
		n[strings.ToLower(m.From())] += len(m.Envelope["X-Rcpt-Args"])
	}
	return n
}

// A recipients per sasl_user rule: 5 recipients an hour for each SMTP AUTH
// login. The 6th recipient of alice is refused at RCPT; bob, who logs in
// from the same address, and mail sent without AUTH are not touched.
func TestLimitsRecipientsPerSASLUser(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, limitsConfig(`[[limit]]
name = "rcpts-per-user"
count = "recipients"
per = "sasl_user"
rate = "5/1h"
`))
	users := map[string]string{"alice@example.test": "alice-secret", "bob@example.test": "bob-secret"}
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen, SASLUsers: users})

	alice := authSession(t, pf.Addr, "alice@example.test", "alice-secret")
	var got []string
	for i, n := range []int{3, 3, 1} {
		from := "alice@example.test"
		tr, err := alice.Send(from, rcpts(n, "example.org"), mta.NewMessage(from, "rcpt1@example.org", fmt.Sprintf("alice %d", i+1)))
		if err != nil {
			t.Fatalf("alice's message %d: %v", i+1, err)
		}
		t.Logf("alice %d: %v", i+1, tr)
		got = append(got, rcptCodes(tr))
	}
	alice.Quit()
	if want := []string{"250 250 250", "250 250 451", "451"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("alice's RCPT replies %q, want %q (5 recipients, then 451)", got, want)
	}

	bob := authSession(t, pf.Addr, "bob@example.test", "bob-secret")
	tr, err := bob.Send("bob@example.test", rcpts(5, "example.org"), mta.NewMessage("bob@example.test", "rcpt1@example.org", "bob"))
	if err != nil || !tr.Accepted() || rcptCodes(tr) != "250 250 250 250 250" {
		t.Errorf("bob (another login, same client): %v %v; want 5 recipients accepted", tr, err)
	}
	bob.Quit()

	anon := session(t, pf.Addr, "192.0.2.31")
	tr, err = anon.Send("carol@example.test", rcpts(8, "example.org"), mta.NewMessage("carol@example.test", "rcpt1@example.org", "no auth"))
	if err != nil || !tr.Accepted() || strings.Count(rcptCodes(tr), "250") != 8 {
		t.Errorf("without AUTH: %v %v; want all 8 recipients accepted (no sasl_user, no count)", tr, err)
	}
	anon.Quit()

	msgs := pf.WaitDelivered(4, time.Minute)
	n := delivered(msgs)
	if n["alice@example.test"] != 5 || n["bob@example.test"] != 5 || n["carol@example.test"] != 8 {
		t.Errorf("recipients delivered %v; want alice 5, bob 5, carol 8", n)
	}
	lines := ruleLines(sl, "rcpts-per-user")
	for _, l := range lines {
		t.Logf("sluice: %v", l)
	}
	if len(lines) != 2 {
		t.Errorf("%d log lines for the rule, want 2 (two refused recipients)", len(lines))
	}
	for _, l := range lines {
		if l.Str("key") != "sasl_user:alice@example.test" || l.Str("stage") != "rcpt" || l.Msg() != "refused" {
			t.Errorf("log line %v; want a refusal at rcpt for key sasl_user:alice@example.test", l)
		}
	}
}

// postfixSize returns the size= Postfix's qmgr logged for the message
// queued as id, or -1.
func postfixSize(log, id string) int {
	m := regexp.MustCompile(`qmgr\[\d+\]: ` + regexp.QuoteMeta(id) + `: from=<[^>]*>, size=(\d+),`).FindStringSubmatch(log)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// queueID is the id in a "250 2.0.0 Ok: queued as ID" reply.
func queueID(r mta.Reply) string {
	_, id, _ := strings.Cut(r.Text, "queued as ")
	return strings.TrimSpace(id)
}

// bodyOf is a message body of about n bytes in 78-byte lines.
func bodyOf(n int) string {
	line := strings.Repeat("0123456789", 7) + "abcdef\r\n"
	return strings.Repeat(line, n/len(line))
}

// bytesConfig is a bytes per sender rule at 30 KB a day.
var bytesConfig = limitsConfig(`[[limit]]
name = "bytes-per-sender"
count = "bytes"
per = "sender"
rate = "30KB/1d"
`)

// bytesCase runs the bytes per sender case on an open session c and
// checks it; wait waits until the MTA has delivered n messages. A message
// counts as the client sent it, header and body: two 12 KB messages pass;
// a third whose body alone would still fit but whose header does not is
// refused after DATA; a small one after it still fits (the refused one did
// not count); another sender is not touched. It returns the transactions
// by subject.
func bytesCase(t *testing.T, sl *sluicetest.Sluice, c *mta.Client, wait func(n int) []mta.Message) map[string]mta.Transaction {
	t.Helper()
	const alice, dave = "alice@example.test", "dave@example.test"
	sent := map[string]int{} // bytes of each message as the client sent it
	trs := map[string]mta.Transaction{}
	send := func(from, subject string, body string, extra ...string) {
		t.Helper()
		msg := append(mta.NewMessage(from, rcpt, subject, extra...), body...)
		tr, err := c.Send(from, []string{rcpt}, msg)
		if err != nil {
			t.Fatalf("%s: %v", subject, err)
		}
		t.Logf("%-4s %6d bytes as sent: %v", subject, len(msg), tr)
		sent[subject], trs[subject] = len(msg), tr
	}
	// A header field of about 3 KB, in folded lines.
	padding := "X-Padding: " + strings.TrimSuffix(strings.Repeat(strings.Repeat("p", 70)+"\r\n\t", 43), "\r\n\t")
	send(alice, "a1", bodyOf(12000))
	send(alice, "a2", bodyOf(12000))
	send(alice, "a3", bodyOf(4000), padding)
	send(alice, "a4", bodyOf(1000))
	send(dave, "d1", bodyOf(12000))
	c.Quit()

	for _, name := range []string{"a1", "a2", "a4", "d1"} {
		if !trs[name].Accepted() {
			t.Errorf("%s: %v; want it accepted", name, trs[name])
		}
	}
	if stage, r := trs["a3"].Refused(); stage != "DATA" || r.Code != 451 || !strings.HasPrefix(r.Text, "4.7.1") {
		t.Errorf("a3: %v; want 451 4.7.1 after DATA (its header pushes alice past 30 KB)", trs["a3"])
	}
	msgs := wait(4)
	if n := len(mta.FromSender(msgs, alice)); n != 3 {
		t.Errorf("%d messages of alice delivered, want 3", n)
	}

	// The refusal names what was counted: the whole of a1, a2 and a3 as
	// the client sent them (a3's body alone, about 4 KB, would have
	// fitted). The MTA's own size of a message adds the Received header
	// it prepends, which milters do not see.
	lines := ruleLines(sl, "bytes-per-sender")
	for _, l := range lines {
		t.Logf("sluice: %v", l)
	}
	if len(lines) != 1 {
		t.Fatalf("%d log lines for the rule, want 1", len(lines))
	}
	l := lines[0]
	if l.Str("key") != "sender:"+alice || l.Str("stage") != "data" {
		t.Errorf("log line %v; want key sender:%s at stage data", l, alice)
	}
	// The window held a1 and a2, and a3 would have made it more than it
	// takes: count=HELD+SIZE.
	var held, size int
	fmt.Sscanf(l.Str("detail"), "count=%d+%d", &held, &size)
	count := held + size
	want := sent["a1"] + sent["a2"] + sent["a3"]
	t.Logf("sent a1 %d, a2 %d, a3 %d bytes; sluice counted %d", sent["a1"], sent["a2"], sent["a3"], count)
	// A 30 KB/1d bucket drains a third of a byte a second.
	if count > want || count < want-10 {
		t.Errorf("sluice counted %d bytes, want %d (a1+a2+a3 as sent) less a few drained", count, want)
	}
	return trs
}

func TestLimitsBytesPerSender(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, bytesConfig)
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	c := session(t, pf.Addr, "192.0.2.32")
	trs := bytesCase(t, sl, c, func(n int) []mta.Message { return pf.WaitDelivered(n, time.Minute) })
	log := pf.Log()
	t.Logf("Postfix's sizes of a1 and a2 (with its Received header): %d, %d",
		postfixSize(log, queueID(trs["a1"].Data)), postfixSize(log, queueID(trs["a2"].Data)))
}

// max_rcpt_per_message = 3: the 4th and 5th recipients of one message get
// Postfix's own 452 4.5.3; the message goes to the first three; the next
// message may have three again.
func TestLimitsMaxRcptPerMessage(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, limitsConfig(`[[limit]]
name = "rcpt-cap"
max_rcpt_per_message = 3
`))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	c := session(t, pf.Addr, "192.0.2.33")
	const from = "erin@example.test"
	tr, err := c.Send(from, rcpts(5, "example.org"), mta.NewMessage(from, "rcpt1@example.org", "five"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("five recipients: %v", tr)
	if rcptCodes(tr) != "250 250 250 452 452" || !tr.Accepted() {
		t.Errorf("RCPT replies %q, DATA %v; want 250 250 250 452 452 and the message accepted", rcptCodes(tr), tr.Data)
	}
	for _, r := range tr.Rcpt[3:] {
		if !strings.HasPrefix(r.Text, "4.5.3 Too many recipients") {
			t.Errorf("refusal %v; want 452 4.5.3 Too many recipients", r)
		}
	}
	tr, err = c.Send(from, rcpts(3, "example.net"), mta.NewMessage(from, "rcpt1@example.net", "three"))
	if err != nil || !tr.Accepted() || rcptCodes(tr) != "250 250 250" {
		t.Errorf("the next message with 3 recipients: %v %v", tr, err)
	}
	c.Quit()
	msgs := pf.WaitDelivered(2, time.Minute)
	if n := delivered(msgs)[from]; n != 6 {
		t.Errorf("%d recipients delivered, want 6 (3 and 3)", n)
	}
	if lines := ruleLines(sl, "rcpt-cap"); len(lines) != 2 {
		t.Errorf("%d log lines for the cap, want 2: %v", len(lines), lines)
	}
}

// restartConfig is msgs-per-sender at 10/1h with the counters kept in
// snap (none when snap is ""), written every interval.
func restartConfig(snap, interval string) string {
	store := ""
	if snap != "" {
		store = fmt.Sprintf("[store]\nsnapshot = %q\nsnapshot_interval = %q\n\n", snap, interval)
	}
	return limitsConfig(store + `[[limit]]
name = "msgs-per-sender"
count = "messages"
per = "sender"
rate = "10/1h"
`)
}

// limitsConfig is a config in enforce mode with info logs and no trusted
// networks (the test clients connect from loopback), then rest.
func limitsConfig(rest string) string {
	return `mode = "enforce"
trusted = []

[log]
level = "info"

` + rest
}

// The restart case: 10 messages at 10/1h, sluice restarted, the 11th is
// refused — the counters came back from the snapshot. Without a snapshot
// the 11th goes through, which shows what the file is for; after a crash
// the last periodic snapshot is what comes back.
func TestLimitsRestartKeepsCounters(t *testing.T) {
	testenv.Require(t)
	for _, tc := range []struct {
		name     string
		snapshot bool
		interval string
		crash    bool
		want11   bool // the 11th message is refused
	}{
		{"sigterm", true, "1h", false, true},
		{"no-snapshot", false, "", false, false},
		{"sigkill-after-periodic-snapshot", true, "1s", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sl := sluicetest.NewSluice(t)
			snap := ""
			if tc.snapshot {
				snap = filepath.Join(sl.Dir, "counters.snap")
			}
			config := restartConfig(snap, tc.interval)
			sl.Start(config)
			pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
			const frank, grace = "frank@example.test", "grace@example.test"

			c := session(t, pf.Addr, "192.0.2.34")
			trs := sendN(t, c, frank, 10)
			wantTempfailAtMail(t, trs, 0, -1)
			sendN(t, c, grace, 1)
			c.Quit()
			tenth := time.Now()

			if tc.crash {
				// Wait for a snapshot written after the 10th message.
				if err := pollFor(10*time.Second, func() bool {
					fi, err := os.Stat(snap)
					return err == nil && fi.ModTime().After(tenth)
				}); err != nil {
					t.Fatalf("no snapshot written after the 10th message: %v", err)
				}
				sl.Kill()
			} else if code := sl.Stop(10 * time.Second); code != 0 {
				t.Fatalf("sluice exited with %d after SIGTERM", code)
			}
			if tc.snapshot {
				fi, err := os.Stat(snap)
				if err != nil {
					t.Fatalf("snapshot: %v", err)
				}
				t.Logf("snapshot %s: %d bytes, written %v after the 10th message", snap, fi.Size(), fi.ModTime().Sub(tenth).Round(time.Millisecond))
			}

			sl.Start(config)
			c = session(t, pf.Addr, "192.0.2.34")
			after := sendN(t, c, frank, 1)
			other := sendN(t, c, grace, 1)
			c.Quit()
			stage, r := after[0].Refused()
			refused := stage == "MAIL" && r.Code == 451 && strings.HasPrefix(r.Text, "4.7.1")
			if refused != tc.want11 {
				t.Errorf("the 11th message after the restart: %v; want refused %v", after[0], tc.want11)
			}
			if !other[0].Accepted() {
				t.Errorf("another sender after the restart: %v; want it accepted", other[0])
			}
			if tc.snapshot {
				loaded := sl.Find(func(l sluicetest.LogLine) bool { return strings.Contains(strings.ToLower(l.Msg()), "snapshot") })
				for _, l := range loaded {
					t.Logf("sluice: %v", l)
				}
			}
		})
	}
}

// An IPv6 client is counted by its /64 (the default ipv6_prefix): four
// addresses of one /64 share messages per client_ip at 3/1h, so the 4th
// is refused; an address of the next /64 is not. Postfix takes the IPv6
// clients from XCLIENT.
func TestLimitsIPv6Prefix(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, limitsConfig(`[[limit]]
name = "msgs-per-ip"
count = "messages"
per = "client_ip"
rate = "3/1h"
`))
	// XCLIENT takes an IPv6 ADDR only when Postfix speaks IPv6.
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen, Main: map[string]string{"inet_protocols": "all"}})
	const from = "henry@example.test"
	for i, tc := range []struct {
		ip      string
		refused bool
	}{
		{"2001:db8:1:1::1", false},
		{"2001:db8:1:1::2", false},
		{"2001:db8:1:1:ffff:ffff:ffff:fffe", false},
		{"2001:db8:1:1:1234::9", true},
		{"2001:db8:1:2::1", false},
	} {
		c, r := trySession(t, pf.Addr, "IPV6:"+tc.ip, from)
		if c != nil {
			c.Quit()
		}
		t.Logf("session %d from %s: first refusal %v", i+1, tc.ip, r)
		if refused := r.Code == 451 && strings.HasPrefix(r.Text, "4.7.1"); refused != tc.refused || r.Code != 0 && !refused {
			t.Errorf("MAIL FROM from %s: %v; want refused %v", tc.ip, r, tc.refused)
		}
	}
	lines := ruleLines(sl, "msgs-per-ip")
	if len(lines) != 1 || lines[0].Str("key") != "client_ip:2001:db8:1:1::/64" {
		t.Errorf("log lines %v; want one refusal for key client_ip:2001:db8:1:1::/64", lines)
	}
}
