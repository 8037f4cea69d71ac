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

	"sluice/guard"
	"sluice/limits/counter"
)

// The snapshot file, all integers little-endian:
//
//	header  "sluiceCS" version:u16 (2) written:i64 seed:u64 u64
//	records tag:u8 then
//	  'E' n:u32 (1..65536) n × (hash:u64 tat:i64)   rate keys
//	  'H' kind:u8 denied:u8 interval:i64 burst:i64 len:u16 key  hot key names
//	  'A' until:i64 len:u16 key                       exemptions
//	  'S', 'D', 'R', 'O'                              distinct sets, restrictions, overrides (snapext.go)
//	  'Z' xxhash64 of every byte before it:u64, then end of file
//
// The seed is the store's hash seed, which the hashes are keyed by: the
// file is as secret as the seed, and written readable by its owner only.
// Version 1 had no seed: its hashes are the unseeded xxhash64 of the keys
// (legacyHash).
//
// Concurrency slots are not written: the sessions that held them end with
// the process, so restoring them would leak slots no one will release.
const (
	snapMagic     = "sluiceCS"
	snapVersion   = 2
	legacyVersion = 1
	maxBlock      = 1 << 16
)

// legacyHash is what a version 1 snapshot's hashes are: anyone can
// compute it, which is why the store no longer keys its table by it.
func legacyHash(key []byte, k counter.Kind) uint64 { return withKind(xxhash.Sum64(key), k) }

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
	defer guard.RecoverErr(s.log, "memstore snapshot", &err)
	path := s.cfg.Snapshot
	f, err := s.snap.fs.CreateTemp(filepath.Dir(path), tempPattern(path))
	if err != nil {
		return 0, fmt.Errorf("create a temporary file beside %s: %w", path, err)
	}
	tmp := f.Name()
	open, renamed := true, false
	defer func() {
		// Also on a panic, before RecoverErr turns it into err.
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
	e.u64(s.seed.k0)
	e.u64(s.seed.k1)
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
	s.encodeExt(e)
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

// records receives a snapshot's records in file order as they are read
// and checked; an error it returns ends the reading. A name is only valid
// during the call.
type records interface {
	entry(e entry) error
	hot(r hotKey, name []byte) error
	allow(key []byte, until int64)
	extRecords
}

// tally counts a snapshot's keys, keeping nothing.
type tally struct{ entries int }

func (t *tally) entry(entry) error        { t.entries++; return nil }
func (t *tally) hot(hotKey, []byte) error { return nil }
func (t *tally) allow([]byte, int64)      {}

// header is what a snapshot says of itself: its version, when it was
// written, the seed of its hashes (none in version 1), and the checksum
// that ends it.
type header struct {
	version uint16
	written int64
	seed    hashSeed
	sum     uint64
}

// decoder reads the snapshot and hashes what it reads; the first error
// sticks. It allocates nothing per record: names go through one buffer.
type decoder struct {
	r     *bufio.Reader
	d     *xxhash.Digest
	off   int64
	err   error
	buf   [8]byte
	name  []byte
	chunk [256 * 16]byte // entries
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

// readName reads a length and a name into the decoder's buffer, which
// grows to the longest name read (at most maxName bytes).
func (d *decoder) readName() []byte {
	n := int(d.u16())
	if cap(d.name) < n {
		d.name = make([]byte, n, max(n, 256))
	}
	b := d.name[:n]
	d.bytes(b)
	if n == 0 && d.err == nil {
		d.err = fmt.Errorf("empty key name at byte %d", d.off)
	}
	return b
}

// entries reads a block of n entries, a chunk at a time: hashing and
// checking them field by field would make a load several times slower.
func (d *decoder) entries(n int, rec records) {
	for n > 0 && d.err == nil {
		b := d.chunk[:min(n, len(d.chunk)/16)*16]
		d.bytes(b)
		for i := 0; i < len(b) && d.err == nil; i += 16 {
			e := entry{h: binary.LittleEndian.Uint64(b[i:]), v: int64(binary.LittleEndian.Uint64(b[i+8:]))}
			if e.h == 0 || e.h&kindBit != 0 || e.v < 0 || e.v > maxTAT {
				d.err = fmt.Errorf("at byte %d: invalid entry %x=%d", d.off-int64(len(b)-i), e.h, e.v)
				break
			}
			d.err = rec.entry(e)
		}
		n -= len(b) / 16
	}
}

// fail records a content error unless an earlier one is there.
func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("at byte %d: %s", d.off, fmt.Sprintf(format, args...))
	}
}

// errEmpty is an empty snapshot file: one created and not written yet.
var errEmpty = errors.New("empty file")

// maxAllows bounds the exemptions a store keeps, and so a snapshot holds:
// they are set by hand, and each costs a map entry.
const maxAllows = 10_000

// A snapshot sluice writes never holds more hot names than hotKeys: each
// shard keeps hotKeys/shards of them (at least 8 of 256 shards).
const maxHotRecords = hotKeys

// readSnapshot checks the snapshot in br record by record, giving each
// record to rec as it goes, and returns its header once the checksum and
// the end of the file check out. rec may have seen records of a file that
// fails later: callers check a file whole (with a tally) before they use
// it. Memory use does not depend on the file: records are not kept here.
func readSnapshot(br *bufio.Reader, rec records) (header, error) {
	d := &decoder{r: br, d: xxhash.New()}
	var magic [len(snapMagic)]byte
	d.bytes(magic[:])
	switch {
	case d.off == 0 && errors.Is(d.err, io.ErrUnexpectedEOF):
		return header{}, errEmpty
	case string(magic[:d.off]) != snapMagic[:d.off]:
		return header{}, errors.New("not a sluice counter snapshot (bad magic)")
	case d.err != nil:
		return header{}, d.err
	}
	hd := header{version: d.u16()}
	if d.err == nil && hd.version != snapVersion && hd.version != legacyVersion {
		return header{}, fmt.Errorf("snapshot version %d is not supported (want %d or %d)", hd.version, legacyVersion, snapVersion)
	}
	hd.written = d.i64()
	if hd.version != legacyVersion {
		hd.seed = hashSeed{d.u64(), d.u64()}
	}
	hots, allows := 0, 0
	var ext extCounts
	for d.err == nil {
		switch tag := d.u8(); {
		case d.err != nil:
		case tag == tagEntries:
			n := int(d.u32())
			if n == 0 || n > maxBlock {
				d.fail("entry block of %d", n)
			}
			d.entries(n, rec)
		case tag == tagHot:
			var r hotKey
			r.kind = counter.Kind(d.u8())
			denied := d.u8()
			r.denied = denied == 1
			r.interval, r.burst = d.i64(), d.i64()
			name := d.readName()
			if r.kind != counter.KindRate || denied > 1 || r.interval <= 0 || r.burst < 0 {
				d.fail("invalid hot key %q", clip(name))
			}
			if hots++; hots > maxHotRecords {
				d.fail("more than %d hot key names", maxHotRecords)
			}
			if d.err == nil {
				d.err = rec.hot(r, name)
			}
		case tag == tagAllow:
			until := d.i64()
			key := d.readName()
			if allows++; allows > maxAllows {
				d.fail("more than %d exemptions", maxAllows)
			}
			if d.err == nil {
				rec.allow(key, until)
			}
		case isExtTag(tag):
			d.ext(tag, rec, &ext)
		case tag == tagEnd:
			hd.sum = d.d.Sum64()
			var sum [8]byte
			if _, err := io.ReadFull(d.r, sum[:]); err != nil {
				return header{}, fmt.Errorf("truncated checksum: %w", err)
			}
			if got := binary.LittleEndian.Uint64(sum[:]); got != hd.sum {
				return header{}, fmt.Errorf("checksum mismatch (file %016x, content %016x)", got, hd.sum)
			}
			if _, err := d.r.ReadByte(); err != io.EOF {
				return header{}, errors.New("data after the end record")
			}
			return hd, nil
		default:
			d.fail("unknown record type %#x", tag)
		}
	}
	return header{}, d.err
}

// clip keeps error messages short whatever name a file holds.
func clip(b []byte) string {
	const keep = 64
	if len(b) > keep {
		return string(b[:keep]) + "..."
	}
	return string(b)
}

// installer puts a checked snapshot's records into the store as they are
// read again. It does not evict: once a shard is full, the file's further
// keys for it are left out (a file written with a larger max_keys). And
// it bounds its work: the keys of a file are hashes, which a crafted file
// can make crowd into a few places of the table, where each insertion
// would walk past all the others (a 300 MB file took thirteen minutes
// to load). A snapshot sluice writes holds hashes spread evenly, which an
// insertion finds a place for in a few steps, so a load that needs more
// than probeBudget steps a key is not one, and is refused whole; so is
// one that leaves a run of occupied slots longer than maxRun, which
// every later look-up in it would walk.
type installer struct {
	s       *Store
	legacy  bool // the file's hashes are legacyHash, not the store's seed
	now     int64
	kept    int
	dropped int // left out, their shard full
	probes  int // table slots looked at
	budget  int
}

// probeBudget is the steps a load may take per key of max_keys: about ten
// times what a table filled to its 3/4 with even hashes takes on average.
// maxRun is far beyond the longest run such a table has (a few hundred
// slots in a shard of millions).
const (
	probeBudget = 32
	maxRun      = 1024
)

func newInstaller(s *Store, legacy bool) *installer {
	return &installer{s: s, legacy: legacy, now: s.now(), budget: probeBudget * s.cfg.MaxKeys}
}

// errCrowded is a snapshot whose keys would take too long to install.
var errCrowded = errors.New("its keys crowd into a few places of the table, as those of no snapshot sluice writes do")

func (in *installer) entry(e entry) error {
	if e.idle(in.now) {
		return nil
	}
	sh := in.s.shard(e.h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.n >= sh.limit {
		in.dropped++
		return nil
	}
	i, found := sh.find(e.h)
	if in.probes += sh.distance(e.h, i) + 1; in.probes > in.budget {
		return errCrowded
	}
	if found { // twice in one file: only a crafted one
		sh.tab[i].v = e.v
		return nil
	}
	sh.tab[i] = e
	sh.n++
	in.kept++
	return nil
}

// hot names a key the file holds, if it is still in the table (the
// writer puts each shard's hot names after its entries) and there is a
// free place: a file never holds more names than a shard keeps unless it
// was written with other shards or crafted, and taking the first ones
// allocates no more names than the places hold.
func (in *installer) hot(r hotKey, name []byte) error {
	var h uint64
	if in.legacy {
		h = legacyHash(name, r.kind)
	} else {
		h = in.s.seed.hash(name, r.kind)
	}
	sh := in.s.shard(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, found := sh.find(h)
	if in.probes += sh.distance(h, i) + 1; in.probes > in.budget {
		return errCrowded
	}
	if found && !sh.tab[i].idle(in.now) && sh.findHot(h) < 0 && sh.hasFreeHot() {
		r.name, r.h, r.seen = string(name), h, in.now
		sh.addHot(r)
	}
	return nil
}

// allow installs an exemption still in force. readSnapshot bounds their
// number by the store's own, so set cannot refuse one.
func (in *installer) allow(key []byte, until int64) {
	if until > in.now {
		in.s.allow.set(string(key), time.Unix(0, until), in.now)
	}
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
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("counter snapshot is open to other users: it holds the store's secret hash seed, "+
			"with which keys that crowd the table can be chosen; the next write makes it private (0600), "+
			"and removing it before a start draws a new seed",
			zap.Stringer("mode", fi.Mode().Perm()))
	}
	hd, in, err := s.loadFrom(f)
	switch {
	case errors.Is(err, errEmpty):
		log.Info("counter snapshot is empty; starting with empty counters")
		return nil
	case err != nil:
		log.Warn("counter snapshot ignored; starting with empty counters", zap.Error(err))
		return nil
	}
	s.snap.statusMu.Lock()
	s.snap.last = time.Unix(0, hd.written)
	s.snap.statusMu.Unlock()
	log.Info("counter snapshot loaded", zap.Int("keys", in.kept),
		zap.Int("idle_dropped", in.tally.entries-in.kept-in.unnamed-in.dropped),
		zap.Int("over_max_keys", in.dropped),
		zap.Duration("age", time.Duration(in.now-hd.written)))
	if hd.version == legacyVersion {
		log.Warn("counter snapshot of version 1: its counters were keyed by a hash clients can compute; "+
			"the keys it names (denied or more than half full) are kept under the store's new secret seed, the others start empty",
			zap.Int("kept", in.carried), zap.Int("unnamed_dropped", in.unnamed))
	}
	return nil
}

// loaded is what loadFrom installed.
type loaded struct {
	tally
	kept, dropped, probes int
	now                   int64
	// A version 1 file: the named keys kept under the store's seed, and
	// the others, dropped.
	carried, unnamed int
}

// loadFrom reads r twice: once to check it whole, keeping nothing, then
// to install it. Memory use is the store's, whatever the file holds. If
// the second reading differs from the first (the file changed in
// between), what it installed is taken back. The store takes the file's
// seed, or keeps its own for a version 1 file, whose keys it hashes
// again where it can (see carryNamed).
func (s *Store) loadFrom(r io.ReadSeeker) (header, loaded, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var t tally
	checked, err := readSnapshot(br, &t)
	if err != nil {
		return header{}, loaded{}, err
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return header{}, loaded{}, err
	}
	br.Reset(r)
	own, legacy := s.seed, checked.version == legacyVersion
	if !legacy {
		s.seed = checked.seed
	}
	in := newInstaller(s, legacy)
	hd, err := readSnapshot(br, in)
	if err == nil && hd != checked {
		err = errors.New("the file changed while it was read")
	}
	if err == nil && s.longestRun() > maxRun {
		err = errCrowded
	}
	if err != nil {
		s.forgetAll()
		s.seed = own
		return header{}, loaded{}, err
	}
	ld := loaded{tally: t, kept: in.kept, dropped: in.dropped, probes: in.probes, now: in.now}
	if legacy {
		ld.carried = s.carryNamed(in.now)
		ld.unnamed = ld.kept - ld.carried
		ld.kept = ld.carried
	}
	return hd, ld, nil
}

// carryNamed moves a version 1 snapshot's counters, just installed under
// their unseeded hashes, to the store's seed. A hash cannot be keyed
// again without its key, and the file names only its hot keys — those
// denied or more than half full, the ones a restart must not set free:
// they are kept, the others dropped. It returns the number kept.
func (s *Store) carryNamed(now int64) int {
	type named struct {
		hk hotKey
		v  int64
	}
	var keep []named // at most the hot places: hotKeys and a few
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for _, hk := range sh.hot {
			if hk.name == "" {
				continue
			}
			if v := sh.get(hk.h, now); v != 0 {
				keep = append(keep, named{hk, v})
			}
		}
		sh.clear()
		sh.mu.Unlock()
	}
	for _, k := range keep {
		h := s.seed.hash([]byte(k.hk.name), k.hk.kind)
		sh := s.shard(h)
		sh.mu.Lock()
		sh.set(h, k.v, now)
		if sh.findHot(h) < 0 {
			k.hk.h = h
			sh.addHot(k.hk)
		}
		sh.mu.Unlock()
	}
	return len(keep)
}

func (s *Store) longestRun() int {
	longest := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		longest = max(longest, sh.longestRun())
		sh.mu.Unlock()
	}
	return longest
}

// forgetAll empties the store: keys, hot names and exemptions.
func (s *Store) forgetAll() {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.clear()
		sh.mu.Unlock()
	}
	s.allow.mu.Lock()
	clear(s.allow.m)
	s.allow.any.Store(false)
	s.allow.mu.Unlock()
	s.forgetExt()
}
