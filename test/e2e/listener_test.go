package e2e

import (
	"fmt"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// On Postfix's port 25 as master.cf.dist has it, {daemon_name} is
// $myhostname, not "smtpd": a rule with match.listener = ["smtpd"] never
// applies (15 of 15 messages pass its limit of 10). sluice says so once,
// after 100 sessions, naming the rule and the name Postfix did send.
func TestPostfixListenerNameNeverSent(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, `trusted = []

[[limit]]
name = "port25"
count = "messages"
per = "client_ip"
rate = "10/1h"
match.listener = ["smtpd"]
`)
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen, UnnamedListener: true})
	c := session(t, pf.Addr, "192.0.2.8")
	trs := sendN(t, c, "alice@example.test", 15)
	c.Quit()
	if n := countAccepted(trs); n != 15 {
		t.Errorf("%d of 15 accepted; the rule cannot apply", n)
	}
	for i := range 100 {
		c, err := mta.Dial(pf.Addr)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := c.Ehlo(fmt.Sprintf("client%d.example.net", i)); err != nil || !r.OK() {
			t.Fatalf("session %d: %v %v", i, r, err)
		}
		c.Quit()
	}
	l := sl.WaitLog(20*time.Second, "the unseen listener warning", func(l sluicetest.LogLine) bool {
		return l.Str("level") == "warn" && l.Str("listener") == "smtpd"
	})
	t.Logf("sluice: %v", l)
	if fmt.Sprint(l["seen"]) != "[mx.example.test]" || fmt.Sprint(l["rules"]) != "[port25]" {
		t.Errorf("warning %v; want rules [port25] and seen [mx.example.test]", l)
	}
	if n := len(sl.Find(func(l sluicetest.LogLine) bool { return l.Str("listener") == "smtpd" })); n != 1 {
		t.Errorf("%d warnings, want one", n)
	}
}
