package memstore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"sluice/conf"
	"sluice/guard"
	"sluice/limits/counter"
	"sluice/limits/counter/countertest"
)

// fill puts a known state into s: a full rate key, a half-full one, one
// that drains within a minute, a held slot and an exemption.
func fill(t *testing.T, s *Store, clock *countertest.Clock) {
	t.Helper()
	for range 11 { // the 11th is denied
		take(t, s, countertest.Rate("sender:full@example.org", 10, time.Hour, 10))
	}
	for range 6 {
		take(t, s, countertest.Rate("sender:some@example.org", 10, time.Hour, 10))
	}
	take(t, s, countertest.Rate("ip:192.0.2.1", 1, time.Minute, 1))
	take(t, s, countertest.Slots("conc:192.0.2.1", 3, "session-1"))
	if err := s.SetAllow(context.Background(), "sender:vip@example.org", time.Unix(0, clock.Now()).Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "counters.snap")
	clock := countertest.NewClock()
	a := newTestStore(t, Config{Snapshot: path}, clock.Now)
	fill(t, a, clock)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if at, err := a.SnapshotStatus(); err != nil || at.IsZero() {
		t.Errorf("status after Close: %v %v", at, err)
	}

	clock.Advance(2 * time.Minute) // a restart later: ip:192.0.2.1 has drained
	b := newTestStore(t, Config{Snapshot: path}, clock.Now)
	defer b.Close()
	if n := b.Len(); n != 2 {
		t.Errorf("Len after load = %d, want 2 (the two sender keys)", n)
	}
	full := countertest.Rate("sender:full@example.org", 10, time.Hour, 10)
	reqs := []counter.Request{full}
	take(t, b, reqs...)
	if reqs[0].Allowed || reqs[0].Level != 10 {
		t.Errorf("sender at its limit admitted after a restart: %+v", reqs[0])
	}
	// 6 units, 2 minutes later: 6h/10... one unit is 6 minutes: still 6.
	if l := peek(t, b, countertest.Rate("sender:some@example.org", 10, time.Hour, 10)); l != 6 {
		t.Errorf("some: level %d, want 6", l)
	}
	if l := peek(t, b, countertest.Slots("conc:192.0.2.1", 3, "x")); l != 0 {
		t.Errorf("a concurrency slot came back from the snapshot: %d", l)
	}
	allows, _ := b.Allows(context.Background())
	if len(allows) != 1 || allows["sender:vip@example.org"].UnixNano() != countertest.Start+int64(2*time.Hour) {
		t.Errorf("allows after load: %v", allows)
	}
	hot, _ := b.Hot(context.Background(), 10)
	if len(hot) != 2 || hot[0].Key != "sender:full@example.org" || hot[1].Key != "sender:some@example.org" {
		t.Errorf("hot after load: %+v", hot)
	}
	for key, denied := range map[string]bool{"sender:full@example.org": true, "sender:some@example.org": false} {
		h := b.seed.hash([]byte(key), counter.KindRate)
		sh := b.shard(h)
		if i := sh.findHot(h); i < 0 || sh.hot[i].denied != denied {
			t.Errorf("%s: hot entry %d, denied should be %v", key, i, denied)
		}
	}
}

// TestSnapshotKeepsLimitAcrossRestart: 10 messages at 10/1h, restart,
// the 11th is refused.
func TestSnapshotKeepsLimitAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "counters.snap")
	r := countertest.Rate("msgs:sender:alice@example.org", 10, time.Hour, 10)
	s, err := New(Config{Snapshot: path}, zap.NewNop()) // the wall clock, as in production
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		reqs := []counter.Request{r}
		take(t, s, reqs...)
		if !reqs[0].Allowed {
			t.Fatalf("message %d refused", i+1)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = New(Config{Snapshot: path}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	reqs := []counter.Request{r}
	take(t, s, reqs...)
	if reqs[0].Allowed {
		t.Errorf("11th message admitted after a restart")
	}
}

func TestSnapshotNoFileYet(t *testing.T) {
	path := filepath.Join(t.TempDir(), "counters.snap")
	core, logs := observer.New(zapcore.InfoLevel)
	s, err := New(Config{Snapshot: path}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if logs.FilterMessageSnippet("no counter snapshot yet").Len() != 1 {
		t.Errorf("logs: %v", logs.All())
	}
}

// TestSnapshotBadFiles: every damaged snapshot is logged with its path
// and the reason, and ignored whole. (Files that are not snapshots at all
// are refused: see TestSnapshotPathNotASnapshot.)
func TestSnapshotBadFiles(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.snap")
	clock := countertest.NewClock()
	a := newTestStore(t, Config{Snapshot: good}, clock.Now)
	fill(t, a, clock)
	for i := range 5000 {
		take(t, a, countertest.Rate(fmt.Sprint("many:", i), 1, time.Hour, 1))
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	valid, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}

	type bad struct {
		name   string
		data   []byte
		reason string
	}
	flip := func(off int) []byte {
		b := bytes.Clone(valid)
		b[off] ^= 0x40
		return b
	}
	const head = len(snapMagic) + 2 + 8 + 16 // magic, version, written, seed
	cases := []bad{
		{"future version", append([]byte(snapMagic), 3, 0, 0, 0, 0, 0, 0, 0, 0, 0), "version 3"},
		{"flipped byte in the seed", flip(head - 3), "checksum mismatch"},
		{"flipped byte in a hash", flip(head + 5 + 5), "checksum mismatch"},
		{"flipped byte in the middle", flip(len(valid) / 2), ""}, // checksum, or a tat out of range
		{"flipped byte in the checksum", flip(len(valid) - 1), "checksum mismatch"},
		{"flipped record tag", flip(head), "unknown record"},
		{"data after the end", append(bytes.Clone(valid), 0), "after the end"},
		{"huge block", append(bytes.Clone(valid[:head]), 'E', 0xff, 0xff, 0xff, 0x7f), "entry block"},
		{"huge block, version 1", append(append([]byte(snapMagic), 1, 0, 0, 0, 0, 0, 0, 0, 0, 0), 'E', 0xff, 0xff, 0xff, 0x7f), "entry block"},
	}
	// Every truncation: at each byte of the header and the first records,
	// then at spaced offsets through the file, and just before the end.
	for _, n := range []int{1, 7, 8, 9, 10, 17, 18, 19, 25, 26, 27, 33, head, head + 1, head + 4, head + 5, head + 12, head + 20, head + 21} {
		cases = append(cases, bad{fmt.Sprint("truncated at ", n), valid[:n], ""})
	}
	for n := head + 22; n < len(valid); n += len(valid)/50 + 1 {
		cases = append(cases, bad{fmt.Sprint("truncated at ", n), valid[:n], "truncated"})
	}
	cases = append(cases, bad{"truncated checksum", valid[:len(valid)-3], "truncated checksum"})
	cases = append(cases, bad{"checksum missing", valid[:len(valid)-8], "truncated"})

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "counters.snap")
			if err := os.WriteFile(path, c.data, 0o600); err != nil {
				t.Fatal(err)
			}
			core, logs := observer.New(zapcore.InfoLevel)
			s, err := New(Config{Snapshot: path, MaxKeys: 100_000}, zap.New(core), WithClock(clock.Now))
			if err != nil {
				t.Fatalf("New failed on a bad snapshot: %v", err)
			}
			defer s.Close()
			if n := s.Len(); n != 0 {
				t.Errorf("%d keys loaded from a bad snapshot", n)
			}
			if m, _ := s.Allows(context.Background()); len(m) != 0 {
				t.Errorf("exemptions loaded from a bad snapshot: %v", m)
			}
			if h, _ := s.Hot(context.Background(), 10); len(h) != 0 {
				t.Errorf("hot keys loaded from a bad snapshot: %v", h)
			}
			warn := logs.FilterMessageSnippet("snapshot ignored").All()
			if len(warn) != 1 {
				t.Fatalf("logs: %v", logs.All())
			}
			fields := warn[0].ContextMap()
			if fields["path"] != path || !strings.Contains(fmt.Sprint(fields["error"]), c.reason) {
				t.Errorf("log fields %v, want path %s and a reason with %q", fields, path, c.reason)
			}
		})
	}

	// The good file itself loads, so the cases above failed for their damage.
	s := newTestStore(t, Config{Snapshot: good}, clock.Now)
	defer s.Close()
	if n := s.Len(); n != 5003 {
		t.Errorf("good snapshot: Len %d, want 5003", n)
	}
}

// faultFS fails one step of the snapshot write, as a full or read-only
// disk would.
type faultFS struct {
	osFS
	step   string
	err    error
	panics atomic.Bool // a write panics, as a bug in the encoder would
}

type faultFile struct {
	file
	fs *faultFS
}

func (f *faultFS) CreateTemp(dir, pattern string) (file, error) {
	if f.step == "create" {
		return nil, &os.PathError{Op: "open", Path: filepath.Join(dir, pattern), Err: f.err}
	}
	fl, err := f.osFS.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &faultFile{fl, f}, nil
}

func (f *faultFS) Rename(from, to string) error {
	if f.step == "rename" {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: f.err}
	}
	return f.osFS.Rename(from, to)
}

func (f *faultFS) SyncDir(dir string) error {
	if f.step == "syncdir" {
		return f.err
	}
	return f.osFS.SyncDir(dir)
}

func (f *faultFile) Write(b []byte) (int, error) {
	if f.fs.panics.Load() {
		panic("snapshot writer bug")
	}
	if f.fs.step == "write" {
		return 0, f.fs.err
	}
	return f.file.Write(b)
}

func (f *faultFile) Sync() error {
	if f.fs.step == "sync" {
		return f.fs.err
	}
	return f.file.Sync()
}

func (f *faultFile) Close() error {
	err := f.file.Close()
	if f.fs.step == "close" {
		return f.fs.err
	}
	return err
}

func TestSnapshotWriteFailures(t *testing.T) {
	for _, step := range []string{"create", "write", "sync", "close", "rename", "syncdir"} {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "counters.snap")
			ffs := &faultFS{err: syscall.ENOSPC}
			core, logs := observer.New(zapcore.InfoLevel)
			clock := countertest.NewClock()
			s, err := New(Config{Snapshot: path}, zap.New(core), WithClock(clock.Now), withFS(ffs))
			if err != nil {
				t.Fatal(err)
			}
			take(t, s, countertest.Rate("first", 1, time.Hour, 1))
			if err := s.writeSnapshot(); err != nil {
				t.Fatalf("write without a fault: %v", err)
			}
			firstAt, _ := s.SnapshotStatus()

			// The disk fills up.
			ffs.step = step
			take(t, s, countertest.Rate("second", 1, time.Hour, 1))
			err = s.writeSnapshot()
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("write error %v, want ENOSPC", err)
			}
			at, serr := s.SnapshotStatus()
			if !errors.Is(serr, syscall.ENOSPC) || !at.Equal(firstAt) {
				t.Errorf("status %v %v, want the first write's time and ENOSPC", at, serr)
			}
			if e := logs.FilterMessageSnippet("snapshot not written").All(); len(e) != 1 || e[0].ContextMap()["path"] != path {
				t.Errorf("logs: %v", logs.All())
			}
			// Still serving.
			reqs := []counter.Request{countertest.Rate("third", 1, time.Hour, 1)}
			take(t, s, reqs...)
			if !reqs[0].Allowed {
				t.Errorf("store stopped serving after a failed write")
			}
			// No temporary file left behind, and until the rename the old
			// snapshot is intact.
			if tmps, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(tmps) != 0 {
				t.Errorf("temporary files left: %v", tmps)
			}
			if step != "syncdir" {
				if n := keysIn(t, path); n != 1 {
					t.Errorf("old snapshot damaged by the failed write: %d keys", n)
				}
			}

			// Space comes back: the next write succeeds.
			ffs.step = ""
			if err := s.Close(); err != nil {
				t.Fatalf("Close after the disk recovered: %v", err)
			}
			if _, err := s.SnapshotStatus(); err != nil {
				t.Errorf("status error after recovery: %v", err)
			}
			if n := keysIn(t, path); n != 3 {
				t.Errorf("snapshot after recovery has %d keys, want 3", n)
			}
		})
	}
}

// keysIn checks the snapshot at path and counts its keys.
func keysIn(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var n tally
	if _, err := readSnapshot(bufio.NewReader(f), &n); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return n.entries
}

func TestSnapshotUnwritableDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "counters.snap")
	core, logs := observer.New(zapcore.InfoLevel)
	s, err := New(Config{Snapshot: path}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	take(t, s, countertest.Rate("k", 1, time.Hour, 1))
	if err := s.Close(); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("Close: %v, want an error naming %s", err, path)
	}
	if logs.FilterMessageSnippet("snapshot not written").Len() != 1 {
		t.Errorf("logs: %v", logs.All())
	}
}

// TestSnapshotPeriodic waits for the background write. It asserts that
// the write happens, not how fast.
func TestSnapshotPeriodic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "counters.snap")
	s, err := New(Config{Snapshot: path, SnapshotInterval: 1e9}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	take(t, s, countertest.Rate("k", 1, time.Hour, 1))
	deadline := time.Now().Add(30 * time.Second)
	for {
		if at, _ := s.SnapshotStatus(); !at.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no snapshot written by the background loop")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := keysIn(t, path); n != 1 {
		t.Errorf("periodic snapshot holds %d keys, want 1", n)
	}
}

// A panic while the background loop writes the snapshot is recovered and
// counted: the write fails like a full disk would (logged, shown in the
// status), the store keeps serving, and the next write retries.
func TestSnapshotWritePanicRecovered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "counters.snap")
	ffs := &faultFS{}
	ffs.panics.Store(true)
	core, logs := observer.New(zapcore.InfoLevel)
	s, err := New(Config{Snapshot: path, SnapshotInterval: conf.Duration(time.Second)}, zap.New(core), withFS(ffs))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	before := panicsAt("memstore snapshot")
	take(t, s, countertest.Rate("k", 1, time.Hour, 1))
	waitStatus(t, s, "a failed write", func(_ time.Time, err error) bool {
		var pe *guard.PanicError
		return errors.As(err, &pe)
	})
	if panicsAt("memstore snapshot") == before {
		t.Errorf("the panic was not counted")
	}
	if logs.FilterMessageSnippet("snapshot not written").Len() == 0 {
		t.Errorf("the failed write was not logged: %v", logs.All())
	}
	reqs := []counter.Request{countertest.Rate("after", 1, time.Hour, 1)}
	take(t, s, reqs...)
	if !reqs[0].Allowed {
		t.Errorf("store stopped serving after a panic in the snapshot write")
	}
	ffs.panics.Store(false)
	waitStatus(t, s, "a write after the panic", func(at time.Time, err error) bool { return err == nil && !at.IsZero() })
	if n := keysIn(t, path); n != 2 {
		t.Errorf("snapshot after recovery holds %d keys, want 2", n)
	}
}

// waitStatus polls the snapshot status until ok holds, for at most 30s.
func waitStatus(t *testing.T, s *Store, what string, ok func(time.Time, error) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		at, err := s.SnapshotStatus()
		if ok(at, err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: status %v %v", what, at, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func panicsAt(where string) uint64 {
	for _, c := range guard.Counts() {
		if c.Where == where {
			return c.N
		}
	}
	return 0
}

// A snapshot of version 1, from before the table's hash had a seed, is
// still read. testdata/version1.snap was written by the store of that
// time at countertest.Start: sender:full at its limit of 10/1h and
// sender:some at 6, both named as hot keys; sender:cold at 2, not named;
// an exemption for sender:vip for two hours. The named keys keep their
// counts under the store's new seed, which the next write saves with
// them; the unnamed one starts empty, and the log says how many went.
func TestSnapshotVersion1(t *testing.T) {
	data, err := os.ReadFile("testdata/version1.snap")
	if err != nil {
		t.Fatal(err)
	}
	if v := binary.LittleEndian.Uint16(data[len(snapMagic):]); v != legacyVersion {
		t.Fatalf("testdata/version1.snap is of version %d", v)
	}
	path := filepath.Join(t.TempDir(), "counters.snap")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	clock := countertest.NewClock()
	clock.Advance(time.Minute)
	rule := func(who string) counter.Request {
		return countertest.Rate("sender:"+who+"@example.org", 10, time.Hour, 10)
	}
	check := func(s *Store) {
		t.Helper()
		for who, want := range map[string]int64{"full": 10, "some": 6, "cold": 0} {
			if l := peek(t, s, rule(who)); l != want {
				t.Errorf("sender:%s: level %d, want %d", who, l, want)
			}
		}
		if n := s.Len(); n != 2 {
			t.Errorf("%d keys, want 2", n)
		}
		hot, _ := s.Hot(context.Background(), 10)
		if len(hot) != 2 || hot[0].Key != "sender:full@example.org" || hot[1].Key != "sender:some@example.org" {
			t.Errorf("hot keys %+v", hot)
		}
		if allows, _ := s.Allows(context.Background()); len(allows) != 1 || allows["sender:vip@example.org"].IsZero() {
			t.Errorf("exemptions %v", allows)
		}
	}

	core, logs := observer.New(zapcore.InfoLevel)
	s, err := New(Config{Snapshot: path}, zap.New(core), WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	check(s)
	warn := logs.FilterMessageSnippet("version 1").All()
	if len(warn) != 1 || warn[0].ContextMap()["kept"] != int64(2) || warn[0].ContextMap()["unnamed_dropped"] != int64(1) {
		t.Errorf("logs: %v", logs.All())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	data, err = os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if v := binary.LittleEndian.Uint16(data[len(snapMagic):]); v != snapVersion {
		t.Errorf("rewritten as version %d, want %d", v, snapVersion)
	}
	b := newTestStore(t, Config{Snapshot: path}, clock.Now)
	defer b.Close()
	if b.seed != s.seed {
		t.Errorf("seed %x after a restart, want %x", b.seed, s.seed)
	}
	check(b)
}

// The snapshot holds the hash seed, so it is written readable by its
// owner only; one that others may read is loaded with a warning, and the
// next write makes it private again.
func TestSnapshotPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "counters.snap")
	clock := countertest.NewClock()
	a := newTestStore(t, Config{Snapshot: path}, clock.Now)
	take(t, a, rate("k"))
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	mode := func() os.FileMode {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}
	if m := mode(); m != 0o600 {
		t.Errorf("snapshot written with mode %v, want 0600", m)
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.WarnLevel)
	b, err := New(Config{Snapshot: path}, zap.New(core), WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	if w := logs.FilterMessageSnippet("other users").All(); len(w) != 1 || w[0].ContextMap()["mode"] != "-rw-r--r--" {
		t.Errorf("logs: %v", logs.All())
	}
	if b.Len() != 1 {
		t.Errorf("%d keys loaded, want 1", b.Len())
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if m := mode(); m != 0o600 {
		t.Errorf("snapshot rewritten with mode %v, want 0600", m)
	}
}
