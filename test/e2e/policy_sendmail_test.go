package e2e

// hold with real Sendmail: the milter quarantine keeps sluice's reason
// with the message (Postfix drops it; see TestPolicyHold).

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

func TestPolicyHoldSendmail(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, policyConfig(`mode = "enforce"`, `
[[limit]]
name = "runaway"
count = "messages"
per = "sender"
rate = "2/1h"
action = "hold"
`))
	sm := mta.StartSendmail(t, mta.SendmailOptions{Milter: sl.Listen})
	const script = "cron@build.example.test"
	c := sendmailSession(t, sm)
	for i, tr := range sendN(t, c, script, 4) {
		if !tr.Accepted() {
			t.Errorf("message %d: %v; hold accepts", i+1, tr)
		}
	}
	c.Quit()

	// Quarantined envelopes are hf files holding a "q<reason>" line.
	queue := filepath.Join(sm.Dir, "queue")
	var reasons []string
	err := pollFor(30*time.Second, func() bool {
		reasons = reasons[:0]
		entries, _ := os.ReadDir(queue)
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), "hf") {
				continue
			}
			b, err := os.ReadFile(filepath.Join(queue, e.Name()))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(line, "q") {
					reasons = append(reasons, e.Name()+": "+line[1:])
				}
			}
		}
		return len(reasons) == 2 && sm.Sink.Count() == 2
	})
	for _, r := range reasons {
		t.Logf("quarantined %s", r)
	}
	if err != nil {
		t.Fatalf("%d quarantined, %d delivered; want 2 and 2", len(reasons), sm.Sink.Count())
	}
	for _, r := range reasons {
		if !strings.HasSuffix(r, ": sluice: runaway crossed by sender:"+script) {
			t.Errorf("quarantine reason %q", r)
		}
	}
	if lines := waitLogCount(t, sl, "held", 2, 10*time.Second); len(lines) != 2 {
		t.Errorf("sluice logged %d 'held' lines, want 2", len(lines))
	}
}
