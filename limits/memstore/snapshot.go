package memstore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	"go.uber.org/zap"

	"sluice/limits/counter"
)

// The snapshot file, all integers little-endian:
//
//	header  "sluiceCS" version:u16 written:i64
//	records tag:u8 then
//	  'E' n:u32 (1..65536) n × (hash:u64 tat:i64)   rate keys
//	  'H' kind:u8 denied:u8 interval:i64 burst:i64 len:u16 key  hot key names
//	  'A' until:i64 len:u16 key                       exemptions
//	  'Z' xxhash64 of every byte before it:u64, then end of file
//
// Concurrency slots are not written: the sessions that held them end with
// the process, so restoring them would leak slots no one will release.
const (
	snapMagic   = "sluiceCS"
	snapVersion = 1
	maxBlock    = 1 << 16
)

const (
	tagEntries = 'E'
	tagHot     = 'H'
	tagAllow   = 'A'
	tagEnd     = 'Z'
)

// fileSystem is what snapshot writes need from the OS, so a test can make
// any step fail as a full or read-only disk would.
type fileSystem interface {
	// CreateTemp creates a new file in dir, named by pattern as
	// os.CreateTemp does; it never opens an existing file or a link.
	CreateTemp(dir, pattern string) (file, error)
	Rename(from, to string) error
	Remove(name string) error
	SyncDir(dir string) error
}

type file interface {
	io.Writer
	Name() string
	Sync() error
	Close() error
}

type osFS struct{}

func (osFS) CreateTemp(dir, pattern string) (file, error) { return os.CreateTemp(dir, pattern) }
func (osFS) Rename(from, to string) error                 { return os.Rename(from, to) }
func (osFS) Remove(name string) error                     { return os.Remove(name) }
func (osFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

type snapshotter struct {
	fs  fileSystem
	mu  sync.Mutex // one write at a time; guards the buffers
	buf []entry
	hot []hotKey

	statusMu sync.Mutex
	last     time.Time // last successful write or load
	lastErr  error     // of the last write; nil after a success
}

// SnapshotStatus returns when the snapshot was last written (or loaded)
// and the error of the last write, nil if it succeeded.
func (s *Store) SnapshotStatus() (time.Time, error) {
	s.snap.statusMu.Lock()
	defer s.snap.statusMu.Unlock()
	return s.snap.last, s.snap.lastErr
}

// writeSnapshot writes the snapshot now. A failure, a panic included, is
// logged and kept for SnapshotStatus; the counters stay in memory and the
// next write retries.
func (s *Store) writeSnapshot() error {
	s.snap.mu.Lock()
	defer s.snap.mu.Unlock()
	start := time.Now()
	n, err := s.writeSnapshotFile()
	s.snap.statusMu.Lock()
	s.snap.lastErr = err
	if err == nil {
		s.snap.last = time.Now()
	}
	s.snap.statusMu.Unlock()
	if err != nil {
		s.log.Error("counter snapshot not written; counters are kept in memory and the write is retried",
			zap.String("path", s.cfg.Snapshot), zap.Error(err))
		return err
	}
	s.log.Debug("counter snapshot written", zap.String("path", s.cfg.Snapshot),
		zap.Int("keys", n), zap.Duration("took", time.Since(start)))
	return nil
}

// writeSnapshotFile writes a new temporary file beside the snapshot, syncs
// it and renames it over the old one, so a crash at any point leaves
// either the old snapshot or the new one. The temporary file's name is
// random and created exclusively, so nothing planted beside the snapshot
// is followed or truncated; and the rename replaces only what is
// sluice's own.
func (s *Store) writeSnapshotFile() (n int, err error) {
	path := s.cfg.Snapshot
	f, err := s.snap.fs.CreateTemp(filepath.Dir(path), tempPattern(path))
	if err != nil {
		return 0, fmt.Errorf("create a temporary file beside %s: %w", path, err)
	}
	tmp := f.Name()
	open, renamed := true, false
	defer func() {
		if open {
			f.Close()
		}
		if !renamed {
			s.snap.fs.Remove(tmp)
		}
	}()
	w := bufio.NewWriterSize(f, 64<<10)
	n = s.encodeSnapshot(w)
	if err := w.Flush(); err != nil {
		return 0, fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("sync %s: %w", tmp, err)
	}
	open = false
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("close %s: %w", tmp, err)
	}
	// The path was checked at start, but may have been taken over since.
	if err := CheckSnapshotPath(path); err != nil {
		return 0, err
	}
	if err := s.snap.fs.Rename(tmp, path); err != nil {
		return 0, fmt.Errorf("rename %s: %w", tmp, err)
	}
	renamed = true
	if err := s.snap.fs.SyncDir(filepath.Dir(path)); err != nil {
		// The new file is in place; only its durability across a power
		// loss is in doubt.
		return n, fmt.Errorf("sync directory of %s: %w", path, err)
	}
	return n, nil
}

// encoder writes the snapshot and hashes what it writes. Write errors stay
// in the bufio.Writer until Flush reports them.
type encoder struct {
	w   *bufio.Writer
	d   *xxhash.Digest
	buf [8]byte
}

func (e *encoder) bytes(b []byte) { e.w.Write(b); e.d.Write(b) }
func (e *encoder) u8(v byte)      { e.buf[0] = v; e.bytes(e.buf[:1]) }
func (e *encoder) u16(v uint16)   { binary.LittleEndian.PutUint16(e.buf[:], v); e.bytes(e.buf[:2]) }
func (e *encoder) u32(v uint32)   { binary.LittleEndian.PutUint32(e.buf[:], v); e.bytes(e.buf[:4]) }
func (e *encoder) u64(v uint64)   { binary.LittleEndian.PutUint64(e.buf[:], v); e.bytes(e.buf[:8]) }
func (e *encoder) name(s string)  { e.u16(uint16(len(s))); e.w.WriteString(s); e.d.WriteString(s) }

// maxName is the longest key name a snapshot keeps; longer hot names (a
// client could make some) are left out.
const maxName = 1<<16 - 1

// encodeSnapshot copies one shard at a time, so serving waits at most for
// one shard's copy, and returns the number of keys written.
func (s *Store) encodeSnapshot(w *bufio.Writer) int {
	e := &encoder{w: w, d: xxhash.New()}
	e.bytes([]byte(snapMagic))
	e.u16(snapVersion)
	e.u64(uint64(s.now()))
	total := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		now := s.now()
		buf, hot := s.snap.buf[:0], s.snap.hot[:0]
		for _, en := range sh.tab {
			if en.h != 0 && en.h&kindBit == 0 && !en.idle(now) {
				buf = append(buf, en)
			}
		}
		for _, hk := range sh.hot {
			if hk.name != "" && hk.kind == counter.KindRate && len(hk.name) <= maxName && sh.get(hk.h, now) != 0 {
				hot = append(hot, hk)
			}
		}
		sh.mu.Unlock()
		s.snap.buf, s.snap.hot = buf, hot
		for len(buf) > 0 {
			block := buf[:min(len(buf), maxBlock)]
			buf = buf[len(block):]
			e.u8(tagEntries)
			e.u32(uint32(len(block)))
			for _, en := range block {
				e.u64(en.h)
				e.u64(uint64(en.v))
			}
			total += len(block)
		}
		for _, r := range hot {
			e.u8(tagHot)
			e.u8(byte(r.kind))
			e.u8(boolByte(r.denied))
			e.u64(uint64(r.interval))
			e.u64(uint64(r.burst))
			e.name(r.name)
		}
	}
	for key, until := range s.allow.list(s.now()) {
		if len(key) <= maxName {
			e.u8(tagAllow)
			e.u64(uint64(until.UnixNano()))
			e.name(key)
		}
	}
	e.u8(tagEnd)
	binary.LittleEndian.PutUint64(e.buf[:], e.d.Sum64())
	w.Write(e.buf[:8])
	return total
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// snapshot is a decoded file, checked whole before any of it is used.
type snapshot struct {
	written int64
	entries []entry
	hot     []hotKey
	allows  map[string]int64 // key -> until, Unix ns
}

// decoder reads the snapshot and hashes what it reads; the first error
// sticks.
type decoder struct {
	r   *bufio.Reader
	d   *xxhash.Digest
	off int64
	err error
	buf [8]byte
}

func (d *decoder) bytes(b []byte) {
	if d.err != nil {
		clear(b)
		return
	}
	n, err := io.ReadFull(d.r, b)
	d.d.Write(b[:n])
	d.off += int64(n)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		d.err = fmt.Errorf("truncated at byte %d: %w", d.off, err)
	}
}

func (d *decoder) u8() byte    { d.bytes(d.buf[:1]); return d.buf[0] }
func (d *decoder) u16() uint16 { d.bytes(d.buf[:2]); return binary.LittleEndian.Uint16(d.buf[:]) }
func (d *decoder) u32() uint32 { d.bytes(d.buf[:4]); return binary.LittleEndian.Uint32(d.buf[:]) }
func (d *decoder) u64() uint64 { d.bytes(d.buf[:8]); return binary.LittleEndian.Uint64(d.buf[:]) }
func (d *decoder) i64() int64  { return int64(d.u64()) }
func (d *decoder) name() string {
	b := make([]byte, d.u16())
	d.bytes(b)
	if len(b) == 0 && d.err == nil {
		d.err = fmt.Errorf("empty key name at byte %d", d.off)
	}
	return string(b)
}

// fail records a content error unless an earlier one is there.
func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("at byte %d: %s", d.off, fmt.Sprintf(format, args...))
	}
}

func decodeSnapshot(r io.Reader) (*snapshot, error) {
	d := &decoder{r: bufio.NewReaderSize(r, 64<<10), d: xxhash.New()}
	var magic [len(snapMagic)]byte
	d.bytes(magic[:])
	if d.err != nil || string(magic[:]) != snapMagic {
		return nil, errors.New("not a sluice counter snapshot (bad magic)")
	}
	if v := d.u16(); d.err == nil && v != snapVersion {
		return nil, fmt.Errorf("snapshot version %d is not supported (want %d)", v, snapVersion)
	}
	snap := &snapshot{written: d.i64()}
	for d.err == nil {
		switch tag := d.u8(); {
		case d.err != nil:
		case tag == tagEntries:
			n := d.u32()
			if n == 0 || n > maxBlock {
				d.fail("entry block of %d", n)
			}
			for ; n > 0 && d.err == nil; n-- {
				e := entry{h: d.u64(), v: d.i64()}
				if e.h == 0 || e.h&kindBit != 0 || e.v < 0 || e.v > maxTAT {
					d.fail("invalid entry %x=%d", e.h, e.v)
				}
				snap.entries = append(snap.entries, e)
			}
		case tag == tagHot:
			var r hotKey
			r.kind = counter.Kind(d.u8())
			denied := d.u8()
			r.denied = denied == 1
			r.interval, r.burst = d.i64(), d.i64()
			r.name = d.name()
			if r.kind != counter.KindRate || denied > 1 || r.interval <= 0 || r.burst < 0 {
				d.fail("invalid hot key %q", r.name)
			}
			snap.hot = append(snap.hot, r)
		case tag == tagAllow:
			until := d.i64()
			key := d.name()
			if snap.allows == nil {
				snap.allows = make(map[string]int64)
			}
			snap.allows[key] = until
		case tag == tagEnd:
			want := d.d.Sum64()
			var sum [8]byte
			if _, err := io.ReadFull(d.r, sum[:]); err != nil {
				return nil, fmt.Errorf("truncated checksum: %w", err)
			}
			if got := binary.LittleEndian.Uint64(sum[:]); got != want {
				return nil, fmt.Errorf("checksum mismatch (file %016x, content %016x)", got, want)
			}
			if _, err := d.r.ReadByte(); err != io.EOF {
				return nil, errors.New("data after the end record")
			}
			return snap, nil
		default:
			d.fail("unknown record type %#x", tag)
		}
	}
	return nil, d.err
}

// loadSnapshot installs the snapshot file's counters, dropping keys that
// are idle by now. Nothing is installed unless the whole file checks out.
// It returns an error only for a path that holds something else than a
// snapshot, which the store must not start on (it would replace it);
// a damaged snapshot is logged and ignored.
func (s *Store) loadSnapshot() error {
	path := s.cfg.Snapshot
	log := s.log.With(zap.String("path", path))
	for _, name := range removeStaleTemps(path) {
		log.Info("removed a temporary file left by an interrupted snapshot write", zap.String("file", name))
	}
	f, err := openSnapshot(path)
	if ns := (*notSnapshotError)(nil); errors.As(err, &ns) {
		return err
	}
	if errors.Is(err, fs.ErrNotExist) {
		log.Info("no counter snapshot yet; starting with empty counters")
		return nil
	}
	if err != nil {
		log.Warn("counter snapshot ignored; starting with empty counters", zap.Error(err))
		return nil
	}
	snap, err := decodeSnapshot(f)
	f.Close()
	if err != nil {
		log.Warn("counter snapshot ignored; starting with empty counters", zap.Error(err))
		return nil
	}
	now := s.now()
	kept := 0
	for _, e := range snap.entries {
		if e.idle(now) {
			continue
		}
		sh := s.shard(e.h)
		sh.mu.Lock()
		sh.set(e.h, e.v, now)
		sh.mu.Unlock()
		kept++
	}
	for _, r := range snap.hot {
		h := hashKey([]byte(r.name), r.kind)
		sh := s.shard(h)
		sh.mu.Lock()
		if sh.get(h, now) != 0 && sh.findHot(h) < 0 {
			r.h, r.seen = h, now
			sh.addHot(r)
		}
		sh.mu.Unlock()
	}
	for key, until := range snap.allows {
		s.allow.set(key, time.Unix(0, until), now)
	}
	s.snap.statusMu.Lock()
	s.snap.last = time.Unix(0, snap.written)
	s.snap.statusMu.Unlock()
	log.Info("counter snapshot loaded", zap.Int("keys", kept),
		zap.Int("idle_dropped", len(snap.entries)-kept),
		zap.Duration("age", time.Duration(now-snap.written)))
	return nil
}
