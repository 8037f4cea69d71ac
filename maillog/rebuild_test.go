package maillog

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// rebuild reads log and returns its steps, one line each: "open
// 192.0.2.1 smtpd", "mail s@x", "rcpt r@x", "data", "end", "close".
func rebuild(t *testing.T, log string, timeout time.Duration) ([]string, *Rebuilder) {
	t.Helper()
	var out []string
	last := int64(0)
	rb := NewRebuilder(timeout, func(s *Step) {
		if s.Time < last {
			t.Errorf("step %s at %v before the last one, %v", s.Kind, time.Unix(0, s.Time), time.Unix(0, last))
		}
		last = s.Time
		line := s.Kind.String()
		switch s.Kind {
		case StepOpen:
			line += fmt.Sprintf(" %s %s %s", s.Session.ClientIP, s.Session.Listener, s.Session.SASLUser)
		case StepMail:
			line += " " + s.Message.Sender
		case StepRcpt:
			line += " " + s.Message.Rcpts[s.Rcpt].Addr
		case StepEnd:
			if s.Message.Partial {
				line += " partial"
			}
		case StepClose:
			line += " " + s.Session.ClientIP.String()
		}
		out = append(out, strings.TrimSpace(line))
	})
	r := &Reader{Stats: &rb.Stats, Location: time.UTC}
	if err := r.Read(context.Background(), []Source{{Name: "t", R: strings.NewReader(log)}}, rb.Add); err != nil {
		t.Fatal(err)
	}
	rb.Flush()
	if rb.Open() != 0 {
		t.Errorf("%d connections left open after Flush", rb.Open())
	}
	return out, rb
}

// steps fails t unless log rebuilds into the steps want ("open
// 192.0.2.1 smtpd|helo|..."), and returns the rebuilder for its stats.
func steps(t *testing.T, log, want string) *Rebuilder {
	t.Helper()
	got, rb := rebuild(t, log, 10*time.Minute)
	if strings.Join(got, "|") != want {
		t.Errorf("got  %s\nwant %s", strings.Join(got, "|"), want)
	}
	return rb
}

func lines(ls ...string) string { return strings.Join(ls, "\n") + "\n" }

// A recipient refused before the first accepted one is logged as NOQUEUE,
// then the queue id comes: Postfix's count of MAIL commands makes them
// one transaction, whose refused recipient milters never saw.
func TestNoqueueJoinsItsTransaction(t *testing.T) {
	log := lines(
		"2026-12-04T10:00:00Z mx postfix/smtpd[1]: connect from c[192.0.2.1]",
		"2026-12-04T10:00:01Z mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from c[192.0.2.1]: 550 5.1.1 <n@x>: User unknown; from=<s@x> to=<n@x> proto=ESMTP helo=<c>",
		"2026-12-04T10:00:01Z mx postfix/smtpd[1]: AB12C3: client=c[192.0.2.1]",
		"2026-12-04T10:00:02Z mx postfix/cleanup[2]: AB12C3: message-id=<m@x>",
		"2026-12-04T10:00:02Z mx postfix/qmgr[3]: AB12C3: from=<s@x>, size=300, nrcpt=1 (queue active)",
		"2026-12-04T10:00:03Z mx postfix/smtpd[1]: disconnect from c[192.0.2.1] ehlo=1 mail=1 rcpt=1/2 data=1 quit=1 commands=5/6",
		"2026-12-04T10:00:04Z mx postfix/smtp[4]: AB12C3: to=<r@x>, relay=a[192.0.2.9]:25, delay=1, dsn=2.0.0, status=sent (ok)",
		"2026-12-04T10:00:04Z mx postfix/qmgr[3]: AB12C3: removed",
	)
	rb := steps(t, log, "open 192.0.2.1 smtpd|helo|mail s@x|rcpt r@x|data|end|close 192.0.2.1")
	if rb.Stats.Messages != 1 || rb.Stats.MTARefused[3] != 1 || rb.Stats.Partial != 0 {
		t.Errorf("stats %+v", rb.Stats)
	}
}

// XCLIENT hands the connection to another client: the milter session of
// the proxy ends and one of the new client begins, at the connection's
// start; the SASL user comes from the client= line and applies to the
// session's refused transaction too.
func TestXclientAndSASL(t *testing.T) {
	log := lines(
		"Dec  4 10:00:00 mx postfix/submission/smtpd[1]: connect from localhost[127.0.0.1]",
		"Dec  4 10:00:01 mx postfix/submission/smtpd[1]: NOQUEUE: reject: RCPT from c[192.0.2.5]: 550 5.1.1 <n@x>: User unknown; from=<u@x> to=<n@x> proto=ESMTP helo=<c>",
		"Dec  4 10:00:02 mx postfix/submission/smtpd[1]: CD34E5: client=c[192.0.2.5], sasl_method=PLAIN, sasl_username=u@x",
		"Dec  4 10:00:02 mx postfix/cleanup[2]: CD34E5: message-id=<m@x>",
		"Dec  4 10:00:02 mx postfix/qmgr[3]: CD34E5: from=<u@x>, size=300, nrcpt=2 (queue active)",
		"Dec  4 10:00:03 mx postfix/smtp[4]: CD34E5: to=<a@x>, relay=a[192.0.2.9]:25, delay=1, dsn=2.0.0, status=sent (ok)",
		"Dec  4 10:00:03 mx postfix/submission/smtpd[1]: disconnect from c[192.0.2.5] ehlo=2 xclient=1 auth=1 mail=2 rcpt=2/3 data=1 quit=1 commands=8/9",
		"Dec  4 10:00:04 mx postfix/smtp[4]: CD34E5: to=<b@x>, relay=a[192.0.2.9]:25, delay=1, dsn=2.0.0, status=deferred (later)",
	)
	steps(t, log, "open 127.0.0.1 submission|helo|close 127.0.0.1|open 192.0.2.5 submission u@x|helo|mail u@x|end|mail u@x|rcpt a@x|rcpt b@x|data|end|close 192.0.2.5")
}

// Sessions that overlap in the log overlap in the steps: the second
// client opens before the first one closes, even when they share a
// second and the first one waits for its deliveries.
func TestStepsInterleave(t *testing.T) {
	log := lines(
		"Dec  4 10:00:00 mx postfix/smtpd[1]: connect from a[192.0.2.1]",
		"Dec  4 10:00:00 mx postfix/smtpd[2]: connect from b[192.0.2.2]",
		"Dec  4 10:00:00 mx postfix/smtpd[1]: EF01A2: client=a[192.0.2.1]",
		"Dec  4 10:00:00 mx postfix/qmgr[3]: EF01A2: from=<s@x>, size=300, nrcpt=1 (queue active)",
		"Dec  4 10:00:00 mx postfix/smtpd[1]: disconnect from a[192.0.2.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
		"Dec  4 10:00:00 mx postfix/smtpd[2]: disconnect from b[192.0.2.2] ehlo=1 quit=1 commands=2",
		"Dec  4 10:00:00 mx postfix/smtp[4]: EF01A2: to=<r@x>, relay=a[192.0.2.9]:25, delay=1, dsn=2.0.0, status=sent (ok)",
	)
	steps(t, log, "open 192.0.2.1 smtpd|helo|open 192.0.2.2 smtpd|helo|mail s@x|rcpt r@x|data|end|close 192.0.2.1|close 192.0.2.2")
}

// A session whose end is not in the log is closed once no line touched
// it for the session timeout of log time, as partial, and frees what it
// held: the replay of a long log keeps only open sessions in memory.
func TestSessionTimeout(t *testing.T) {
	var b strings.Builder
	b.WriteString("Dec  4 10:00:00 mx postfix/smtpd[1]: connect from a[192.0.2.1]\n")
	b.WriteString("Dec  4 10:00:00 mx postfix/smtpd[1]: AA01B2: client=a[192.0.2.1]\n")
	at := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	var rb *Rebuilder
	var closedAt time.Time
	steps := 0
	for i := 0; i < 30; i++ {
		at = at.Add(time.Minute)
		fmt.Fprintf(&b, "%s mx postfix/smtpd[%d]: connect from b[192.0.2.2]\n", at.Format(time.Stamp), 100+i)
		fmt.Fprintf(&b, "%s mx postfix/smtpd[%d]: disconnect from b[192.0.2.2] ehlo=1 quit=1 commands=2\n", at.Format(time.Stamp), 100+i)
	}
	rb = NewRebuilder(5*time.Minute, func(s *Step) {
		steps++
		if s.Kind == StepClose && s.Session.ClientIP.String() == "192.0.2.1" {
			closedAt = time.Unix(0, rb.now).UTC()
			if !s.Session.Partial || !s.Session.Messages[0].Partial {
				t.Errorf("the cut session is not partial")
			}
		}
	})
	r := &Reader{Stats: &rb.Stats, Location: time.UTC, Year: 2026}
	if err := r.Read(context.Background(), []Source{{Name: "t", R: strings.NewReader(b.String())}}, rb.Add); err != nil {
		t.Fatal(err)
	}
	if closedAt.IsZero() || closedAt.After(time.Date(2026, 12, 4, 10, 7, 0, 0, time.UTC)) {
		t.Errorf("the silent session was closed at %v, want by 10:07 (5m of silence and a sweep)", closedAt)
	}
	if rb.Open() > 1 || len(rb.queue) != 0 || len(rb.owner) != 0 {
		t.Errorf("%d connections, %d queue ids held at the end of the log", rb.Open(), len(rb.queue))
	}
	rb.Flush()
	if rb.Stats.PartialSessions != 1 || rb.Stats.Sessions != 31 {
		t.Errorf("stats %+v", rb.Stats)
	}
}

// A Sendmail session is its process's lines: the sender and size come at
// the end of the transaction, the recipients with the delivery, the SASL
// user from the AUTH line.
func TestSendmailSession(t *testing.T) {
	log := lines(
		"Dec  4 10:00:00 smta sm-mta[500]: AUTH=server, relay=laptop [192.0.2.8], authid=alice, mech=PLAIN, bits=0",
		"Dec  4 10:00:01 smta sm-mta[500]: 6B4A000500: <nobody@smta>... User unknown",
		"Dec  4 10:00:02 smta sm-mta[500]: 6B4A000500: from=<alice@x>, size=900, class=0, nrcpts=2, msgid=<m@x>, proto=ESMTPSA, daemon=MSA, relay=laptop [192.0.2.8]",
		"Dec  4 10:00:02 smta sm-mta[501]: 6B4A000500: to=<b@y>,<a@y>, delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=1, relay=[127.0.0.1] [127.0.0.1], dsn=2.0.0, stat=Sent (Ok)",
		"Dec  4 10:00:03 smta sm-mta[500]: 6B4A000501: from=<alice@x>, size=0, class=0, nrcpts=0, proto=ESMTPSA, daemon=MSA, relay=laptop [192.0.2.8]",
	)
	rb := steps(t, log, "open 192.0.2.8 MSA alice|helo|mail alice@x|rcpt b@y|rcpt a@y|data|end|mail alice@x|end|close 192.0.2.8")
	if rb.Stats.MTARefused[3] != 1 {
		t.Errorf("stats %+v", rb.Stats)
	}
}

// A message held by a milter at its end was seen whole by milters.
func TestMilterHold(t *testing.T) {
	log := lines(
		"Dec  4 10:00:00 mx postfix/smtpd[1]: connect from a[192.0.2.1]",
		"Dec  4 10:00:00 mx postfix/smtpd[1]: BB01C2: client=a[192.0.2.1]",
		"Dec  4 10:00:01 mx postfix/cleanup[2]: BB01C2: message-id=<m@x>",
		"Dec  4 10:00:01 mx postfix/cleanup[2]: BB01C2: milter-hold: END-OF-MESSAGE from a[192.0.2.1]: milter triggers HOLD action; from=<s@x> to=<r@x> proto=ESMTP helo=<a>",
		"Dec  4 10:00:02 mx postfix/smtpd[1]: disconnect from a[192.0.2.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
	)
	rb := steps(t, log, "open 192.0.2.1 smtpd|helo|mail s@x|rcpt r@x|data|end|close 192.0.2.1")
	if rb.Stats.Held != 1 {
		t.Errorf("stats %+v", rb.Stats)
	}
}

// An alias that expands one recipient into two is one RCPT: the
// transaction is complete once qmgr removes it, not partial.
func TestAliasExpansion(t *testing.T) {
	log := lines(
		"Dec  4 10:00:00 mx postfix/smtpd[1]: connect from a[192.0.2.1]",
		"Dec  4 10:00:00 mx postfix/smtpd[1]: CC01D2: client=a[192.0.2.1]",
		"Dec  4 10:00:01 mx postfix/qmgr[3]: CC01D2: from=<s@x>, size=300, nrcpt=2 (queue active)",
		"Dec  4 10:00:01 mx postfix/smtpd[1]: disconnect from a[192.0.2.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
		"Dec  4 10:00:02 mx postfix/local[5]: CC01D2: to=<ann@mx>, orig_to=<team@mx>, relay=local, delay=1, status=sent (delivered)",
		"Dec  4 10:00:02 mx postfix/local[5]: CC01D2: to=<bob@mx>, orig_to=<team@mx>, relay=local, delay=1, status=sent (delivered)",
		"Dec  4 10:00:02 mx postfix/qmgr[3]: CC01D2: removed",
	)
	rb := steps(t, log, "open 192.0.2.1 smtpd|helo|mail s@x|rcpt team@mx|data|end|close 192.0.2.1")
	if rb.Stats.Partial != 0 {
		t.Errorf("stats %+v", rb.Stats)
	}
}
