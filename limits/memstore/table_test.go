package memstore

import (
	"math/rand/v2"
	"testing"
)

// TestShardAgainstMap drives one shard with random inserts, updates,
// deletions, purges and growth, on hashes crowded into few home slots so
// that probe runs are long and wrap around the table, and checks every
// key against a plain map after each step.
func TestShardAgainstMap(t *testing.T) {
	seeds := uint64(60)
	if testing.Short() || raceEnabled {
		seeds = 10
	}
	for seed := range seeds {
		rng := rand.New(rand.NewPCG(seed, 1))
		sh := newShard(200)
		model := map[uint64]int64{}
		const now = 1000
		for step := range 2000 {
			// Hashes with few distinct homes collide, and those near
			// the top wrap around; the high bits keep them distinct.
			h := uint64(rng.IntN(300))<<32 | uint64(rng.IntN(8))<<29
			if rng.IntN(2) == 0 {
				h |= uint64(rng.Uint32())
			}
			h &^= kindBit
			if h == 0 {
				h = 1
			}
			switch op := rng.IntN(9); {
			case op < 6: // set live or idle
				v := now + 1 + rng.Int64N(100)
				if rng.IntN(4) == 0 {
					v = now - rng.Int64N(3) // idle: removes
				}
				if _, ok := model[h]; !ok && len(model) >= sh.limit && v > now {
					// The shard evicts; mirror whatever it dropped.
					sh.set(h, v, now)
					resync(t, sh, model, now)
				} else {
					sh.set(h, v, now)
				}
				if v > now {
					model[h] = v
				} else {
					delete(model, h)
				}
			case op < 8:
				if i, ok := sh.find(h); ok {
					sh.del(i)
				}
				delete(model, h)
			case op < 9: // some entries go idle, then purge
				for k, v := range model {
					if v < now+20 {
						delete(model, k)
						if i, ok := sh.find(k); ok {
							sh.tab[i].v = now
						}
					}
				}
				sh.purge(now)
			}
			check(t, sh, model, now, seed, step)
		}
	}
}

func newShard(limit int) *shard {
	sh := &shard{}
	sh.init(make([]entry, shardSlots(limit)), limit, 4)
	return sh
}

// resync drops from the model the key the shard evicted.
func resync(t *testing.T, sh *shard, model map[uint64]int64, now int64) {
	t.Helper()
	gone := 0
	for k := range model {
		if _, ok := sh.find(k); !ok {
			delete(model, k)
			gone++
		}
	}
	if gone != 1 {
		t.Fatalf("eviction dropped %d keys, want 1", gone)
	}
}

func check(t *testing.T, sh *shard, model map[uint64]int64, now int64, seed uint64, step int) {
	t.Helper()
	if sh.n != len(model) {
		t.Fatalf("seed %d step %d: n=%d, model has %d", seed, step, sh.n, len(model))
	}
	if sh.n > sh.limit || sh.n*4 > len(sh.tab)*3 {
		t.Fatalf("seed %d step %d: n=%d in %d slots, limit %d", seed, step, sh.n, len(sh.tab), sh.limit)
	}
	for k, v := range model {
		if got := sh.get(k, now); got != v {
			t.Fatalf("seed %d step %d: key %x = %d, want %d", seed, step, k, got, v)
		}
	}
}

func TestEvictPrefersIdleThenSoonestDrained(t *testing.T) {
	sh := newShard(8)
	const now = 1000
	for i := range 8 {
		sh.set(uint64(i+1)<<20, now+100+int64(i), now)
	}
	// Key 5 goes idle: it is the one to go.
	i, _ := sh.find(5 << 20)
	sh.tab[i].v = now - 1
	sh.set(100<<20, now+500, now)
	if _, ok := sh.find(5 << 20); ok {
		t.Errorf("idle key kept, a live one evicted")
	}
	// No idle key: the one that drains first (key 1, tat now+100) goes.
	sh.set(101<<20, now+500, now)
	if _, ok := sh.find(1 << 20); ok {
		t.Errorf("key draining first was kept")
	}
	if sh.n != 8 {
		t.Errorf("n = %d, want 8", sh.n)
	}
}

func TestEvictSparesHeldSlots(t *testing.T) {
	sh := newShard(64)
	const now = 1000
	held := make([]uint64, 0, 63)
	for i := range 63 {
		h := uint64(i+1)<<20 | kindBit
		sh.set(h, 1, now)
		held = append(held, h)
	}
	// A flood of rate keys: only the one free place turns over.
	for i := range 10_000 {
		sh.set(uint64(i+1000)<<20, now+10, now)
	}
	for _, h := range held {
		if sh.get(h, now) != 1 {
			t.Fatalf("held slot %x evicted by rate keys", h)
		}
	}
	// Only held slots left: one of them has to go, the least held.
	last := uint64(99)<<20 | kindBit
	sh.set(last, 1, now) // replaces the last rate key
	for _, h := range held {
		sh.set(h, 2, now)
	}
	sh.set(uint64(6000)<<20, now+10, now)
	if sh.n != 64 || sh.get(uint64(6000)<<20, now) == 0 {
		t.Errorf("a full shard of held slots refused the new key")
	}
	if sh.get(last, now) != 0 {
		t.Errorf("evicted a key holding 2 slots rather than the one holding 1")
	}
}

// longestRun counts runs of occupied slots, one that wraps around the end
// of the table included.
func TestLongestRun(t *testing.T) {
	for _, c := range []struct {
		slots string // x: occupied
		want  int
	}{
		{"........", 0},
		{"x.......", 1},
		{".xxx.xx.", 3},
		{"xx....xx", 4},
		{"xxx.xxxx", 7},
		{"xxxxxxxx", 8},
	} {
		sh := &shard{tab: make([]entry, len(c.slots))}
		for i, ch := range c.slots {
			if ch == 'x' {
				sh.tab[i].h = uint64(i + 1)
			}
		}
		if got := sh.longestRun(); got != c.want {
			t.Errorf("%s: longest run %d, want %d", c.slots, got, c.want)
		}
	}
}
