package memstore

import (
	"crypto/rand"
	"encoding/binary"
	"sync"

	"github.com/dchest/siphash"

	"sluice/limits/counter"
)

// entry is one tracked key. It holds no Go pointer, so a table of a million
// entries is one allocation the garbage collector never scans, and the key
// itself is not kept: two keys whose 64-bit hashes collide share a counter
// (about one chance in 3·10⁷ at a million keys; a client aiming at one
// of a million keys without the seed needs about 10¹³ tries).
type entry struct {
	h uint64 // the key's hash (hashSeed.hash); 0 marks an empty slot
	v int64  // KindRate: theoretical arrival time, Unix ns; KindConcurrent: slots held
}

// kindBit marks concurrency keys inside the hash. It sits between the bits
// that pick the slot (low) and the shard (high), so neither loses spread.
const kindBit = 1 << 40

// hashSeed is the secret key of the table's hash. Clients choose most
// keys (sender addresses, HELO names, recipients): with a hash they could
// compute, they could pick keys that all land in one shard and one run
// of slots, which every look-up there walks, or one whose hash equals
// another client's, sharing (and using up) its counter. Each store draws
// its own seed at its first start and keeps it in its snapshot, which
// stores hashes, not keys.
type hashSeed struct{ k0, k1 uint64 }

func newHashSeed() hashSeed {
	var b [16]byte
	rand.Read(b[:]) // never fails: it would end the program instead
	return hashSeed{binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])}
}

// hash is the key's identity in the table, never 0. SipHash-2-4 is a
// pseudorandom function of the seed: without it, no hash tells anything
// of another. Seeding a fast hash does not do that: xxhash64 has pairs
// of inputs that collide whatever the seed (xxhash64Pair in the tests),
// XXH3 published pairs that collide under many seeds, and chosen keys
// can use those as well as an unseeded hash; hash/maphash's seed cannot
// be written to a snapshot. SipHash costs 10 to 13 ns of CPU more a key
// than xxhash64 on keys of 16 to 55 bytes, within the noise of a whole
// check (docs/limits.md has the figures).
func (s hashSeed) hash(key []byte, k counter.Kind) uint64 {
	return withKind(siphash.Hash(s.k0, s.k1, key), k)
}

// withKind sets kindBit for concurrency keys, clears it for rate keys,
// and keeps 0 for empty slots.
func withKind(h uint64, k counter.Kind) uint64 {
	h &^= kindBit
	if k == counter.KindConcurrent {
		h |= kindBit
	}
	if h == 0 {
		h = 1
	}
	return h
}

// idle reports whether an entry's state is the same as no entry at all:
// a rate key whose bucket has drained, a concurrency key with no slot held.
func (e entry) idle(now int64) bool {
	if e.h&kindBit != 0 {
		return e.v <= 0
	}
	return e.v <= now
}

// shard is one lock's worth of the table: an open-addressing hash table
// with linear probing and backward-shift deletion (no tombstones, so
// probes stay short however many keys come and go). Its size is fixed
// when the store is made, for its part of max_keys at a load of at most
// 3/4, so it never grows and never pauses to rehash.
type shard struct {
	mu      sync.Mutex
	tab     []entry
	n       int       // occupied slots, idle ones included until reclaimed
	limit   int       // n at most: this shard's part of max_keys
	hand    int       // where the eviction scan resumes
	hot     []hotKey  // names of hot keys; allocated at the first
	hotN    int       // len(hot)
	hotHand int       // where addHot's replacement resumes
	ext     *shardExt // distinct sets (distinct.go); nil until the first
	_       [64]byte
}

// shardSlots is the table size for limit keys: 4/3 of it, in whole cache
// lines of entries.
func shardSlots(limit int) int {
	return (limit*4/3 + 4) &^ 3
}

func (sh *shard) init(tab []entry, limit, hot int) {
	sh.tab, sh.limit, sh.hotN = tab, limit, hot
}

// clear forgets every entry and hot name.
func (sh *shard) clear() {
	clear(sh.tab)
	sh.n, sh.hand = 0, 0
	clear(sh.hot)
}

// home is h's first slot: h's low 32 bits scaled to the table size by a
// multiply and a shift, so the size need not be a power of two.
func (sh *shard) home(h uint64) int {
	return int(uint64(uint32(h)) * uint64(len(sh.tab)) >> 32)
}

// find returns the slot holding h, or the empty slot where h would go.
func (sh *shard) find(h uint64) (int, bool) {
	for i := sh.home(h); ; {
		switch sh.tab[i].h {
		case h:
			return i, true
		case 0:
			return i, false
		}
		if i++; i == len(sh.tab) {
			i = 0
		}
	}
}

// distance is how many slots past h's home slot i is: find(h) returning
// i looked at distance+1 slots.
func (sh *shard) distance(h uint64, i int) int {
	d := i - sh.home(h)
	if d < 0 {
		d += len(sh.tab)
	}
	return d
}

// longestRun is the length of the longest run of occupied slots, which a
// find may have to walk: with hashes spread evenly it stays short (a few
// hundred at most at the 3/4 load the shard never exceeds).
func (sh *shard) longestRun() int {
	longest, run, first := 0, 0, -1
	for _, e := range sh.tab {
		if e.h == 0 {
			if first < 0 {
				first = run
			}
			run = 0
			continue
		}
		run++
		longest = max(longest, run)
	}
	if first >= 0 {
		longest = max(longest, run+first) // a run that wraps around
	}
	return longest
}

// get returns the state of h, 0 when it is not tracked or idle.
func (sh *shard) get(h uint64, now int64) int64 {
	if i, ok := sh.find(h); ok && !sh.tab[i].idle(now) {
		return sh.tab[i].v
	}
	return 0
}

// set stores v for h; an idle v removes the entry.
func (sh *shard) set(h uint64, v int64, now int64) {
	st := step{h: h, next: v}
	st.slot, st.found = sh.find(h)
	sh.commit(&st, now)
}

// commit stores st.next for st.h at the slot judge found: in place,
// removed when idle, or inserted, evicting first when the shard is full.
func (sh *shard) commit(st *step, now int64) {
	e := entry{st.h, st.next}
	switch {
	case e.idle(now):
		if st.found {
			sh.del(st.slot)
		}
	case st.found:
		sh.tab[st.slot].v = st.next
	default:
		if sh.n >= sh.limit {
			sh.evict(now)
			st.slot, _ = sh.find(st.h)
		}
		sh.tab[st.slot] = e
		sh.n++
	}
}

// del empties slot i and shifts back the entries of its probe run that
// may move, so every remaining key stays reachable from its home slot.
func (sh *shard) del(i int) {
	size := len(sh.tab)
	for j := i + 1; ; j++ {
		if j == size {
			j = 0
		}
		if sh.tab[j].h == 0 {
			break
		}
		home := sh.home(sh.tab[j].h)
		// The entry at j may fill the hole at i unless its home lies
		// cyclically in (i, j].
		var stays bool
		if i < j {
			stays = i < home && home <= j
		} else {
			stays = i < home || home <= j
		}
		if !stays {
			sh.tab[i] = sh.tab[j]
			i = j
		}
	}
	sh.tab[i] = entry{}
	sh.n--
}

// purge removes every idle entry. Its cost is the shard's size, a
// 1/shards part of the table.
func (sh *shard) purge(now int64) {
	for i := 0; i < len(sh.tab); {
		if e := sh.tab[i]; e.h != 0 && e.idle(now) {
			sh.del(i) // may pull an unseen entry into i: look again
			continue
		}
		i++
	}
}

// An eviction looks at the next evictScan entries after the last one's
// place: it reclaims every idle entry among them, and when there is none,
// drops the rate key that would drain soonest among the first evictSample
// (it holds the least information).
const (
	evictScan   = 64
	evictSample = 8
)

// evict frees at least one slot in a full shard. Concurrency keys with
// slots held are taken only when the whole shard holds nothing else:
// forgetting a slot would let the client exceed its limit, and its refund
// would find nothing.
func (sh *shard) evict(now int64) {
	victim, held := -1, -1
	freed, seen, sampled := 0, 0, 0
	i := sh.hand
	for range len(sh.tab) {
		if i++; i >= len(sh.tab) {
			i = 0
		}
		e := sh.tab[i]
		switch {
		case e.h == 0:
			continue
		case e.idle(now):
			sh.del(i) // may pull an unseen entry into i: look again
			freed++
			victim = -1 // slots moved; and no live key need go
			i--
		case e.h&kindBit != 0:
			if held < 0 || e.v < sh.tab[held].v {
				held = i
			}
		case freed == 0 && sampled < evictSample:
			if sampled++; victim < 0 || e.v < sh.tab[victim].v {
				victim = i
			}
		}
		if seen++; seen >= evictScan && (freed > 0 || victim >= 0) {
			break
		}
	}
	sh.hand = i
	if freed > 0 {
		return
	}
	if victim < 0 {
		victim = held
	}
	sh.del(victim)
}
