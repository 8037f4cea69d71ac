package e2e

// Under a policy that needs nothing past MAIL FROM (the built-in
// one), sluice accepts each message at MAIL FROM and the MTA leaves it out
// of the rest of the message — one round trip fewer per message, the end
// of message that Postfix's cleanup would make. Real Postfix and Sendmail
// must honour it and still deliver, and counting must go on.

import (
	"fmt"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

func acceptPolicy(maddr string) string {
	return fmt.Sprintf(`trusted = []

[metrics]
listen = %q

[[limit]]
name = "conn-per-ip"
count = "concurrent"
per = "client_ip"
max = 20

[[limit]]
name = "msgs-per-sender"
count = "messages"
per = "sender"
rate = "4/1h"
`, maddr)
}

// checkAcceptedAtMail sends 6 messages from one sender on one connection
// to addr: 4 accepted, the 5th and 6th refused at MAIL FROM; sluice saw 6
// MAIL FROMs and no end of message.
func checkAcceptedAtMail(t *testing.T, sl *sluicetest.Sluice, maddr, addr string, xclient bool) {
	t.Helper()
	c, err := mta.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	if xclient {
		if r, err := c.XClient("ADDR=192.0.2.90"); err != nil || !r.OK() {
			t.Fatalf("XCLIENT: %v %v", r, err)
		}
	}
	if r, err := c.Ehlo("client.example.net"); err != nil || !r.OK() {
		t.Fatalf("EHLO: %v %v", r, err)
	}
	trs := sendN(t, c, "early@example.test", 6)
	c.Quit()
	wantTempfailAtMail(t, trs, 5, 6)
	m := scrape(t, maddr)
	if got := m.value("sluice_stage_duration_seconds", "stage=mail"); got != 6 {
		t.Errorf("sluice saw %v MAIL FROMs, want 6", got)
	}
	if got := m.value("sluice_stage_duration_seconds", "stage=data"); got != 0 {
		t.Errorf("sluice saw %v ends of message, want 0: the MTA did not skip the rest of accepted messages", got)
	}
}

func TestPostfixAcceptsAtMail(t *testing.T) {
	testenv.Require(t)
	testAcceptsAtMail(t, func(milter string) (string, func(int) []mta.Message) {
		pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: milter})
		return pf.Addr, func(n int) []mta.Message { return pf.WaitDelivered(n, time.Minute) }
	}, true)
}

func TestSendmailAcceptsAtMail(t *testing.T) {
	testenv.Require(t)
	testAcceptsAtMail(t, func(milter string) (string, func(int) []mta.Message) {
		sm := mta.StartSendmail(t, mta.SendmailOptions{Milter: milter})
		return sm.Addr, func(n int) []mta.Message { return sm.WaitDelivered(n, time.Minute) }
	}, false)
}

// testAcceptsAtMail starts sluice and, with start, an MTA using it, then
// checks the early accept and the delivery of the 4 accepted messages.
func testAcceptsAtMail(t *testing.T, start func(milter string) (addr string, delivered func(int) []mta.Message), xclient bool) {
	maddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	sl := sluicetest.StartSluice(t, acceptPolicy(maddr))
	addr, delivered := start(sl.Listen)
	checkAcceptedAtMail(t, sl, maddr, addr, xclient)
	if msgs := delivered(4); len(msgs) != 4 {
		t.Errorf("delivered %d messages, want 4", len(msgs))
	}
}
