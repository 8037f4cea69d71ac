package e2e

// Faults: the counter snapshot's disk fills up or turns
// read-only. sluice must keep serving and counting, say so in its log and
// in /metrics, recover when the disk does, and keep the last good
// snapshot for the next start.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// TestFaultSnapshotDisk runs sluice with its snapshot on a small tmpfs of
// its own, fills that disk, then remounts it read-only, sending mail
// through Postfix all along: a sender limit of 3 an hour must keep
// refusing the 4th message whatever the disk does.
func TestFaultSnapshotDisk(t *testing.T) {
	testenv.Require(t)
	disk := mountTmpfs(t, "256k")
	snap := filepath.Join(disk, "counters.snap")
	maddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	config := fmt.Sprintf(`trusted = []

[store]
snapshot = %q
snapshot_interval = "1s"

[metrics]
listen = %q

[log]
level = "info"

[[limit]]
name = "msgs-per-sender"
count = "messages"
per = "sender"
rate = "3/1h"
action = "tempfail"
`, snap, maddr)
	sl := sluicetest.StartSluice(t, config)
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})

	// sendFour sends four messages from sender and checks that three
	// pass and the fourth meets the limit: sluice is serving and counting.
	sendFour := func(when, sender string) {
		t.Helper()
		c := session(t, pf.Addr, "192.0.2.80")
		trs := sendN(t, c, sender, 4)
		c.Quit()
		wantTempfailAtMail(t, trs, 4, 4)
		if t.Failed() {
			t.Fatalf("%s: sluice did not serve and count as it should", when)
		}
	}
	failing := func() float64 { return scrape(t, maddr).value("sluice_snapshot_write_failing") }
	waitMetric := func(what string, want float64) {
		t.Helper()
		if err := pollFor(15*time.Second, func() bool { return failing() == want }); err != nil {
			t.Fatalf("%s: sluice_snapshot_write_failing is %v, want %v", what, failing(), want)
		}
	}

	sendFour("healthy disk", "before@example.test")
	waitMetric("healthy disk", 0)
	if err := pollFor(15*time.Second, func() bool { _, err := os.Stat(snap); return err == nil }); err != nil {
		t.Fatalf("no snapshot written to %s", snap)
	}

	// A full disk.
	from := len(sl.Logs())
	filler := filepath.Join(disk, "filler")
	fillDisk(t, filler)
	waitMetric("full disk", 1)
	line := waitLogFrom(t, sl, from, "snapshot write error on a full disk", func(l sluicetest.LogLine) bool {
		return strings.Contains(l.Msg(), "snapshot not written") && strings.Contains(l.Str("error"), "no space left")
	})
	t.Logf("full disk: sluice logged: %s", line)
	sendFour("full disk", "full@example.test")
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitMetric("disk freed", 0)

	// A read-only disk.
	from = len(sl.Logs())
	remount(t, disk, "ro")
	waitMetric("read-only disk", 1)
	line = waitLogFrom(t, sl, from, "snapshot write error on a read-only disk", func(l sluicetest.LogLine) bool {
		return strings.Contains(l.Msg(), "snapshot not written") && strings.Contains(l.Str("error"), "read-only")
	})
	t.Logf("read-only disk: sluice logged: %s", line)
	sendFour("read-only disk", "ro@example.test")
	remount(t, disk, "rw")
	waitMetric("disk writable again", 0)

	// The snapshot written at shutdown carries the counts into the next
	// start: the senders already at their limit stay refused.
	if code := sl.Stop(20 * time.Second); code != 0 {
		t.Fatalf("sluice exited with %d", code)
	}
	from = len(sl.Logs())
	sl.Start(config)
	loaded := waitLogFrom(t, sl, from, "the snapshot loaded", func(l sluicetest.LogLine) bool { return l.Msg() == "counter snapshot loaded" })
	t.Logf("after restart: %s", loaded)
	for _, sender := range []string{"before@example.test", "full@example.test", "ro@example.test"} {
		c := session(t, pf.Addr, "192.0.2.80")
		trs := sendN(t, c, sender, 1)
		c.Quit()
		if stage, r := trs[0].Refused(); stage != "MAIL" || r.Code != 451 {
			t.Errorf("after restart, %s: %v; want 451 at MAIL (its count was lost)", sender, trs[0])
		}
	}
}

// waitLogFrom waits for a log line that matches among those printed
// after the first from lines.
func waitLogFrom(t *testing.T, sl *sluicetest.Sluice, from int, what string, match func(sluicetest.LogLine) bool) sluicetest.LogLine {
	t.Helper()
	var found sluicetest.LogLine
	err := pollFor(15*time.Second, func() bool {
		logs := sl.Logs()
		for _, l := range logs[min(from, len(logs)):] {
			if match(l) {
				found = l
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatalf("sluice did not log %s", what)
	}
	return found
}

// mountTmpfs mounts a tmpfs of the given size on a new directory and
// unmounts it when the test ends. It needs root, as ./test/run has.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := testenv.Dir(t, "disk")
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0755", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs for the snapshot (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

func remount(t *testing.T, dir, mode string) {
	t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,"+mode, dir).CombinedOutput(); err != nil {
		t.Fatalf("remount %s %s: %v: %s", dir, mode, err, out)
	}
}

// fillDisk writes path until the file system is full.
func fillDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatalf("fill %s: %v", path, err)
		}
	}
}
