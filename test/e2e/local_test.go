package e2e

// Mail a local program submits: Postfix's sendmail(1), which pickup and
// cleanup run through non_smtpd_milters, and Sendmail's -bs. Neither can
// be refused a recipient the way an SMTP client can: sluice answers them
// at the end of the message, with the rule's own action.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// localPolicy limits cron's recipients (tempfail) and everyone's messages
// per sender (hold); the local client 127.0.0.1 is not trusted.
const localPolicy = `trusted = []

[log]
level = "info"

[[limit]]
name = "rcpts-per-sender"
count = "recipients"
per = "sender"
rate = "1/1h"
match.sender = "^cron@"

[[limit]]
name = "msgs-per-sender"
count = "messages"
per = "sender"
rate = "1/1h"
action = "hold"
match.sender = "^report@"
`

// Postfix cannot refuse a recipient of mail from sendmail(1): a milter
// that does gets "milter configuration error: can't reject recipient in
// non-smtpd(8) submission" logged and the message left for pickup to try
// again and again. sluice answers at the end of the message instead: the
// rule's tempfail there (Postfix keeps the message in the maildrop), and
// the hold of an over-limit message as for SMTP.
func TestPostfixLocalSubmission(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, localPolicy)
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen, Main: map[string]string{"non_smtpd_milters": sl.Listen}})

	pf.Submit("cron@example.org", []string{"a@example.net", "b@example.net"}, mta.NewMessage("cron@example.org", "a@example.net", "two recipients"))
	l := sl.WaitLog(30*time.Second, "the refusal of the local message", func(l sluicetest.LogLine) bool {
		return l.Msg() == "refused" && l.Str("rule") == "rcpts-per-sender"
	})
	t.Logf("sluice: %v", l)
	if l.Str("stage") != "data" || l.Str("client_ip") != "127.0.0.1" {
		t.Errorf("refusal %v; want it at the end of the message (stage data)", l)
	}
	testenv.WaitFor(t, 30*time.Second, "cleanup's milter-reject at END-OF-MESSAGE", func() error {
		if !strings.Contains(pf.Log(), "milter-reject: END-OF-MESSAGE from localhost[127.0.0.1]: 4.7.1 Rate limit rcpts-per-sender") {
			return fmt.Errorf("not in the maillog yet")
		}
		return nil
	})
	if strings.Contains(pf.Log(), "can't reject recipient") {
		t.Errorf("Postfix logged a milter configuration error:\n%s", pf.Log())
	}

	for i := range 2 {
		pf.Submit("report@example.org", []string{"a@example.net"}, mta.NewMessage("report@example.org", "a@example.net", fmt.Sprintf("report %d", i+1)))
	}
	var held []mta.QueueEntry
	err := pollFor(30*time.Second, func() bool {
		held = pf.Held()
		return len(held) == 1
	})
	if err != nil || held[0].Sender != "report@example.org" {
		t.Errorf("hold queue %+v; want the second report held", pf.Queue())
	}
	// The cron message stays in the maildrop, tempfailed at each pickup
	// pass; the first report is delivered.
	if err := pollFor(time.Minute, func() bool { return len(mta.FromSender(pf.Sink.Messages(t), "report@example.org")) == 1 }); err != nil {
		t.Errorf("the first report was not delivered: %v", err)
	}
}

// Sendmail's -bs takes SMTP from a local program; the milter sees no
// client address. Its recipients are not refused one by one either: the
// end of the message gets the rule's 451.
func TestSendmailLocalSubmission(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, "milter_timeout = \"10s\"\n"+localPolicy)
	sm := mta.StartSendmail(t, mta.SendmailOptions{Milter: sl.Listen})

	out := sm.SubmitSMTP("cron@example.org", []string{"a@example.net", "b@example.net"}, "two recipients")
	t.Logf("swaks:\n%s", out)
	if strings.Contains(out, "<** 451") && strings.Contains(out, "RCPT TO:<b@example.net>\n<** ") {
		t.Errorf("the second recipient was refused; a local submission waits for the end of the message")
	}
	if !strings.Contains(out, "<** 451 4.7.1 Rate limit rcpts-per-sender") {
		t.Errorf("no 451 from the rule at the end of the message")
	}
	l := sl.WaitLog(10*time.Second, "the refusal", func(l sluicetest.LogLine) bool {
		return l.Msg() == "refused" && l.Str("rule") == "rcpts-per-sender"
	})
	if l.Str("stage") != "data" {
		t.Errorf("refusal %v; want it at the end of the message", l)
	}
}
