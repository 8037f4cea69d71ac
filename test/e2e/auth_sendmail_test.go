package e2e

// Sender checks with real Sendmail: the client is 127.0.0.1 (Sendmail has no
// XCLIENT), so the config empties the trusted list, and the test zone
// lets 127.0.0.1 send for spf-pass.example but not for spf-fail.example.

import (
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// An SPF fail is refused at MAIL FROM ([spf] fail = "reject"); a message
// whose sender passes is delivered with Authentication-Results and
// Received-SPF at the top of the header, the forged Authentication-Results
// gone and the other host's kept.
func TestSendmailAuth(t *testing.T) {
	testenv.Require(t)
	dns := authDNS(t)
	sl := sluicetest.StartSluice(t, authConfig(dns, "trusted = []", `fail = "reject"`, ""))
	sm := mta.StartSendmail(t, mta.SendmailOptions{Milter: sl.Listen})

	c := sendmailSession(t, sm)
	tr, err := c.Send(failSender, []string{rcpt}, mta.NewMessage(failSender, rcpt, "spf fail"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("spf fail: %v", tr)
	if stage, r := tr.Refused(); stage != "MAIL" || r.Code != 550 || len(r.Text) < 6 || r.Text[:6] != "5.7.23" {
		t.Errorf("SPF fail: %v; want 550 5.7.23 at MAIL FROM", tr)
	}
	refusalLine(t, sl, "spf", "127.0.0.1")

	var msg []byte
	for _, h := range forged {
		msg = append(msg, h+"\r\n"...)
	}
	msg = append(msg, mta.NewMessage(passSender, rcpt, "forged")...)
	tr, err = c.Send(passSender, []string{rcpt}, msg)
	if err != nil || !tr.Accepted() {
		t.Fatalf("forged: %v %v; want it accepted", tr, err)
	}
	c.Quit()

	fs := onlyMessage(t, sm.WaitDelivered(1, time.Minute))
	ourSPF(t, fs, "pass", passSender, "127.0.0.1")
	checkForgedGone(t, fs)
	wantAtTop(t, fs)
}
