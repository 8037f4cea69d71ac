package e2e

// SIGTERM during SMTP sessions with real Postfix and
// milter_default_action = tempfail. Sluice stops accepting, lets sessions
// finish until shutdown_timeout, cuts the rest, writes its snapshot and
// exits 0; every message either got 250 and reached the sink, or got a 4xx
// and goes through when retried after the restart.

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

func TestOpsShutdownDuringSession(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.NewSluice(t)
	snap := filepath.Join(sl.Dir, "counters.snap")
	// shutdown_timeout is a top-level key: it comes before the tables.
	config := `shutdown_timeout = "4s"
` + opsLimit("3/1h", `
[store]
snapshot = "`+snap+`"
`)
	sl.Start(config)
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen, DefaultAction: "tempfail"})

	// limited@ reaches its limit before the restart.
	c := session(t, pf.Addr, "192.0.2.1")
	trs := sendN(t, c, "limited@example.test", 4)
	wantTempfailAtMail(t, trs, 4, 4)
	c.Quit()
	accepted := 3

	// Two sessions in flight when SIGTERM comes: one finishes its
	// transaction in time, one stays open past shutdown_timeout before
	// its MAIL FROM. (A transaction sluice has already accepted at MAIL
	// FROM no longer needs it: Postfix finishes that one on its own.)
	quick := session(t, pf.Addr, "192.0.2.2")
	slow := session(t, pf.Addr, "192.0.2.3")
	r, err := quick.Mail("quick@example.test")
	mustOK(t, "MAIL FROM quick@example.test", r, err)
	r, err = quick.Rcpt(rcpt)
	mustOK(t, "RCPT TO", r, err)

	sl.Signal(syscall.SIGTERM)
	stopping := sl.WaitLog(10*time.Second, "the stopping line", func(l sluicetest.LogLine) bool { return l.Msg() == "stopping" })
	if stopping.Str("sessions") != "2" {
		t.Errorf("stopping with %s sessions in flight, want 2: %v", stopping.Str("sessions"), stopping)
	}

	// A new client while sluice drains: sluice no longer accepts, Postfix
	// answers 4xx (never 5xx) and the client will retry.
	late, first := trySession(t, pf.Addr, "192.0.2.4", "late@example.test")
	lateMsg := mta.NewMessage("late@example.test", rcpt, "late")
	if first.Code == 0 {
		tr, err := late.Send("late@example.test", []string{rcpt}, lateMsg)
		if err != nil {
			t.Fatal(err)
		}
		if tr.Accepted() {
			t.Errorf("a session opened after SIGTERM was accepted by a draining sluice: %v", tr)
		}
		_, first = tr.Refused()
	}
	t.Logf("session opened while sluice drains: %v", first)
	if !first.Temp() {
		t.Errorf("a session opened after SIGTERM got %v, want a 4xx so that the client retries", first)
	}
	late.Close()

	// quick finishes within shutdown_timeout: accepted.
	r, err = quick.Data(mta.NewMessage("quick@example.test", rcpt, "quick"))
	mustOK(t, "quick DATA", r, err)
	accepted++
	quick.Quit()

	// slow is cut off at shutdown_timeout; Postfix then answers 4xx.
	code := sl.Stop(20 * time.Second)
	if code != 0 {
		t.Errorf("sluice exited %d after SIGTERM, want 0", code)
	}
	slowMsg := mta.NewMessage("slow@example.test", rcpt, "slow")
	tr, err := slow.Send("slow@example.test", []string{rcpt}, slowMsg)
	if err != nil {
		t.Fatalf("slow transaction: %v", err)
	}
	_, r = tr.Refused()
	t.Logf("the session cut off at shutdown_timeout: %v", tr)
	if tr.Accepted() || !r.Temp() {
		t.Errorf("the session cut off at shutdown got %v, want a 4xx", tr)
	}
	slow.Close()
	if l := sl.Find(func(l sluicetest.LogLine) bool {
		return l.Msg() == "shutdown timeout reached; cut off sessions in flight"
	}); len(l) != 1 {
		t.Errorf("want one line about the session cut off at shutdown_timeout, got %v", l)
	}
	if l := sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "stopped" }); len(l) != 1 {
		t.Errorf("want sluice to log \"stopped\", got %v", l)
	}
	if fi, err := os.Stat(snap); err != nil || fi.Size() == 0 {
		t.Fatalf("snapshot after SIGTERM: %v", err)
	}

	// Restart: what got 4xx goes through on retry; limited@ is still at
	// its limit (the counters came back from the snapshot).
	sl.Start(config)
	c = session(t, pf.Addr, "192.0.2.3")
	for _, m := range []struct {
		from string
		msg  []byte
	}{{"slow@example.test", slowMsg}, {"late@example.test", lateMsg}} {
		tr, err := c.Send(m.from, []string{rcpt}, m.msg)
		if err != nil || !tr.Accepted() {
			t.Errorf("retry of %s after the restart: %v %v", m.from, tr, err)
			continue
		}
		accepted++
	}
	trs = sendN(t, c, "limited@example.test", 1)
	wantTempfailAtMail(t, trs, 1, 1)
	c.Quit()

	msgs := pf.WaitDelivered(accepted, time.Minute)
	ids := map[string]int{}
	for _, m := range msgs {
		ids[m.Header.Get("Message-Id")]++
	}
	if len(msgs) != accepted || len(ids) != accepted {
		t.Errorf("sink holds %d messages (%d distinct), want the %d accepted", len(msgs), len(ids), accepted)
	}
	for _, from := range []string{"quick@example.test", "slow@example.test", "late@example.test"} {
		if n := len(mta.FromSender(msgs, from)); n != 1 {
			t.Errorf("%d messages from %s at the sink, want 1", n, from)
		}
	}
}
