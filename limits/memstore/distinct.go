package memstore

import (
	"crypto/rand"
	"encoding/binary"
	"math"
	"slices"
	"time"

	"github.com/dchest/siphash"

	"sluice/limits/counter"
)

// A distinct key (counter.KindDistinct) is a small set of members, each a
// 64-bit hash of its value and when it was last seen: at most Burst+1 of
// them, the most recently seen, which is enough to count exactly up to
// the limit. Sets live in their shard's map, under the shard's lock, so
// an event judges them with its other keys in one step. Their members
// count against max_keys, a set's members as keys, so sets cannot grow
// the store beyond what max_keys sizes.

// distinctSet is one distinct key's members.
type distinctSet struct {
	exp     int64    // when its most recent member leaves the window: the set is idle from then on
	members []member // unordered
}

type member struct {
	h    uint64 // memberSeed.hash of the value
	seen int64  // Unix µs: the Redis store keeps its times in a double, exact in µs
}

// shardExt holds a shard's distinct sets; nil until the first.
type shardExt struct {
	sets    map[uint64]*distinctSet
	members int // in all its sets: what counts against the shard's limit
}

// memberSeed keys the member hashes: a client chooses its recipients and
// HELO names, and must not find values whose hashes collide to pass
// as one. It is random per store and kept in the snapshot.
type memberSeed struct{ v uint64 }

func newMemberSeed() memberSeed {
	var b [8]byte
	rand.Read(b[:])
	return memberSeed{binary.LittleEndian.Uint64(b[:])}
}

// hash is SipHash keyed by the seed, as the table's hash is (see
// hashSeed.hash): a seeded xxhash64 has pairs that collide under any
// seed, which would let two recipients count as one.
func (m memberSeed) hash(v []byte) uint64 {
	return siphash.Hash(m.v, m.v^0x9e3779b97f4a7c15, v)
}

// micros is a time in Unix ns in whole µs, as members keep it.
func micros(ns int64) int64 { return ns / 1000 }

// cutoff is the last µs a member seen at or before left a window of w ns
// at now (Unix ns): it counts while seen > cutoff.
func cutoff(now, w int64) int64 { return micros(now) - w/1000 }

func (sh *shard) distinct(h uint64) *distinctSet {
	if sh.ext == nil {
		return nil
	}
	return sh.ext.sets[h]
}

// judgeDistinct fills r's results from the key's set: the count now, and
// whether Member would be allowed in, in one pass over the members. A
// step's fields say, for a distinct request: next the member's hash,
// found whether it is within the window and slot where, cur how many
// are.
func (sh *shard) judgeDistinct(r *counter.Request, st *step, seed memberSeed, now int64) {
	ds := sh.distinct(st.h)
	st.next, st.found, st.cur, st.slot = 0, false, 0, -1
	if len(r.Member) > 0 {
		st.next = int64(seed.hash(r.Member))
	}
	if ds != nil {
		cut, mh := cutoff(now, r.Interval), uint64(st.next)
		for i, m := range ds.members {
			if m.seen > cut {
				st.cur++
				if m.h == mh {
					st.found, st.slot = true, i
				}
			}
		}
		st.found = st.found && len(r.Member) > 0
	}
	r.Allowed, r.RetryAfter, r.Changed = true, 0, false
	r.Level = st.cur
	if r.Op == counter.OpRefund {
		return
	}
	if !st.found && st.cur >= r.Burst {
		r.Allowed = false
		r.RetryAfter = ds.retry(r.Burst, r.Interval, now)
	}
}

// retry is when fewer than burst members are within the window: when the
// burst-th most recent of them leaves it. A window of burst 0 never
// admits: its retry is the window. A set holds at most burst+1 members,
// so that member is the oldest or the one after it: found in one pass.
func (ds *distinctSet) retry(burst, w, now int64) time.Duration {
	if ds == nil || burst <= 0 {
		return time.Duration(w)
	}
	cut := cutoff(now, w)
	const none = math.MaxInt64
	first, second, n := int64(none), int64(none), int64(0)
	for _, m := range ds.members {
		if m.seen <= cut {
			continue
		}
		n++
		switch {
		case m.seen < first:
			first, second = m.seen, first
		case m.seen < second:
			second = m.seen
		}
	}
	var seen int64
	switch k := n - burst; {
	case k < 0:
		return 0
	case k == 0:
		seen = first
	case k == 1:
		seen = second
	default: // a burst lowered since the set filled: sort
		all := make([]int64, 0, n)
		for _, m := range ds.members {
			if m.seen > cut {
				all = append(all, m.seen)
			}
		}
		slices.Sort(all)
		seen = all[k]
	}
	return time.Duration((seen+w/1000)*1000 - now)
}

// commitDistinct applies a judged take (add or renew Member) or refund
// (take it out) and sets r.Level and r.Changed.
//
// The set is looked up again rather than kept from judging: another
// request of the event may have evicted it since.
func (sh *shard) commitDistinct(r *counter.Request, st *step, nowNS int64) {
	now := micros(nowNS)
	mh := uint64(st.next)
	ds := sh.distinct(st.h)
	switch r.Op {
	case counter.OpRefund:
		if ds == nil {
			return
		}
		if r.Until > 0 {
			for i := range ds.members {
				if ds.members[i].h == mh {
					ds.members[i].seen = r.Until
				}
			}
		} else if ds.remove(mh) {
			sh.ext.members--
			if len(ds.members) == 0 {
				delete(sh.ext.sets, st.h)
			}
		}
		r.Level = ds.live(cutoff(nowNS, r.Interval))
		return
	case counter.OpTake:
	default:
		return
	}
	// The common case: a member seen before, where judging found it.
	if st.found && ds != nil && st.slot < len(ds.members) && ds.members[st.slot].h == mh {
		ds.members[st.slot].seen = now
		ds.exp = max(ds.exp, nowNS+r.Interval)
		r.Level = st.cur
		return
	}
	if sh.ext == nil {
		sh.ext = &shardExt{sets: make(map[uint64]*distinctSet)}
	}
	if ds == nil {
		ds = &distinctSet{}
		sh.ext.sets[st.h] = ds
	}
	ds.exp = max(ds.exp, nowNS+r.Interval)
	cut := cutoff(nowNS, r.Interval)
	before := len(ds.members)
	ds.compact(cut)
	for i := range ds.members {
		if ds.members[i].h == mh {
			ds.members[i].seen = now
			sh.ext.members -= before - len(ds.members)
			r.Level = ds.live(cut)
			return
		}
	}
	ds.members = append(ds.members, member{h: mh, seen: now})
	// Beyond Burst+1 the least recently seen tell nothing more.
	for int64(len(ds.members)) > max(r.Burst, 0)+1 {
		ds.removeAt(ds.oldest())
	}
	sh.ext.members += len(ds.members) - before
	r.Changed = true
	r.Level = ds.live(cut)
	if sh.ext.members > sh.limit {
		sh.evictMembers(nowNS, ds)
	}
}

// compact drops the members that left the window (seen at or before cut).
func (ds *distinctSet) compact(cut int64) {
	ds.members = slices.DeleteFunc(ds.members, func(m member) bool { return m.seen <= cut })
}

// live counts the members seen after cut.
func (ds *distinctSet) live(cut int64) int64 {
	n := int64(0)
	for _, m := range ds.members {
		if m.seen > cut {
			n++
		}
	}
	return n
}

func (ds *distinctSet) remove(h uint64) bool {
	for i := range ds.members {
		if ds.members[i].h == h {
			ds.removeAt(i)
			return true
		}
	}
	return false
}

func (ds *distinctSet) removeAt(i int) {
	last := len(ds.members) - 1
	ds.members[i] = ds.members[last]
	ds.members = ds.members[:last]
}

func (ds *distinctSet) oldest() int {
	o := 0
	for i := range ds.members {
		if ds.members[i].seen < ds.members[o].seen {
			o = i
		}
	}
	return o
}

// evictSets is how many sets an eviction looks at: Go's map iteration
// starts at a random place, so these are a fresh sample each time.
const evictSets = 8

// evictMembers brings the shard's members back within its limit: idle
// sets go first; then, among a few sets, the one whose window ends
// soonest (it holds the least of what is to come), keep excepted.
func (sh *shard) evictMembers(now int64, keep *distinctSet) {
	for sh.ext.members > sh.limit {
		var victim uint64
		var vs *distinctSet
		seen := 0
		for h, ds := range sh.ext.sets {
			if ds.exp <= now {
				sh.ext.members -= len(ds.members)
				delete(sh.ext.sets, h)
				continue
			}
			if ds != keep && (vs == nil || ds.exp < vs.exp) {
				victim, vs = h, ds
			}
			if seen++; seen >= evictSets {
				break
			}
		}
		if sh.ext.members <= sh.limit {
			return
		}
		if vs == nil {
			// keep alone is over the limit: a shard smaller than one
			// set. Its oldest members go.
			for sh.ext.members > sh.limit && len(keep.members) > 1 {
				keep.removeAt(keep.oldest())
				sh.ext.members--
			}
			return
		}
		sh.ext.members -= len(vs.members)
		delete(sh.ext.sets, victim)
	}
}

// purgeSets drops the sets whose window has passed; sh is locked.
func (sh *shard) purgeSets(now int64) {
	if sh.ext == nil {
		return
	}
	for h, ds := range sh.ext.sets {
		if ds.exp <= now {
			sh.ext.members -= len(ds.members)
			delete(sh.ext.sets, h)
		}
	}
}

// forgetSet drops h's set, if any; sh is locked.
func (sh *shard) forgetSet(h uint64) {
	if sh.ext == nil {
		return
	}
	if ds, ok := sh.ext.sets[h]; ok {
		sh.ext.members -= len(ds.members)
		delete(sh.ext.sets, h)
	}
}
