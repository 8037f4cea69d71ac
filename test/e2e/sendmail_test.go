package e2e

// The per-sender limit, in enforce and in tag mode, with real Sendmail,
// sluice attached through INPUT_MAIL_FILTER. Sendmail has no XCLIENT: the client is
// 127.0.0.1, which is on sluice's default trusted list, so the configs
// here empty that list.

import (
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

func sendmailSession(t *testing.T, sm *mta.Sendmail) *mta.Client {
	t.Helper()
	c, err := mta.Dial(sm.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	mustOK(t, "greeting", c.Greeting, nil)
	r, err := c.Ehlo("client.example.net")
	mustOK(t, "EHLO", r, err)
	return c
}

// Enforce: 10 of 15 delivered, 5 refused with 451 4.7.1 at MAIL
// FROM; a second sender unaffected.
func TestSendmailSenderLimit(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, "trusted = []\n"+senderLimit("enforce", "10/1h"))
	sm := mta.StartSendmail(t, mta.SendmailOptions{Milter: sl.Listen})

	alice, carol := "alice@example.test", "carol@example.test"
	c := sendmailSession(t, sm)
	aliceTrs := sendN(t, c, alice, 15)
	wantTempfailAtMail(t, aliceTrs, 11, 15)
	c.Quit()

	c = sendmailSession(t, sm)
	trs := sendN(t, c, carol, 3)
	wantTempfailAtMail(t, trs, 0, -1)
	c.Quit()

	msgs := sm.WaitDelivered(13, time.Minute)
	if a, c := len(mta.FromSender(msgs, alice)), len(mta.FromSender(msgs, carol)); a != 10 || c != 3 || len(msgs) != 13 {
		t.Errorf("delivered: %d from %s, %d from %s, %d in all; want 10, 3, 13", a, alice, c, carol, len(msgs))
	}
	// Sendmail gives the queue id from MAIL FROM on: refusals name it.
	checkRuleLines(t, ruleLines(sl, "msgs-per-sender"), 5, "127.0.0.1", alice, true, aliceTrs, [2]int{11, 15})
}

// Tag mode: all 15 delivered, exactly 5 carry X-Sluice-Limit.
func TestSendmailSenderLimitTagMode(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, "trusted = []\n"+senderLimit("tag", "10/1h"))
	sm := mta.StartSendmail(t, mta.SendmailOptions{Milter: sl.Listen})

	alice := "alice@example.test"
	c := sendmailSession(t, sm)
	trs := sendN(t, c, alice, 15)
	wantTempfailAtMail(t, trs, 0, -1)
	c.Quit()

	msgs := sm.WaitDelivered(15, time.Minute)
	if len(msgs) != 15 {
		t.Errorf("delivered %d messages, want 15", len(msgs))
	}
	checkTags(t, msgs, alice, "msgs-per-sender", 11, 15)
	checkRuleLines(t, ruleLines(sl, "msgs-per-sender"), 5, "127.0.0.1", alice, true, trs, [2]int{11, 15})
}
