package e2e

// A hostile snapshot path: whatever is planted where sluice keeps its
// counter snapshot, the real binary neither hangs on it, nor reads it,
// nor replaces it; `sluice check` refuses the same paths as serve.

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// snapshotConfig is a config body whose [store] snapshot is path, on line
// snapshotLine of the file sluicetest.Sluice writes (after its listen line).
func snapshotConfig(path string) string {
	return `trusted = []

[store]
snapshot = "` + path + `"
snapshot_interval = "1s"
`
}

const snapshotLine = 5

// pathState is a path's type, and its content or link target.
func pathState(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	state := fi.Mode().Type().String()
	switch {
	case fi.Mode().IsRegular():
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		state += " " + string(b)
	case fi.Mode()&os.ModeSymlink != 0:
		target, _ := os.Readlink(path)
		state += " -> " + target
	}
	return state
}

// TestSnapshotPathRefused plants a foreign file, a FIFO, a symbolic link
// and a directory at the snapshot path: `sluice check` exits 1 naming the
// config line and the path, `sluice serve` exits 1 at once (a FIFO made
// the old one wait forever) with an error naming the path, and the thing
// at the path is left as it was. Once the path is cleared, both accept it.
func TestSnapshotPathRefused(t *testing.T) {
	testenv.Require(t)
	foreign := "# /etc/aliases\npostmaster: root\n"
	for _, c := range []struct {
		name string
		make func(t *testing.T, path string)
		want string
	}{
		{"foreign file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte(foreign), 0o644); err != nil {
				t.Fatal(err)
			}
		}, "a file of other content"},
		{"fifo", func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "a named pipe"},
		{"symlink", func(t *testing.T, path string) {
			target := filepath.Join(t.TempDir(), "aliases")
			if err := os.WriteFile(target, []byte(foreign), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}, "a symbolic link"},
		{"directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "a directory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sl := sluicetest.NewSluice(t)
			snap := filepath.Join(sl.Dir, "counters.snap")
			c.make(t, snap)
			before := pathState(t, snap)
			config := sl.WriteConfig(snapshotConfig(snap))

			res := sluicetest.RunSluice(t, "check", "-config", config)
			t.Logf("sluice check (exit %d): %s%s", res.Code, res.Stdout, res.Stderr)
			at := config + ":" + strconv.Itoa(snapshotLine) + ": store.snapshot: " + snap + " is " + c.want
			if res.Code != 1 || !strings.Contains(res.Stderr, at) {
				t.Errorf("check: exit %d, stderr %q; want exit 1 and %q", res.Code, res.Stderr, at)
			}

			res = sluicetest.RunSluice(t, "serve", "-config", config)
			t.Logf("sluice serve (exit %d): %s%s", res.Code, res.Stdout, res.Stderr)
			if res.Code != 1 || !strings.Contains(res.Stdout, "sluice stopped") || !strings.Contains(res.Stdout, snap+" is "+c.want) {
				t.Errorf("serve: exit %d, output %q; want exit 1 and an error naming %s", res.Code, res.Stdout, snap)
			}
			if after := pathState(t, snap); after != before {
				t.Errorf("the snapshot path changed: was %q, now %q", before, after)
			}

			if err := os.RemoveAll(snap); err != nil {
				t.Fatal(err)
			}
			if res := sluicetest.RunSluice(t, "check", "-config", config); res.Code != 0 {
				t.Errorf("check with the path cleared: exit %d: %s", res.Code, res.Stderr)
			}
		})
	}
}

// TestSnapshotTempLinkNotFollowed plants a symbolic link where the old
// sluice wrote its temporary snapshot (<snapshot>.tmp), pointing at a file
// it must not touch: sluice writes its snapshots all the same, every
// second and at stop, and the linked file and the link are unchanged.
// The next start loads the snapshot.
func TestSnapshotTempLinkNotFollowed(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.NewSluice(t)
	snap := filepath.Join(sl.Dir, "counters.snap")
	victim := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(victim, []byte("root:*:19000:0:99999:7:::\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, snap+".tmp"); err != nil {
		t.Fatal(err)
	}
	victimBefore, linkBefore := pathState(t, victim), pathState(t, snap+".tmp")

	sl.Start(snapshotConfig(snap))
	if err := pollFor(15*time.Second, func() bool { _, err := os.Stat(snap); return err == nil }); err != nil {
		t.Fatalf("no snapshot written to %s", snap)
	}
	if code := sl.Stop(20 * time.Second); code != 0 {
		t.Fatalf("sluice exited with %d", code)
	}
	if after := pathState(t, victim); after != victimBefore {
		t.Errorf("the file behind the planted link changed: was %q, now %q", victimBefore, after)
	}
	if after := pathState(t, snap+".tmp"); after != linkBefore {
		t.Errorf("the planted link changed: was %q, now %q", linkBefore, after)
	}
	if tmps, _ := filepath.Glob(snap + ".*.tmp"); len(tmps) != 0 {
		t.Errorf("temporary files left: %v", tmps)
	}

	from := len(sl.Logs())
	sl.Start(snapshotConfig(snap))
	line := waitLogFrom(t, sl, from, "the snapshot loaded", func(l sluicetest.LogLine) bool { return l.Msg() == "counter snapshot loaded" })
	t.Logf("after restart: %s", line)
}
