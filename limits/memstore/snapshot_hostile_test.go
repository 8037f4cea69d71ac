//go:build unix

package memstore

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"sluice/limits/counter"
	"sluice/limits/counter/countertest"
)

// fileState is what a test needs to tell that a path was left alone: its
// type, its inode, and its content or link target.
type fileState struct {
	mode   fs.FileMode
	ino    uint64
	data   string
	target string
}

func stateOf(t *testing.T, path string) fileState {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	st := fileState{mode: fi.Mode().Type(), ino: fi.Sys().(*syscall.Stat_t).Ino}
	switch {
	case fi.Mode().IsRegular():
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		st.data = string(b)
	case fi.Mode()&fs.ModeSymlink != 0:
		if st.target, err = os.Readlink(path); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func sameState(t *testing.T, what, path string, want fileState) {
	t.Helper()
	if got := stateOf(t, path); got != want {
		t.Errorf("%s: %s changed: was %v inode %d (%d bytes, link %q), now %v inode %d (%d bytes, link %q)",
			what, path, want.mode, want.ino, len(want.data), want.target, got.mode, got.ino, len(got.data), got.target)
	}
}

// newWithin runs New and fails t if it has not returned within a minute,
// calling unblock to release it.
func newWithin(t *testing.T, cfg Config, log *zap.Logger, unblock func()) (*Store, error) {
	t.Helper()
	type result struct {
		s   *Store
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := New(cfg, log, WithClock(countertest.NewClock().Now))
		done <- result{s, err}
	}()
	select {
	case r := <-done:
		return r.s, r.err
	case <-time.After(time.Minute):
		t.Errorf("New did not return within a minute")
		if unblock != nil {
			unblock()
		}
		r := <-done
		return r.s, r.err
	}
}

// A symbolic link planted where a predictable temporary file would go
// leaves its target untouched: the write neither follows it nor removes it.
func TestSnapshotTempSymlinkNotFollowed(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "counters.snap")
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, path+".tmp"); err != nil {
		t.Fatal(err)
	}
	before, link := stateOf(t, victim), stateOf(t, path+".tmp")

	clock := countertest.NewClock()
	s := newTestStore(t, Config{Snapshot: path}, clock.Now)
	fill(t, s, clock)
	if err := s.writeSnapshot(); err != nil {
		t.Fatalf("write beside a planted link: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close beside a planted link: %v", err)
	}
	sameState(t, "the link's target", victim, before)
	sameState(t, "the planted link", path+".tmp", link)
	if n := keysIn(t, path); n != 3 {
		t.Errorf("snapshot holds %d keys, want 3", n)
	}
}

// Whatever sits at the snapshot path and is not a regular file holding a
// sluice snapshot makes the store refuse to start, with an error naming
// the path and what is there, and is never read nor replaced.
func TestSnapshotPathNotASnapshot(t *testing.T) {
	foreign := "# sluice configuration\nlisten = \"inet:127.0.0.1:8890\"\n"
	cases := []struct {
		name    string
		make    func(t *testing.T, path string) (unblock func())
		want    string
		asRoot  bool
		cleanup func(path string)
	}{
		{name: "fifo", want: "named pipe", make: func(t *testing.T, path string) func() {
			if err := syscall.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
			return func() {
				// A writer lets a blocked open of the reading end go on.
				if f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					f.Close()
				}
			}
		}},
		{name: "directory", want: "directory", make: func(t *testing.T, path string) func() {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
		{name: "char device", want: "device", asRoot: true, make: func(t *testing.T, path string) func() {
			// The numbers of /dev/null: harmless if written.
			if err := syscall.Mknod(path, syscall.S_IFCHR|0o600, 1<<8|3); err != nil {
				t.Fatalf("mknod as root: %v", err)
			}
			return nil
		}},
		{name: "socket", want: "socket", make: func(t *testing.T, path string) func() {
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			l.(*net.UnixListener).SetUnlinkOnClose(false)
			t.Cleanup(func() { l.Close() })
			return nil
		}},
		{name: "symlink to a snapshot", want: "symbolic link", make: func(t *testing.T, path string) func() {
			target := filepath.Join(t.TempDir(), "real.snap")
			s := newTestStore(t, Config{Snapshot: target}, countertest.NewClock().Now)
			take(t, s, countertest.Rate("k", 1, time.Hour, 1))
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
		{name: "symlink to a foreign file", want: "symbolic link", make: func(t *testing.T, path string) func() {
			target := filepath.Join(t.TempDir(), "passwd")
			if err := os.WriteFile(target, []byte(foreign), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
		{name: "dangling symlink", want: "symbolic link", make: func(t *testing.T, path string) func() {
			if err := os.Symlink(filepath.Join(t.TempDir(), "created-by-sluice"), path); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
		{name: "foreign file", want: "not a sluice counter snapshot", make: func(t *testing.T, path string) func() {
			if err := os.WriteFile(path, []byte(foreign), 0o644); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
		{name: "gzip file", want: "not a sluice counter snapshot", make: func(t *testing.T, path string) func() {
			if err := os.WriteFile(path, []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3}, 0o644); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
		{name: "one foreign byte", want: "not a sluice counter snapshot", make: func(t *testing.T, path string) func() {
			if err := os.WriteFile(path, []byte("\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.asRoot && os.Geteuid() != 0 {
				t.Skip("making a device file needs root (./test/run runs as root)")
			}
			path := filepath.Join(t.TempDir(), "counters.snap")
			unblock := c.make(t, path)
			before := stateOf(t, path)

			core, logs := observer.New(zapcore.InfoLevel)
			s, err := newWithin(t, Config{Snapshot: path}, zap.New(core), unblock)
			if err == nil {
				// What the unfixed store did: start, then replace the
				// path with its own file when it writes.
				take(t, s, countertest.Rate("k", 1, time.Hour, 1))
				s.Close()
				t.Errorf("New started over a %s at the snapshot path; logs: %v", c.name, logs.All())
			} else if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("New: %v; want an error naming %s and %q", err, path, c.want)
			}
			sameState(t, "refused snapshot path", path, before)
		})
	}
}

// An empty file at the path is a snapshot not written yet, and a file
// that starts as a snapshot and is damaged is sluice's own: both start
// with empty counters and are replaced by the next write.
func TestSnapshotPathEmptyOrDamagedIsReplaced(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty":             nil,
		"damaged":           append([]byte(snapMagic), 1, 0, 0xde, 0xad),
		"truncated magic":   []byte(snapMagic[:5]),
		"a newer version":   append([]byte(snapMagic), 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 'Z'),
		"bad record inside": append(append([]byte(snapMagic), 1, 0, 1, 2, 3, 4, 5, 6, 7, 8), '?'),
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "counters.snap")
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			clock := countertest.NewClock()
			s, err := New(Config{Snapshot: path}, zap.NewNop(), WithClock(clock.Now))
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if n := s.Len(); n != 0 {
				t.Errorf("%d keys loaded", n)
			}
			take(t, s, countertest.Rate("k", 1, time.Hour, 1))
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if n := keysIn(t, path); n != 1 {
				t.Errorf("written snapshot holds %d keys, want 1", n)
			}
		})
	}
}

// A path that turns into something else while sluice runs (a FIFO, a
// device, a foreign file, a link) is not replaced by the next write: the
// write fails like a full disk would, and works again once the path is
// cleared.
func TestSnapshotPathReplacedWhileRunning(t *testing.T) {
	for _, name := range []string{"fifo", "foreign file", "symlink", "char device"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "counters.snap")
			clock := countertest.NewClock()
			core, logs := observer.New(zapcore.InfoLevel)
			s, err := New(Config{Snapshot: path}, zap.New(core), WithClock(clock.Now))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			take(t, s, countertest.Rate("k", 1, time.Hour, 1))
			if err := s.writeSnapshot(); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			switch name {
			case "fifo":
				err = syscall.Mkfifo(path, 0o600)
			case "foreign file":
				err = os.WriteFile(path, []byte("not ours"), 0o644)
			case "symlink":
				err = os.Symlink(filepath.Join(dir, "elsewhere"), path)
			case "char device":
				if os.Geteuid() != 0 {
					t.Skip("making a device file needs root (./test/run runs as root)")
				}
				err = syscall.Mknod(path, syscall.S_IFCHR|0o600, 1<<8|3)
			}
			if err != nil {
				t.Fatal(err)
			}
			before := stateOf(t, path)
			if err := s.writeSnapshot(); err == nil || !strings.Contains(err.Error(), path) {
				t.Errorf("write over a %s: %v; want an error naming %s", name, err, path)
			}
			sameState(t, "snapshot path taken over", path, before)
			if _, serr := s.SnapshotStatus(); serr == nil {
				t.Errorf("status shows no error after a refused write")
			}
			if logs.FilterMessageSnippet("snapshot not written").Len() == 0 {
				t.Errorf("refused write not logged: %v", logs.All())
			}
			if tmps, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(tmps) != 0 {
				t.Errorf("temporary files left: %v", tmps)
			}
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if err := s.writeSnapshot(); err != nil {
				t.Errorf("write once the path is cleared: %v", err)
			}
		})
	}
}

// craftSeed is the hash seed of the snapshots craftSnapshot writes.
var craftSeed = hashSeed{0x736c75696365, 0x63726166746564}

// craftSnapshot writes a snapshot file of records and returns its size.
// With goodSum false its checksum is wrong, so that only the end of the
// file tells it from a good one.
func craftSnapshot(t *testing.T, path string, goodSum bool, records func(e *encoder)) int64 {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	e := &encoder{w: w, d: xxhash.New()}
	e.bytes([]byte(snapMagic))
	e.u16(snapVersion)
	e.u64(uint64(countertest.Start))
	e.u64(craftSeed.k0)
	e.u64(craftSeed.k1)
	records(e)
	e.u8(tagEnd)
	sum := e.d.Sum64()
	if !goodSum {
		sum++
	}
	e.u64(sum)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// entryRecords writes n live rate entries in blocks of the largest size.
func entryRecords(n int) func(e *encoder) {
	return func(e *encoder) {
		for i := 0; i < n; {
			k := min(n-i, maxBlock)
			e.u8(tagEntries)
			e.u32(uint32(k))
			for range k {
				i++
				e.u64(uint64(i)) // never 0, kind bit clear below 2^40
				e.u64(uint64(countertest.Start + int64(time.Hour)))
			}
		}
	}
}

// A crafted snapshot much larger than the store (millions of entries,
// exemptions or hot names, with a good or a bad checksum) is loaded in
// memory bounded by the store, not by the file: what the load allocates
// stays under an eighth of the file's size.
func TestSnapshotLoadMemoryBounded(t *testing.T) {
	n := 2_000_000
	if testing.Short() || raceEnabled {
		n = 500_000
	}
	until := uint64(countertest.Start + int64(24*time.Hour))
	cases := []struct {
		name    string
		goodSum bool
		records func(e *encoder)
	}{
		{"entries", true, entryRecords(n)},
		{"entries, bad checksum", false, entryRecords(n)},
		{"exemptions", true, func(e *encoder) {
			for i := range n / 2 {
				e.u8(tagAllow)
				e.u64(until)
				e.name(fmt.Sprintf("sender:%08d@example.org", i))
			}
		}},
		{"hot names", true, func(e *encoder) {
			pad := strings.Repeat("x", 200)
			for i := range n / 8 {
				name := fmt.Sprintf("sender:%08d%s", i, pad)
				e.u8(tagEntries)
				e.u32(1)
				e.u64(craftSeed.hash([]byte(name), counter.KindRate))
				e.u64(uint64(countertest.Start + int64(time.Hour)))
				e.u8(tagHot)
				e.u8(byte(counter.KindRate))
				e.u8(1)
				e.u64(uint64(time.Minute))
				e.u64(10)
				e.name(name)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "counters.snap")
			size := craftSnapshot(t, path, c.goodSum, c.records)
			clock := countertest.NewClock()

			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			s, err := New(Config{Snapshot: path, MaxKeys: 1000}, zap.NewNop(), WithClock(clock.Now))
			runtime.ReadMemStats(&after)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			allocated := after.TotalAlloc - before.TotalAlloc
			t.Logf("file %d bytes; the load allocated %d bytes", size, allocated)
			if allocated > uint64(size)/8 {
				t.Errorf("loading a %d-byte file allocated %d bytes, more than an eighth of it", size, allocated)
			}
			if l := s.Len(); l > 1000 {
				t.Errorf("%d keys in a store of max_keys 1000", l)
			}
			allows, _ := s.Allows(context.Background())
			if !c.goodSum && (s.Len() != 0 || len(allows) != 0) {
				t.Errorf("a snapshot with a bad checksum was loaded: %d keys, %d exemptions", s.Len(), len(allows))
			}
			if len(allows) > maxAllows {
				t.Errorf("%d exemptions loaded, more than the store keeps (%d)", len(allows), maxAllows)
			}
			places := 0
			for i := range s.shards {
				places += s.shards[i].hotN
			}
			if hot, _ := s.Hot(context.Background(), -1); len(hot) > places {
				t.Errorf("%d hot names loaded into %d places", len(hot), places)
			}
		})
	}
}

// CheckSnapshotPath, which `sluice check` calls, accepts what the store
// may read and replace and refuses the rest, without opening a FIFO or a
// device.
func TestCheckSnapshotPath(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.snap")
	s := newTestStore(t, Config{Snapshot: good}, countertest.NewClock().Now)
	take(t, s, countertest.Rate("k", 1, time.Hour, 1))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		want string // "" when accepted
	}{
		{"", ""},
		{filepath.Join(dir, "missing.snap"), ""},
		{filepath.Join(dir, "no-such-dir", "counters.snap"), ""},
		{write("empty.snap", nil), ""},
		{good, ""},
		{write("damaged.snap", []byte(snapMagic+"\x01\x00garbage")), ""},
		{write("cut.snap", []byte(snapMagic[:3])), ""},
		{fifo, "named pipe"},
		{dir, "directory"},
		{link, "symbolic link"},
		{write("sluice.toml", []byte("listen = \"unix:/run/sluice/sluice.sock\"\n")), "other content"},
	} {
		err := CheckSnapshotPath(c.path)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%q: %v, want it accepted", c.path, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path)):
			t.Errorf("%q: %v, want an error naming it and %q", c.path, err, c.want)
		}
	}
}

// Temporary files that a crash left beside the snapshot are removed at
// start; files and links that only look like them are not sluice's and
// stay.
func TestSnapshotStaleTempsRemoved(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "counters.snap")
	victim := filepath.Join(t.TempDir(), "victim")
	for name, data := range map[string]string{
		"counters.snap.123456.tmp": "left by a crash",
		"counters.snap.tmp":        "not a name sluice makes",
		"counters.snap.x1.tmp":     "nor this",
		"other.snap.1.tmp":         "another file's",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(victim, []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir, "counters.snap.777.tmp")); err != nil {
		t.Fatal(err)
	}
	s := newTestStore(t, Config{Snapshot: path}, countertest.NewClock().Now)
	defer s.Close()
	var left []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		left = append(left, e.Name())
	}
	want := []string{"counters.snap.777.tmp", "counters.snap.tmp", "counters.snap.x1.tmp", "other.snap.1.tmp"}
	if fmt.Sprint(left) != fmt.Sprint(want) {
		t.Errorf("files left: %v, want %v", left, want)
	}
	if b, _ := os.ReadFile(victim); string(b) != "kept" {
		t.Errorf("the link's target changed: %q", b)
	}
}

// The store keeps at most maxAllows exemptions, and a snapshot holding
// that many loads whole.
func TestAllowsBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "counters.snap")
	clock := countertest.NewClock()
	s := newTestStore(t, Config{Snapshot: path}, clock.Now)
	ctx := context.Background()
	until := time.Unix(0, clock.Now()).Add(time.Hour)
	for i := range maxAllows {
		if err := s.SetAllow(ctx, fmt.Sprint("sender:", i), until); err != nil {
			t.Fatalf("exemption %d: %v", i+1, err)
		}
	}
	if err := s.SetAllow(ctx, "sender:one-more", until); err == nil || !strings.Contains(err.Error(), fmt.Sprint(maxAllows)) {
		t.Errorf("exemption past the bound: %v, want an error naming %d", err, maxAllows)
	}
	if err := s.SetAllow(ctx, "sender:0", until.Add(time.Hour)); err != nil {
		t.Errorf("changing an exemption at the bound: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b := newTestStore(t, Config{Snapshot: path}, clock.Now)
	defer b.Close()
	if m, _ := b.Allows(ctx); len(m) != maxAllows {
		t.Errorf("%d exemptions loaded, want %d", len(m), maxAllows)
	}
	clock.Advance(2 * time.Hour) // all but sender:0 expire, making room
	if err := b.SetAllow(ctx, "sender:one-more", time.Unix(0, clock.Now()).Add(time.Hour)); err != nil {
		t.Errorf("exemption once others expired: %v", err)
	}
}

// A crafted snapshot whose keys crowd together in the table (each
// insertion would walk past every key before it, then evict from the
// crowd, or later look-ups would walk one long run) is refused after a
// bounded amount of work, instead of keeping start-up busy for minutes
// or leaving the table slow. A snapshot sluice wrote of a full store
// loads whole, far within those bounds.
func TestSnapshotLoadWorkBounded(t *testing.T) {
	n := 2_000_000
	if raceEnabled {
		n = 400_000
	}
	live := uint64(countertest.Start + int64(time.Hour))
	// The default store: 256 shards of 3,907 keys in 5,212 slots.
	const shards, slots = 256, 5212
	cases := []struct {
		name string
		hash func(i int) uint64
	}{
		// Shard i%256, low bits 1, 2, 3...: all at home slot 0.
		{"every shard crowded", func(i int) uint64 { return uint64(i%shards)<<56 | uint64(i/shards+1) }},
		// Shard 0, home slot 0.
		{"one shard crowded", func(i int) uint64 { return uint64(i + 1) }},
		// Shard 0, home slots 0, 1, 2...: one step each, one long run.
		{"one long run", func(i int) uint64 { return (uint64(i%slots)<<32+slots-1)/slots + 1 + uint64(i/slots)<<41 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "counters.snap")
			craftSnapshot(t, path, true, func(e *encoder) {
				for i := 0; i < n; {
					k := min(n-i, maxBlock)
					e.u8(tagEntries)
					e.u32(uint32(k))
					for range k {
						e.u64(c.hash(i))
						e.u64(live)
						i++
					}
				}
			})
			core, logs := observer.New(zapcore.InfoLevel)
			s, err := newWithin(t, Config{Snapshot: path}, zap.New(core), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if len(s.shards) != shards || len(s.shards[0].tab) != slots {
				t.Fatalf("%d shards of %d slots: the crafted hashes do not crowd", len(s.shards), len(s.shards[0].tab))
			}
			if l := s.Len(); l != 0 {
				t.Errorf("%d keys of a crowding snapshot loaded", l)
			}
			if s.seed == craftSeed {
				t.Errorf("the store kept the seed of a snapshot it refused")
			}
			if w := logs.FilterMessageSnippet("snapshot ignored").All(); len(w) != 1 || !strings.Contains(fmt.Sprint(w[0].ContextMap()["error"]), "crowd") {
				t.Errorf("logs: %v", logs.All())
			}
		})
	}

	// The control: a full store's own snapshot, its shards filled to
	// their limit by eviction.
	clock := countertest.NewClock()
	full := newTestStore(t, Config{MaxKeys: 100_000}, clock.Now)
	for i := range 150_000 {
		take(t, full, countertest.Rate(fmt.Sprint("sender:", i, "@example.org"), 1, time.Hour, 1))
	}
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	written := full.encodeSnapshot(w)
	w.Flush()
	full.Close()
	fresh := newTestStore(t, Config{MaxKeys: 100_000}, clock.Now)
	defer fresh.Close()
	_, got, err := fresh.loadFrom(bytes.NewReader(buf.Bytes()))
	if err != nil || got.kept != written || got.dropped != 0 {
		t.Fatalf("a full store's snapshot: %v, %d of %d keys kept, %d dropped", err, got.kept, written, got.dropped)
	}
	t.Logf("a full store's snapshot of %d keys: %.2f slots looked at per key (budget %d), longest run %d (bound %d)",
		written, float64(got.probes)/float64(written), probeBudget, fresh.longestRun(), maxRun)
	if got.probes > written*probeBudget/4 {
		t.Errorf("%d probes for %d keys: too close to the budget", got.probes, written)
	}
}
