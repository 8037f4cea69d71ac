package memstore

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"sluice/limits/counter"
	"sluice/limits/counter/countertest"
)

// crowdKeys is how many chosen keys the crowding tests send: within one
// shard's share of the default max_keys (3,906), so none is evicted, and
// more than maxRun, so that a run of all of them is one no snapshot load
// accepts.
const crowdKeys = 1500

// chooseKeys returns n sender keys for which crowds returns true, found
// by trying one address after another, as a client that picks its sender
// addresses could do offline.
func chooseKeys(n int, crowds func(key []byte) bool) [][]byte {
	keys := make([][]byte, 0, n)
	buf := []byte("msgs-per-sender:0:sender:")
	prefix := len(buf)
	for i := 0; len(keys) < n; i++ {
		buf = append(strconv.AppendInt(buf[:prefix], int64(i), 36), "@example.org"...)
		if crowds(buf) {
			keys = append(keys, append([]byte(nil), buf...))
		}
	}
	return keys
}

// inFirstEighthOfShard0 reports whether h picks shard 0 of 256 (its top
// 8 bits) and a home slot in the first eighth of that shard (its low 32
// bits): about one hash in 2,048. Keys whose homes all lie within those
// 650 slots fill one run from there, nearly as long as their number.
func inFirstEighthOfShard0(h uint64) bool { return h>>56 == 0 && uint32(h) < 1<<29 }

// A client that chooses its sender addresses cannot make their counters
// crowd into one run of the table: keys picked so that the unseeded
// xxhash64 — the same in every process, so an attacker can compute it —
// puts them in one shard and one stretch of slots land apart, so
// look-ups stay short, and the store's snapshot, which a load would
// refuse with a run that long, brings every counter back after a
// restart, a sender at its limit still at its limit.
func TestChosenKeysDoNotCrowd(t *testing.T) {
	keys := chooseKeys(crowdKeys, func(k []byte) bool { return inFirstEighthOfShard0(xxhash.Sum64(k)) })
	path := filepath.Join(t.TempDir(), "counters.snap")
	clock := countertest.NewClock()
	s := newTestStore(t, Config{Snapshot: path}, clock.Now)
	if len(s.shards) != 256 {
		t.Fatalf("%d shards: the chosen keys aim at 256", len(s.shards))
	}
	rule := func(key []byte) counter.Request {
		return countertest.Rate(string(key), 10, time.Hour, 10)
	}
	for _, k := range keys {
		take(t, s, rule(k))
	}
	victim := rule([]byte("msgs-per-sender:0:sender:victim@example.org"))
	for range 10 {
		take(t, s, victim)
	}
	if run := s.longestRun(); run > 32 {
		t.Errorf("longest run of occupied slots %d after %d chosen keys: they crowd together", run, len(keys))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	b := newTestStore(t, Config{Snapshot: path}, clock.Now)
	defer b.Close()
	if n := b.Len(); n != len(keys)+1 {
		t.Errorf("%d keys after a restart, want %d", n, len(keys)+1)
	}
	reqs := []counter.Request{victim}
	take(t, b, reqs...)
	if reqs[0].Allowed {
		t.Errorf("a sender at its limit was admitted after a restart")
	}
}

// Each store draws its own seed, so keys chosen to crowd one store —
// chosen here with its seed in hand, as by someone who had read it —
// crowd that store only. The first store shows that the chosen keys do
// crowd the store whose seed they aim at.
func TestSeedIsPerStore(t *testing.T) {
	clock := countertest.NewClock()
	a := newTestStore(t, Config{}, clock.Now)
	defer a.Close()
	b := newTestStore(t, Config{}, clock.Now)
	defer b.Close()
	if a.seed == b.seed || a.seed == (hashSeed{}) {
		t.Fatalf("seeds %x and %x: want two different random seeds", a.seed, b.seed)
	}
	keys := chooseKeys(crowdKeys, func(k []byte) bool { return inFirstEighthOfShard0(a.seed.hash(k, counter.KindRate)) })
	for _, k := range keys {
		r := countertest.Rate(string(k), 10, time.Hour, 10)
		take(t, a, r)
		take(t, b, r)
	}
	// A few slots at the start of the stretch may stay empty, so the run
	// need not hold every key; it is longer than any load accepts.
	if run := a.longestRun(); run <= maxRun {
		t.Errorf("keys chosen with a's seed: longest run %d in a, want more than %d", run, maxRun)
	}
	if run := b.longestRun(); run > 32 {
		t.Errorf("keys chosen with a's seed: longest run %d in b, want it short", run)
	}
}

// A restart from the snapshot keeps the seed, and so finds every counter
// again; a store whose snapshot is ignored keeps a seed of its own.
func TestSeedKeptInSnapshot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "counters.snap")
	clock := countertest.NewClock()
	a := newTestStore(t, Config{Snapshot: path}, clock.Now)
	const n = 200
	rule := func(i int) counter.Request {
		return countertest.Rate(strconv.Itoa(i)+"@example.org", 100, time.Hour, 100)
	}
	for i := range n {
		for range i%7 + 1 {
			take(t, a, rule(i))
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := newTestStore(t, Config{Snapshot: path}, clock.Now)
	if b.seed != a.seed {
		t.Errorf("seed after a restart %x, want the snapshot's %x", b.seed, a.seed)
	}
	for i := range n {
		if l := peek(t, b, rule(i)); l != int64(i%7+1) {
			t.Fatalf("key %d: level %d after a restart, want %d", i, l, i%7+1)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-1] ^= 1 // a bad checksum: the file is ignored
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	c := newTestStore(t, Config{Snapshot: path}, clock.Now)
	defer c.Close()
	if c.Len() != 0 || c.seed == a.seed {
		t.Errorf("ignored snapshot: %d keys, seed %x (the file's is %x)", c.Len(), c.seed, a.seed)
	}
}

// xxhash64Pair returns two 64-byte inputs whose xxhash64 is the same
// whatever the seed. Each 8-byte lane of a 32-byte stripe goes into its
// own accumulator as acc = rotl(acc + lane·P2, 31)·P1: the second input
// adds d to the first accumulator in the first stripe, which (without a
// carry across the rotation, nearly always) leaves it (d<<31)·P1 higher,
// and its lane in the second stripe takes exactly that away again.
func xxhash64Pair(d uint64) (x, y []byte) {
	const p1, p2 = 11400714785074694791, 14029467366897019727
	inv := uint64(p2) // p2's inverse mod 2^64, by Newton's iteration
	for range 6 {
		inv *= 2 - p2*inv
	}
	x, y = make([]byte, 64), make([]byte, 64)
	binary.LittleEndian.PutUint64(y[0:], d*inv)
	binary.LittleEndian.PutUint64(y[32:], -(d<<31)*p1*inv)
	return x, y
}

// A fast hash given a seed would not keep chosen keys apart: xxhash64
// has pairs of inputs that collide under any seed, so a client could
// make keys that share a counter, or a slot, in every store. The store's
// hash, keyed by its seed, tells them apart.
func TestSeedIndependentPairsApart(t *testing.T) {
	seed := newHashSeed()
	for d := uint64(1); d <= 200; d++ {
		x, y := xxhash64Pair(d)
		var dx, dy xxhash.Digest
		dx.ResetWithSeed(seed.k0)
		dx.Write(x)
		dy.ResetWithSeed(seed.k0)
		dy.Write(y)
		if dx.Sum64() != dy.Sum64() {
			t.Fatalf("d=%d: the pair does not collide under seeded xxhash64: it shows nothing", d)
		}
		if seed.hash(x, counter.KindRate) == seed.hash(y, counter.KindRate) {
			t.Errorf("d=%d: the pair collides under the store's hash", d)
		}
	}
}
