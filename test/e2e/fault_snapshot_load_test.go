package e2e

// The counter snapshot's disk fills up and turns read-only while mail
// flows: serving goes on, the failure is logged once per write, and the
// first good snapshot once the disk is back holds everything, as a
// restart after SIGKILL shows.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// snapshotLoad sends one message a tick from a fresh sender, each limited
// to 1 an hour, until stopped: every one must be accepted, and each
// sender accepted is a counter the snapshot must keep.
type snapshotLoad struct {
	mu       sync.Mutex
	senders  []string
	failures []string
	stop     chan struct{}
	done     chan struct{}
}

func startSnapshotLoad(t *testing.T, addr string, every time.Duration) *snapshotLoad {
	t.Helper()
	l := &snapshotLoad{stop: make(chan struct{}), done: make(chan struct{})}
	c := session(t, addr, "192.0.2.81")
	go func() {
		defer close(l.done)
		defer c.Quit()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
			sender := fmt.Sprintf("load%d@example.test", i)
			tr, err := c.Send(sender, []string{rcpt}, mta.NewMessage(sender, rcpt, "load "+sender))
			l.mu.Lock()
			if err != nil || !tr.Accepted() {
				l.failures = append(l.failures, fmt.Sprintf("%s: %v %v", sender, tr, err))
			} else {
				l.senders = append(l.senders, sender)
			}
			l.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return l
}

func (l *snapshotLoad) count() (accepted, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.senders), len(l.failures)
}

// end stops the load and returns the senders accepted and the failures.
func (l *snapshotLoad) end() ([]string, []string) {
	close(l.stop)
	<-l.done
	return l.senders, l.failures
}

// TestFaultSnapshotDiskUnderLoad runs sluice with its snapshot on a small
// tmpfs of its own, written every second, while a message a tick flows
// through Postfix from a new sender each time. The disk fills up, then
// turns read-only, then comes back: no message is refused or slowed into
// an error, the failure is in /metrics and in the log at most once per
// interval (not once per message), and after the first good snapshot
// sluice is killed with SIGKILL (so no snapshot is written at exit): the
// restarted daemon refuses every sender counted before, those counted
// while the disk was full or read-only too.
func TestFaultSnapshotDiskUnderLoad(t *testing.T) {
	testenv.Require(t)
	const interval = time.Second
	disk := mountTmpfs(t, "256k")
	snap := filepath.Join(disk, "counters.snap")
	maddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	config := fmt.Sprintf(`trusted = []

[store]
snapshot = %q
snapshot_interval = %q

[metrics]
listen = %q

[log]
level = "info"

[[limit]]
name = "msgs-per-sender"
count = "messages"
per = "sender"
rate = "1/1h"
action = "tempfail"
`, snap, interval.String(), maddr)
	sl := sluicetest.StartSluice(t, config)
	// The check after the restart refuses every sender: no error limit.
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen,
		Main: map[string]string{"smtpd_error_sleep_time": "0", "smtpd_soft_error_limit": "100000", "smtpd_hard_error_limit": "100000"}})

	failing := func() float64 { return scrape(t, maddr).value("sluice_snapshot_write_failing") }
	waitMetric := func(what string, want float64) {
		t.Helper()
		if err := pollFor(15*time.Second, func() bool { return failing() == want }); err != nil {
			t.Fatalf("%s: sluice_snapshot_write_failing is %v, want %v", what, failing(), want)
		}
	}
	notWritten := func(from int) int {
		n := 0
		for _, l := range sl.Logs()[from:] {
			if strings.Contains(l.Msg(), "snapshot not written") {
				n++
			}
		}
		return n
	}
	var load *snapshotLoad
	// hold keeps the fault for d under load and checks that it was logged
	// at most once per interval.
	hold := func(what string, from int, d time.Duration) {
		t.Helper()
		start := time.Now()
		a0, _ := load.count()
		time.Sleep(d)
		a1, failed := load.count()
		lines, took := notWritten(from), time.Since(start)
		t.Logf("%s: %d messages accepted in %v, %d refused or failed; %d \"snapshot not written\" lines", what, a1-a0, took.Round(time.Millisecond), failed, lines)
		if a1-a0 < 10 {
			t.Errorf("%s: only %d messages went through in %v", what, a1-a0, took)
		}
		if most := int(took/interval) + 2; lines > most {
			t.Errorf("%s: %d log lines in %v, want at most one per %v write (%d)", what, lines, took, interval, most)
		}
	}

	load = startSnapshotLoad(t, pf.Addr, 20*time.Millisecond)
	waitMetric("healthy disk", 0)
	if err := pollFor(15*time.Second, func() bool { _, err := os.Stat(snap); return err == nil }); err != nil {
		t.Fatalf("no snapshot written to %s", snap)
	}

	// Full.
	from := len(sl.Logs())
	filler := filepath.Join(disk, "filler")
	fillDisk(t, filler)
	waitMetric("full disk", 1)
	waitLogFrom(t, sl, from, "snapshot write error on a full disk", func(l sluicetest.LogLine) bool {
		return strings.Contains(l.Msg(), "snapshot not written") && strings.Contains(l.Str("error"), "no space left")
	})
	hold("full disk", from, 4*time.Second)

	// Read-only, with the space back: still no write.
	from = len(sl.Logs())
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	remount(t, disk, "ro")
	waitLogFrom(t, sl, from, "snapshot write error on a read-only disk", func(l sluicetest.LogLine) bool {
		return strings.Contains(l.Msg(), "snapshot not written") && strings.Contains(l.Str("error"), "read-only")
	})
	if failing() != 1 {
		t.Errorf("read-only disk: sluice_snapshot_write_failing is %v, want 1", failing())
	}
	hold("read-only disk", from, 4*time.Second)

	// Writable: the load stops, and the first snapshot written after it
	// must hold every count.
	remount(t, disk, "rw")
	senders, failures := load.end()
	for _, f := range failures {
		t.Errorf("under load: %s", f)
	}
	stopped := time.Now()
	if err := pollFor(15*time.Second, func() bool {
		fi, err := os.Stat(snap)
		return err == nil && fi.ModTime().After(stopped) && failing() == 0
	}); err != nil {
		t.Fatalf("no good snapshot after the disk came back (failing %v)", failing())
	}
	sl.Kill()
	from = len(sl.Logs())
	sl.Start(config)
	loaded := waitLogFrom(t, sl, from, "the snapshot loaded", func(l sluicetest.LogLine) bool { return l.Msg() == "counter snapshot loaded" })
	t.Logf("restarted after SIGKILL: %s", loaded)

	// A session per ten senders: sluice closes a session after
	// hard_refusals (20) refusals.
	var c *mta.Client
	lost := 0
	for i, sender := range senders {
		if i%10 == 0 {
			if c != nil {
				c.Quit()
			}
			c = session(t, pf.Addr, "192.0.2.81")
		}
		tr, err := c.Send(sender, []string{rcpt}, mta.NewMessage(sender, rcpt, "again "+sender))
		if err != nil {
			t.Fatalf("%s after the restart: %v", sender, err)
		}
		if stage, r := tr.Refused(); stage != "MAIL" || r.Code != 451 || !strings.HasPrefix(r.Text, "4.7.1") {
			lost++
			if lost <= 5 {
				t.Errorf("after the restart, %s: %v; want 451 4.7.1 at MAIL FROM (its count was lost)", sender, tr)
			}
		}
	}
	if c != nil {
		c.Quit()
	}
	t.Logf("after the restart: %d of %d senders still at their limit", len(senders)-lost, len(senders))
	if lost > 0 {
		t.Errorf("%d of %d counts lost", lost, len(senders))
	}
}
