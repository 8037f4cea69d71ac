package e2e

// Policy actions with real Postfix: hold puts over-limit mail in the hold
// queue, listener profiles, delay, dry-run, disconnect, per-destination
// throttling, and hostile senders that must still give well-formed
// headers. The configs set trusted = [] where clients come from loopback
// without XCLIENT (the default trusted list exempts 127.0.0.0/8).

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// policyConfig is a config with trusted = [] and the given rules.
func policyConfig(top, rules string) string {
	return "trusted = []\n" + top + "\n[log]\nlevel = \"info\"\n" + rules
}

// hold: over-limit messages are accepted (250), Postfix puts them in its
// hold queue with sluice's reason, and postsuper -H releases them.
func TestPolicyHold(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, policyConfig(`mode = "enforce"`, `
[[limit]]
name = "runaway"
count = "messages"
per = "sender"
rate = "3/1h"
action = "hold"
`))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	const script = "cron@build.example.test"
	c := session(t, pf.Addr, "192.0.2.40")
	trs := sendN(t, c, script, 5)
	c.Quit()
	for i, tr := range trs {
		if !tr.Accepted() {
			t.Errorf("message %d: %v; hold accepts", i+1, tr)
		}
	}
	msgs := pf.WaitDelivered(3, time.Minute)
	var held []mta.QueueEntry
	err := pollFor(30*time.Second, func() bool {
		held = pf.Held()
		return len(held) == 2
	})
	out, _ := exec.Command("/usr/sbin/postqueue", "-c", filepath.Join(pf.Dir, "etc"), "-j").CombinedOutput()
	t.Logf("postqueue -j:\n%s", out)
	if err != nil || len(held) != 2 {
		t.Fatalf("hold queue has %d messages, want 2: %+v", len(held), pf.Queue())
	}
	for _, e := range held {
		if e.Sender != script {
			t.Errorf("held message from %q, want %s", e.Sender, script)
		}
	}
	if got := len(mta.FromSender(msgs, script)); got != 3 {
		t.Errorf("sink has %d messages from %s, want the 3 within the limit", got, script)
	}
	// Postfix logs the hold but not the milter's reason; sluice's "held"
	// line names the rule and the queue id, and a header on the message
	// says why.
	want := "milter-hold: END-OF-MESSAGE from unknown[192.0.2.40]: milter triggers HOLD action; from=<" + script + ">"
	n := strings.Count(pf.Log(), want)
	for _, line := range strings.Split(pf.Log(), "\n") {
		if strings.Contains(line, "milter-hold") {
			t.Logf("postfix: %s", line)
		}
	}
	if n != 2 {
		t.Errorf("Postfix logged %q %d times, want 2", want, n)
	}
	waitLogCount(t, sl, "held", 2, 10*time.Second)
	lines := sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "held" && l.Str("rule") == "runaway" })
	if len(lines) != 2 {
		t.Errorf("sluice logged %d 'held' lines, want 2", len(lines))
	}
	heldIDs := map[string]bool{}
	for _, e := range held {
		heldIDs[e.QueueID] = true
	}
	for _, l := range lines {
		t.Logf("sluice: %v", l)
		if !heldIDs[l.Str("queue_id")] {
			t.Errorf("sluice's held line names queue id %q, not one of the held messages %v", l.Str("queue_id"), heldIDs)
		}
	}

	// The admin releases them: nothing was lost.
	pf.Postsuper("-H", "ALL")
	pf.Flush()
	msgs = pf.WaitDelivered(5, time.Minute)
	if got := len(mta.FromSender(msgs, script)); got != 5 {
		t.Errorf("after postsuper -H ALL, the sink has %d messages from %s, want 5", got, script)
	}
	tagged := mta.WithHeader(msgs, "X-Sluice-Limit")
	for _, m := range tagged {
		v := m.Header.Get("X-Sluice-Limit")
		t.Logf("%s: X-Sluice-Limit: %s", m.Header.Get("Subject"), v)
		// Held messages are not counted: each says the window holds the
		// limit's 3 and the message would be one more.
		if !strings.HasPrefix(v, "runaway; key=sender:"+script+"; count=3+1; limit=3/1h;") || !strings.HasSuffix(v, "; action=hold") {
			t.Errorf("released message's header %q", v)
		}
	}
	if len(tagged) != 2 {
		t.Errorf("%d released messages say why they were held, want 2", len(tagged))
	}
}

// A submission-port profile with a higher limit than port 25: two
// listeners, two {daemon_name}s, and SMTP AUTH on the submission port.
func TestPolicySubmissionProfile(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, policyConfig(`mode = "enforce"`, `
[[limit]]
name = "port25-sender"
count = "messages"
per = "sender"
rate = "3/1h"
match.listener = ["smtpd"]

[[limit]]
name = "submission-user"
count = "messages"
per = "sasl_user"
rate = "6/1h"
match.listener = ["submission"]
match.authenticated = true
`))
	pf := mta.StartPostfix(t, mta.PostfixOptions{
		Milter:     sl.Listen,
		Submission: true,
		SASLUsers:  map[string]string{"alice@example.test": "secret"},
	})
	const alice = "alice@example.test"

	c := session(t, pf.Addr, "192.0.2.41")
	trs := sendN(t, c, alice, 8)
	c.Quit()
	wantTempfailAtMail(t, trs, 4, 8)

	sub, err := mta.Dial(pf.SubmissionAddr)
	if err != nil {
		t.Fatal(err)
	}
	r, err := sub.Ehlo("laptop.example.test")
	mustOK(t, "EHLO", r, err)
	r, err = sub.AuthPlain(alice, "secret")
	if err != nil || r.Code != 235 {
		t.Fatalf("AUTH: %v %v", r, err)
	}
	trs = sendN(t, sub, alice, 8)
	sub.Quit()
	wantTempfailAtMail(t, trs, 7, 8)

	msgs := pf.WaitDelivered(9, time.Minute)
	if got := len(mta.FromSender(msgs, alice)); got != 9 {
		t.Errorf("delivered %d, want 3 from port 25 and 6 from submission", got)
	}
	waitLogCount(t, sl, "refused", 7, 10*time.Second)
	p25 := ruleLines(sl, "port25-sender")
	subl := ruleLines(sl, "submission-user")
	for _, l := range append(p25, subl...) {
		t.Logf("sluice: %v", l)
	}
	if len(p25) != 5 || len(subl) != 2 {
		t.Errorf("refusals logged: %d by port25-sender, %d by submission-user; want 5 and 2", len(p25), len(subl))
	}
	for _, l := range subl {
		if l.Str("key") != "sasl_user:alice@example.test" {
			t.Errorf("submission refusal key %q", l.Str("key"))
		}
	}
}

// delay: the reply to MAIL FROM comes after the pause (asserted loosely:
// at least the delay), and the message is accepted.
func TestPolicyDelay(t *testing.T) {
	testenv.Require(t)
	const pause = 3 * time.Second
	sl := sluicetest.StartSluice(t, policyConfig(`mode = "enforce"`, `
[[limit]]
name = "tarpit"
count = "messages"
per = "client_ip"
rate = "2/1h"
action = "delay"
delay = "3s"
`))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	c := session(t, pf.Addr, "192.0.2.42")
	const from = "fast@example.test"
	var took []time.Duration
	for i := 1; i <= 4; i++ {
		start := time.Now()
		r, err := c.Mail(from)
		took = append(took, time.Since(start).Round(time.Millisecond))
		mustOK(t, "MAIL FROM", r, err)
		r, err = c.Rcpt(rcpt)
		mustOK(t, "RCPT TO", r, err)
		r, err = c.Data(mta.NewMessage(from, rcpt, fmt.Sprintf("%s %d", from, i)))
		mustOK(t, "DATA", r, err)
	}
	c.Quit()
	t.Logf("MAIL FROM reply times: %v (delay %v from the 3rd message on)", took, pause)
	for i := 2; i < 4; i++ {
		if took[i] < pause {
			t.Errorf("message %d: MAIL FROM answered after %v, want at least %v", i+1, took[i], pause)
		}
	}
	pf.WaitDelivered(4, time.Minute)
	if lines := waitLogCount(t, sl, "delayed", 2, 10*time.Second); len(lines) != 2 {
		t.Errorf("sluice logged %d 'delayed' lines, want 2", len(lines))
	}
}

// dry-run: nothing is refused, held, delayed or tagged; sluice logs
// "would refuse" for each crossing.
func TestPolicyDryRun(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, policyConfig(`mode = "enforce"`, `
[[limit]]
name = "new-limit"
count = "messages"
per = "sender"
rate = "2/1h"
action = "reject"
mode = "dry-run"

[[limit]]
name = "new-hold"
count = "messages"
per = "client_ip"
rate = "2/1h"
action = "hold"
mode = "dry-run"
`))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	const from = "trial@example.test"
	c := session(t, pf.Addr, "192.0.2.43")
	trs := sendN(t, c, from, 5)
	c.Quit()
	wantTempfailAtMail(t, trs, 0, -1)
	msgs := pf.WaitDelivered(5, time.Minute)
	if got := len(mta.FromSender(msgs, from)); got != 5 {
		t.Errorf("delivered %d, want 5", got)
	}
	if got := len(mta.WithHeader(msgs, "X-Sluice-Limit")); got != 0 {
		t.Errorf("%d messages tagged in dry-run", got)
	}
	for _, e := range pf.Queue() {
		t.Errorf("left in the queue: %+v", e)
	}
	waitLogCount(t, sl, "would refuse", 3, 10*time.Second)
	waitLogCount(t, sl, "would hold", 3, 10*time.Second)
	would := sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "would refuse" && l.Str("rule") == "new-limit" })
	wouldHold := sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "would hold" && l.Str("rule") == "new-hold" })
	for _, l := range append(would, wouldHold...) {
		t.Logf("sluice: %v", l)
	}
	if len(would) != 3 || len(wouldHold) != 3 {
		t.Errorf("logged %d 'would refuse' and %d 'would hold', want 3 and 3", len(would), len(wouldHold))
	}
	for _, l := range would {
		if l.Str("mode") != "dry-run" || l.Str("action") != "reject" {
			t.Errorf("would-refuse line: %v", l)
		}
	}
}

// disconnect: 421 4.7.0, and Postfix closes the session.
func TestPolicyDisconnect(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, policyConfig(`mode = "enforce"`, `
[[limit]]
name = "abuser"
count = "messages"
per = "client_ip"
rate = "2/1h"
action = "disconnect"
reply = "421 4.7.0 Too many messages from {client_ip}; closing"
`))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	c := session(t, pf.Addr, "192.0.2.44")
	sendN(t, c, "x@example.test", 2)
	r, err := c.Mail("x@example.test")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("3rd MAIL FROM: %v", r)
	if r.Code != 421 || r.Text != "4.7.0 Too many messages from 192.0.2.44; closing" {
		t.Errorf("3rd MAIL FROM: %v, want 421 4.7.0 with the template filled", r)
	}
	if r, err := c.Cmd("NOOP"); err == nil {
		t.Errorf("the session is still open after 421: NOOP got %v", r)
	}
	waitLogCount(t, sl, "refused", 1, 10*time.Second) // sluice's output is read as it comes
	if lines := ruleLines(sl, "abuser"); len(lines) != 1 || lines[0].Msg() != "refused" || lines[0].Str("action") != "disconnect" {
		t.Errorf("log lines: %v", lines)
	}
}

// Per-destination throttling: RCPTs to gmail.com beyond 6 a minute get
// 451; other domains pass; the message goes to the recipients accepted.
func TestPolicyPerDestinationThrottle(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, policyConfig(`mode = "enforce"`, `
[[limit]]
name = "gmail-throttle"
count = "recipients"
per = "rcpt_domain"
rate = "6/1m"
match.rcpt_domain = ["gmail.com"]
`))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	c := session(t, pf.Addr, "192.0.2.45")
	to := []string{"other@example.net"}
	for i := 1; i <= 9; i++ {
		to = append(to, fmt.Sprintf("user%d@gmail.com", i))
	}
	const from = "newsletter@example.test"
	tr, err := c.Send(from, to, mta.NewMessage(from, to[0], "newsletter"))
	c.Quit()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%v", tr)
	var codes []int
	for _, r := range tr.Rcpt {
		codes = append(codes, r.Code)
	}
	if fmt.Sprint(codes) != "[250 250 250 250 250 250 250 451 451 451]" || !tr.Accepted() {
		t.Errorf("RCPT codes %v, message %v; want 7 accepted, 3 tempfailed, the message accepted", codes, tr.Data)
	}
	if r := tr.Rcpt[7]; !strings.HasPrefix(r.Text, "4.7.1 ") || !strings.Contains(r.Text, "gmail-throttle") || !strings.Contains(r.Text, "try again in") {
		t.Errorf("the refusal: %v", r)
	}
	msgs := pf.WaitDelivered(1, time.Minute)
	if len(msgs) != 1 || len(msgs[0].Envelope["X-Rcpt-Args"]) != 7 {
		t.Errorf("sink: %d messages, first with recipients %v", len(msgs), msgs[0].Envelope["X-Rcpt-Args"])
	}
	waitLogCount(t, sl, "refused", 3, 10*time.Second)
	if lines := ruleLines(sl, "gmail-throttle"); len(lines) != 3 || lines[0].Str("rcpt") != "user7@gmail.com" {
		t.Errorf("refusal log lines: %v", lines)
	}
}

// Hostile senders — a quote, a space, a semicolon, a CR or LF in the local
// part — get one well-formed X-Sluice-Limit each, and a forged incoming
// X-Sluice-Limit is removed. What Postfix refuses to relay is then sent
// to sluice directly with go-milter's client, as Postfix would.
func TestPolicyHostileSenderHeaders(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, policyConfig(`mode = "tag"`, `
[[limit]]
name = "per-sender"
count = "messages"
per = "sender"
rate = "1/1h"
`))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	senders := []string{
		`"john\"doe"@example.test`,
		`"john doe"@example.test`,
		`"a;b=c; would=accept"@example.test`,
		"\"cr\rlf\"@example.test",
		"bare\rcr@example.test",
		"bare\nlf@example.test",
	}
	relayed := 0
	for i, from := range senders {
		c := session(t, pf.Addr, fmt.Sprintf("192.0.2.%d", 50+i))
		for n := 1; n <= 2; n++ {
			msg := mta.NewMessage("someone@example.test", rcpt, fmt.Sprintf("hostile %d/%d", i, n), "X-Sluice-Limit: forged; key=sender:nobody")
			tr, err := c.Send(from, []string{rcpt}, msg)
			t.Logf("sender %q, message %d: %v %v", from, n, tr, err)
			if err != nil {
				break
			}
			if tr.Accepted() {
				relayed++
			} else {
				break // Postfix refused the address: the milter client below covers it
			}
		}
		c.Close()
	}
	msgs := pf.WaitDelivered(relayed, time.Minute)
	tagged := 0
	for _, m := range msgs {
		vals := m.Header["X-Sluice-Limit"]
		for _, v := range vals {
			if strings.Contains(v, "forged") {
				t.Errorf("%s: the forged header reached the sink: %q", m.Header.Get("Subject"), v)
			}
		}
		if strings.HasSuffix(m.Header.Get("Subject"), "/2") {
			tagged++
			if len(vals) != 1 {
				t.Errorf("%s: %d X-Sluice-Limit headers %q, want 1", m.Header.Get("Subject"), len(vals), vals)
				continue
			}
			checkTagValue(t, m.Header.Get("Subject"), vals[0])
		}
	}
	t.Logf("Postfix relayed %d messages from the hostile senders; %d carry a tag", relayed, tagged)
	if relayed < 4 {
		t.Errorf("Postfix relayed only %d messages: the quoted senders should pass", relayed)
	}

	// The same senders straight to sluice, CR and LF included (in another
	// domain, so that their counters start afresh).
	for i, from := range append(senders, "a\r\nX-Injected: yes@example.test", "caf\u00e9@example.test") {
		from = strings.Replace(from, "@example.test", "@direct.example.test", 1)
		for n := 1; n <= 2; n++ {
			mods := milterMessage(t, sl.Listen, fmt.Sprintf("198.51.100.%d", 10+i), from)
			var tags []string
			for _, m := range mods {
				switch {
				case m.Type == milter.ActionAddHeader && m.HeaderName == "X-Sluice-Limit":
					tags = append(tags, m.HeaderValue)
				case m.Type == milter.ActionChangeHeader && (m.HeaderName != "X-Sluice-Limit" || m.HeaderValue != "" || m.HeaderIndex != 1):
					t.Errorf("sender %q: unexpected change %+v", from, m)
				}
			}
			if n == 1 && len(tags) != 0 || n == 2 && len(tags) != 1 {
				t.Errorf("sender %q, message %d: tags %q", from, n, tags)
				continue
			}
			if n == 2 {
				checkTagValue(t, fmt.Sprintf("milter client, sender %q", from), tags[0])
			}
		}
	}
}

// checkTagValue checks that a tag header value is one line of printable
// ASCII whose quoted-strings are balanced, with the fields of a crossing.
func checkTagValue(t *testing.T, what, v string) {
	t.Helper()
	t.Logf("%s: X-Sluice-Limit: %s", what, v)
	quoted := false
	fields := 1
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c < 0x20 || c >= 0x7f:
			t.Errorf("%s: byte %#x in the header value", what, c)
			return
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == ';':
			fields++
		}
	}
	if quoted || fields != 6 {
		t.Errorf("%s: %q has %d fields (unclosed quote: %v), want 6", what, v, fields, quoted)
	}
	for _, f := range []string{"per-sender; key=", "; count=1+1; limit=1/1h; retry_after=", "; would=tempfail"} {
		if !strings.Contains(v, f) {
			t.Errorf("%s: %q lacks %q", what, v, f)
		}
	}
}

// milterMessage sends one message to sluice's milter socket with
// go-milter's client, with the macros and steps Postfix uses, and returns
// the end-of-message modifications.
func milterMessage(t *testing.T, listen, ip, from string) []milter.ModifyAction {
	t.Helper()
	s := milterSession(t, listen, ip)
	defer s.Close()
	must := func(act *milter.Action, err error) {
		t.Helper()
		if err != nil || act.Type != milter.ActionContinue {
			t.Fatalf("sender %q: %+v %v", from, act, err)
		}
	}
	must(s.Mail(from, ""))
	must(s.Rcpt(rcpt, ""))
	must(s.DataStart())
	for _, h := range [][2]string{{"Subject", "direct"}, {"X-Sluice-Limit", "forged; key=sender:nobody"}} {
		if _, err := s.HeaderField(h[0], h[1], nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.HeaderEnd(); err != nil {
		t.Fatal(err)
	}
	mods, act, err := s.BodyReadFrom(strings.NewReader("direct\r\n"))
	// go-milter answers accept to sluice's continue at the end.
	if err != nil || act.Type != milter.ActionAccept {
		t.Fatalf("sender %q: end of message: %+v %v", from, act, err)
	}
	return mods
}

// milterSession opens a milter session with sluice as Postfix does, up to
// HELO, for a client at ip. It is closed when the test ends, before
// sluice is stopped (which waits for its sessions), if not before.
func milterSession(t *testing.T, listen, ip string) *milter.ClientSession {
	t.Helper()
	network, addr, err := testenv.SplitSpec(listen)
	if err != nil {
		t.Fatal(err)
	}
	macros := milter.NewMacroBag()
	macros.Set("{daemon_name}", "smtpd")
	macros.Set("j", "mx.example.test")
	macros.Set("{client_addr}", ip)
	c := milter.NewClient(network, addr, milter.WithDialer(&net.Dialer{Timeout: 5 * time.Second}),
		milter.WithReadTimeout(10*time.Second), milter.WithWriteTimeout(10*time.Second))
	s, err := c.Session(macros)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, step := range []func() (*milter.Action, error){
		func() (*milter.Action, error) {
			return s.Conn("unknown", milter.FamilyInet, 25, netip.MustParseAddr(ip).String())
		},
		func() (*milter.Action, error) { return s.Helo("client.example.test") },
	} {
		if act, err := step(); err != nil || act.Type != milter.ActionContinue {
			t.Fatalf("client %s: %+v %v", ip, act, err)
		}
	}
	return s
}
