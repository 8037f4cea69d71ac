// Package memstore keeps counters in this process's memory: a sharded,
// pointer-free hash table with expiry, a key bound and snapshots to disk.
package memstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"sluice/guard"
	"sluice/limits/counter"
)

// ErrClosed is returned by a Store used after Close.
var ErrClosed = errors.New("memstore: store closed")

// Store is the in-memory counter.Store.
type Store struct {
	shards []shard
	shift  uint     // a key's shard is its hash >> shift
	seed   hashSeed // set before the store serves, never changed after
	now    func() int64
	clock  *wallClock // behind now unless a test set its own
	log    *zap.Logger
	cfg    Config

	allow allowSet
	snap  snapshotter
	ext   extState // distinct members' seed, restrictions, overrides, claims

	closed    atomic.Bool
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

var _ counter.Store = (*Store)(nil)

// Option changes how New builds a Store; for tests.
type Option func(*Store)

// WithClock makes the store read the time from now (Unix nanoseconds)
// instead of the wall clock.
func WithClock(now func() int64) Option {
	return func(s *Store) { s.now = now }
}

// withFS puts the snapshot's file operations behind fs.
func withFS(fs fileSystem) Option {
	return func(s *Store) { s.snap.fs = fs }
}

// Shards: 256 locks make contention between two cores rare, and each
// shard's table (max_keys/256 keys) small enough that sweeping it holds
// its lock for microseconds. Small stores get fewer shards so each keeps
// enough keys for eviction to choose well.
const (
	maxShards     = 256
	minShardLimit = 64
	sweepEvery    = 100 * time.Millisecond
	sweepShards   = 4 // per tick: a whole pass every 6.4s with 256 shards
)

// New makes a store and loads its snapshot, if there is one, with the
// hash seed the snapshot holds; without one, the store draws a new seed.
// A damaged snapshot is logged and ignored; a snapshot path that holds
// something else (see CheckSnapshotPath) is an error.
func New(cfg Config, log *zap.Logger, opts ...Option) (*Store, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("memory store: %w", err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	s := &Store{
		clock: newWallClock(),
		log:   log,
		cfg:   cfg,
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
		seed:  newHashSeed(), // the snapshot's, if one is loaded
	}
	s.now = s.clock.now
	s.snap.fs = osFS{}
	s.ext.seed = newMemberSeed()
	for _, o := range opts {
		o(s)
	}
	n := maxShards
	for n > 1 && cfg.MaxKeys/n < minShardLimit {
		n /= 2
	}
	s.shift = uint(64 - bits.TrailingZeros(uint(n)))
	s.shards = make([]shard, n)
	// One allocation for every table: no pointers in it, so the garbage
	// collector never scans it, and backed by huge pages where the
	// kernel allows (see hugePages). The shards' limits add up to
	// max_keys exactly.
	limit := cfg.MaxKeys / n
	size := shardSlots(limit + 1)
	slab := make([]entry, n*size)
	hugePages(slab)
	for i := range s.shards {
		l := limit
		if i < cfg.MaxKeys%n {
			l++
		}
		s.shards[i].init(slab[i*size:(i+1)*size:(i+1)*size], l, min(max(hotKeys/n, minHotPerShard), maxHotPerShard))
	}
	if cfg.Snapshot != "" {
		if err := s.loadSnapshot(); err != nil {
			return nil, err // it names the path and what is there
		}
	}
	guard.Go(log, "memstore background", s.run)
	return s, nil
}

func (s *Store) shard(h uint64) *shard { return &s.shards[h>>s.shift] }

// shardSet is a set of shard indices, locked in increasing order so that
// two events sharing shards can never wait on each other.
type shardSet [maxShards / 64]uint64

func (b *shardSet) add(i uint64)      { b[i>>6] |= 1 << (i & 63) }
func (b *shardSet) has(i uint64) bool { return b[i>>6]&(1<<(i&63)) != 0 }

func (s *Store) lockSet(b *shardSet) {
	for w, m := range b {
		for ; m != 0; m &= m - 1 {
			s.shards[w<<6|bits.TrailingZeros64(m)].mu.Lock()
		}
	}
}

func (s *Store) unlockSet(b *shardSet) {
	for w, m := range b {
		for ; m != 0; m &= m - 1 {
			s.shards[w<<6|bits.TrailingZeros64(m)].mu.Unlock()
		}
	}
}

// maxSpan bounds Interval×Burst and Interval×Cost (about 73 years) and
// maxTAT the stored tat (year 2116), so no sum of them overflows int64.
const (
	maxSpan = 1 << 61
	maxTAT  = 1 << 62
)

// validRequest adds the memory store's bound to Request.Validate.
func validRequest(r *counter.Request) error {
	if err := r.Validate(); err != nil {
		return err
	}
	if r.Kind == counter.KindRate {
		hb, b := bits.Mul64(uint64(r.Interval), uint64(r.Burst))
		hc, c := bits.Mul64(uint64(r.Interval), uint64(r.Cost))
		if hb|hc != 0 || b > maxSpan || c > maxSpan {
			return fmt.Errorf("interval %d times burst %d or cost %d is out of range", r.Interval, r.Burst, r.Cost)
		}
	}
	return nil
}

// step is one request's part in Do, kept from its judgement to its
// update so that the common case finds its key once.
type step struct {
	h     uint64
	slot  int  // where h is in its shard, or the free slot where it would go
	found bool // slot holds h (maybe idle)
	v     int64
	next  int64 // the state if the request is applied
	cur   int64 // the level now; -1 until computed
	after int64 // the level once applied; -1 until computed
}

// Do applies the requests of one event atomically: the shards of all its
// keys are held from the first judgement to the last update.
func (s *Store) Do(ctx context.Context, reqs []counter.Request) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return ErrClosed
	}
	var buf [4]step
	steps := buf[:0]
	if len(reqs) > len(buf) {
		steps = make([]step, 0, len(reqs))
	}
	var locked shardSet
	var kinds uint8 // a bit per kind in the event
	for i := range reqs {
		r := &reqs[i]
		if err := validRequest(r); err != nil {
			return fmt.Errorf("counter %q: %w", r.Key, err)
		}
		kinds |= 1 << r.Kind
		if r.Kind == counter.KindOverride {
			continue
		}
		h := s.seed.hash(r.Key, r.Kind)
		steps = append(steps, step{h: h})
		locked.add(h >> s.shift)
	}
	if kinds&(1<<counter.KindOverride) != 0 && !s.checkOverrides(reqs) {
		return fmt.Errorf("memory store: %w", counter.ErrStale)
	}
	return s.doChecked(reqs, steps, &locked, kinds)
}

// doChecked judges and applies the requests of an event whose overrides
// are as expected: steps holds one step per request that is not an
// override check, in order, and locked their shards.
func (s *Store) doChecked(reqs []counter.Request, steps []step, locked *shardSet, kinds uint8) error {
	s.lockSet(locked)
	now := s.now()
	refused := false
	j := 0
	for i := range reqs {
		r := &reqs[i]
		if r.Kind == counter.KindOverride {
			continue
		}
		st := &steps[j]
		j++
		switch r.Kind {
		case counter.KindDistinct:
			s.shard(st.h).judgeDistinct(r, st, s.ext.seed, now)
		case counter.KindRestrict:
			s.judgeRestrict(r, st, now)
		default:
			s.shard(st.h).judge(r, st, now)
			if !r.Allowed {
				// What a restriction of its group records; the level
				// is reported as it is now unless the take is applied.
				r.Level = st.levelNow(r, now)
			}
		}
		refused = refused || !r.Allowed && r.Blocking && r.Op == counter.OpTake
	}
	var crossed []groupCount
	if kinds&(1<<counter.KindRestrict) != 0 {
		crossed = crossings(reqs)
	}
	var changed shardSet
	j = 0
	for i := range reqs {
		r := &reqs[i]
		if r.Kind == counter.KindOverride {
			continue
		}
		st := &steps[j]
		j++
		sh := s.shard(st.h)
		switch r.Kind {
		case counter.KindDistinct:
			if r.Op != counter.OpPeek && (r.Strict || r.Allowed && !refused) {
				sh.commitDistinct(r, st, now)
			}
			continue
		case counter.KindRestrict:
			s.commitRestrict(r, st, crossingOf(crossed, r.Group), now)
			continue
		}
		if r.Op != counter.OpPeek && (r.Strict || r.Allowed && !refused) {
			if changed.has(st.h >> s.shift) {
				// An earlier request of this event changed the shard,
				// maybe this very key: start again from what is there,
				// keeping the results reported from the first look.
				again := *r
				sh.judge(&again, st, now)
			}
			sh.commit(st, now)
			changed.add(st.h >> s.shift)
			r.Level = st.levelAfter(r, now)
		} else {
			r.Level = st.levelNow(r, now)
		}
		if isHot(r) {
			sh.noteHot(st.h, r, now)
		}
	}
	s.unlockSet(locked)
	return nil
}

// judge finds st's key and fills r's results from its state without
// changing it: whether r is within the limit, and what applying it would
// leave.
func (sh *shard) judge(r *counter.Request, st *step, now int64) {
	st.slot, st.found = sh.find(st.h)
	st.v = 0
	if st.found && !sh.tab[st.slot].idle(now) {
		st.v = sh.tab[st.slot].v
	}
	r.Allowed, r.RetryAfter = true, 0
	st.cur, st.after = -1, -1
	switch r.Kind {
	case counter.KindRate:
		// GCRA's new tat is what a take adds whether or not it is
		// admitted, which is also what a strict request wants. Its level
		// is the level after an admitted take, else the level now.
		next, allowed, retry, lvl := counter.GCRA(now, st.v, r)
		st.next = min(next, maxTAT)
		if r.Op == counter.OpRefund {
			st.after = lvl
			break
		}
		r.Allowed, r.RetryAfter = allowed, retry
		if allowed {
			st.after = lvl
		} else {
			st.cur = lvl
		}
	case counter.KindConcurrent:
		st.cur = st.v
		switch r.Op {
		case counter.OpRefund:
			st.next = max(st.v-1, 0)
		default:
			r.Allowed = st.v < r.Burst
			st.next = st.v
			if st.v < math.MaxInt64 {
				st.next++
			}
		}
		st.after = st.next
	}
}

func (st *step) levelNow(r *counter.Request, now int64) int64 {
	if st.cur < 0 {
		st.cur = level(st.v, now, r.Interval)
	}
	return st.cur
}

func (st *step) levelAfter(r *counter.Request, now int64) int64 {
	if st.after < 0 {
		st.after = level(st.next, now, r.Interval)
	}
	return st.after
}

// Reset forgets the given keys, of either kind, and their hot entries.
func (s *Store) Reset(ctx context.Context, keys [][]byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return ErrClosed
	}
	for _, key := range keys {
		for _, k := range []counter.Kind{counter.KindRate, counter.KindConcurrent} {
			h := s.seed.hash(key, k)
			sh := s.shard(h)
			sh.mu.Lock()
			if i, ok := sh.find(h); ok {
				sh.del(i)
			}
			sh.forgetHot(h)
			sh.forgetSet(h)
			sh.mu.Unlock()
		}
	}
	return nil
}

// Len is the number of keys in the table, idle ones not yet reclaimed
// included.
func (s *Store) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += sh.n
		if sh.ext != nil {
			n += len(sh.ext.sets)
		}
		sh.mu.Unlock()
	}
	return n
}

// Close stops the background work and writes the snapshot. Later calls
// return the first one's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.stop)
		<-s.done
		if s.cfg.Snapshot != "" {
			s.closeErr = s.writeSnapshot()
		}
	})
	return s.closeErr
}

// run sweeps idle keys a few shards at a time, so reclaiming never holds
// more than one shard's lock, and writes the snapshot on schedule. A
// panic in a sweep or a write is recovered there, and the loop goes on.
func (s *Store) run() {
	defer close(s.done)
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()
	var snapC <-chan time.Time
	if s.cfg.Snapshot != "" {
		t := time.NewTicker(s.cfg.SnapshotInterval.D())
		defer t.Stop()
		snapC = t.C
	}
	next := 0
	for {
		select {
		case <-s.stop:
			return
		case <-sweep.C:
			next = s.sweep(next)
		case <-snapC:
			s.writeSnapshot()
		}
	}
}

// sweep purges a few shards from the one at from and returns where the
// next sweep starts: past a shard that panicked, too.
func (s *Store) sweep(from int) (next int) {
	defer guard.Recover(s.log, "memstore sweep")
	next = from
	s.clock.refresh()
	for range min(sweepShards, len(s.shards)) {
		i := next
		next = (next + 1) % len(s.shards)
		s.sweepShard(i)
	}
	return next
}

func (s *Store) sweepShard(i int) {
	sh := &s.shards[i]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := s.now()
	sh.purge(now)
	sh.purgeSets(now)
}
