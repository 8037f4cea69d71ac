package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// Distinct recipient domains and a restriction with real Sendmail (which
// has no SMTP AUTH here: the key is the sender): the third domain is
// refused and restricts the sender; its next message is quarantined
// (Sendmail's hold) and stays in the queue; release names its queue id;
// afterwards a message to a domain already counted is delivered.
func TestOutboundRestrictSendmail(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.NewSluice(t)
	sock := filepath.Join(sl.Dir, "admin.sock")
	sl.Start(limitsConfig(fmt.Sprintf(`[[limit]]
name = "domains"
count = "distinct"
of = "rcpt_domain"
per = "sender"
rate = "2/1h"
restrict_for = "1h"

[admin]
socket = %q
`, sock)))
	sm := mta.StartSendmail(t, mta.SendmailOptions{Milter: sl.Listen})
	c := sendmailSession(t, sm)
	from := "script@example.test"
	tr, err := c.Send(from, []string{"a@one.example", "b@two.example", "c@three.example"}, mta.NewMessage(from, "a@one.example", "first"))
	if err != nil || rcptCodes(tr) != "250 250 451" || !tr.Accepted() {
		t.Fatalf("the crossing: %v %v", tr, err)
	}
	tr, err = c.Send(from, []string{"a@one.example"}, mta.NewMessage(from, "a@one.example", "held"))
	if err != nil || !tr.Accepted() {
		t.Fatalf("the restricted sender's next message is accepted (and held): %v %v", tr, err)
	}
	heldID := tr.QueueID()
	out := cliOn(t, sock, 0, "restricted")
	if !strings.Contains(out, "sender:script@example.test") || !strings.Contains(out, "3 (limit 2/1h)") {
		t.Errorf("restricted:\n%s", out)
	}
	// Sendmail keeps the quarantined envelope in its queue as an hf file
	// with a "q<reason>" line.
	hf := filepath.Join(sm.Dir, "queue", "hf"+heldID)
	if err := pollFor(15*time.Second, func() bool {
		b, err := os.ReadFile(hf)
		return err == nil && strings.Contains(string(b), "\nqsluice: domains crossed by sender:script@example.test")
	}); err != nil {
		entries, _ := os.ReadDir(filepath.Join(sm.Dir, "queue"))
		t.Fatalf("held message %s is not quarantined: %v (queue %v)", heldID, err, entries)
	}
	out = cliOn(t, sock, 0, "release", "sender:script@example.test")
	if !strings.Contains(out, heldID) || !strings.Contains(out, `sendmail -Q -qI"$id"`) {
		t.Errorf("release does not name the held message %s:\n%s", heldID, out)
	}
	tr, err = c.Send(from, []string{"x@two.example"}, mta.NewMessage(from, "x@two.example", "after release"))
	if err != nil || !tr.Accepted() {
		t.Fatalf("after release: %v %v", tr, err)
	}
	c.Quit()
	if err := pollFor(time.Minute, func() bool { return sm.Sink.Count() == 2 }); err != nil {
		t.Errorf("sink has %d messages, want 2 (the first and the one after release): %v", sm.Sink.Count(), err)
	}
}
