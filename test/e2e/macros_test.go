package e2e

// Milter protocol 6 lets sluice ask the MTA for the macros it reads, stage
// by stage: an MTA configured to send none of its own accord (empty
// milter_*_macros, confMILTER_MACROS_*) still gives sluice what its
// policy needs.

import (
	"strings"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// A Postfix that sends no macros of its own accord gives sluice the
// listener ({daemon_name}) at connect, the login ({auth_authen}) at MAIL
// FROM and the queue id (i) at end of message: rules that match the
// listener and count per login apply, and the held message's log line
// names its queue id.
func TestPostfixMacrosAskedFor(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, policyConfig(`mode = "enforce"`, `
[[limit]]
name = "port25-sender"
count = "messages"
per = "sender"
rate = "1/1h"
action = "hold"
match.listener = ["smtpd"]

[[limit]]
name = "submission-user"
count = "messages"
per = "sasl_user"
rate = "1/1h"
match.listener = ["submission"]
match.authenticated = true
`))
	const alice = "alice@example.test"
	pf := mta.StartPostfix(t, mta.PostfixOptions{
		Milter:     sl.Listen,
		Submission: true,
		SASLUsers:  map[string]string{alice: "secret"},
		NoMacros:   true,
	})

	c := session(t, pf.Addr, "192.0.2.60")
	trs := sendN(t, c, "cron@example.test", 2)
	c.Quit()
	for i, tr := range trs {
		if !tr.Accepted() {
			t.Errorf("port 25, message %d: %v; hold accepts", i+1, tr)
		}
	}
	held := waitLogCount(t, sl, "held", 1, 10*time.Second)
	if len(held) != 1 || held[0].Str("rule") != "port25-sender" || held[0].Str("queue_id") != trs[1].QueueID() {
		t.Errorf("held lines %v; want one by port25-sender naming queue id %s", held, trs[1].QueueID())
	}

	sub, err := mta.Dial(pf.SubmissionAddr)
	if err != nil {
		t.Fatal(err)
	}
	r, err := sub.Ehlo("laptop.example.test")
	mustOK(t, "EHLO", r, err)
	if r, err = sub.AuthPlain(alice, "secret"); err != nil || r.Code != 235 {
		t.Fatalf("AUTH: %v %v", r, err)
	}
	trs = sendN(t, sub, alice, 2)
	sub.Quit()
	wantTempfailAtMail(t, trs, 2, 2)
	lines := ruleLines(sl, "submission-user")
	if len(lines) != 1 || lines[0].Str("key") != "sasl_user:"+alice {
		t.Errorf("submission-user lines %v; want one for sasl_user:%s", lines, alice)
	}
	// Postfix and sluice agree on the protocol: no answer missing or
	// extra, no timeout.
	for _, l := range strings.Split(pf.Log(), "\n") {
		if strings.Contains(l, "milter") && (strings.Contains(l, "warning") || strings.Contains(l, "error")) {
			t.Errorf("postfix: %s", l)
		}
	}
}

// A Sendmail that sends no macros of its own accord gives sluice the
// listener ({daemon_name}, DAEMON_OPTIONS' Name=) at connect and the
// queue id (i) from MAIL FROM on: a rule that matches the listener
// refuses, and its log line names the queue id.
func TestSendmailMacrosAskedFor(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, policyConfig(`mode = "enforce"`, `
[[limit]]
name = "mta-sender"
count = "messages"
per = "sender"
rate = "1/1h"
match.listener = ["MTA"]
`))
	sm := mta.StartSendmail(t, mta.SendmailOptions{Milter: sl.Listen, NoMacros: true})
	const alice = "alice@example.test"
	c := sendmailSession(t, sm)
	trs := sendN(t, c, alice, 2)
	c.Quit()
	wantTempfailAtMail(t, trs, 2, 2)
	checkRuleLines(t, ruleLines(sl, "mta-sender"), 1, "127.0.0.1", alice, true, trs, [2]int{2, 2})
}
