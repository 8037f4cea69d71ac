package memstore

import (
	"context"

	"sluice/limits/counter"
)

// hotKey remembers the name and parameters of a key that was denied or
// more than half full, so an admin can list it. Cold keys have none: the
// table knows them only by hash.
type hotKey struct {
	name     string // "" marks a free place
	h        uint64
	kind     counter.Kind
	denied   bool // was refused at least once, not only more than half full
	interval int64
	burst    int64
	seen     int64 // last noted, Unix ns
}

// hotKeys bounds the names kept in all: an admin reads the top of the
// list, not all of it. Each shard keeps its part in a small array that is
// searched by hash — cheaper than a map for a few dozen names, and a
// flood of new hot keys churns no map.
const (
	hotKeys        = 10_000
	minHotPerShard = 8
	maxHotPerShard = 64
)

// isHot reports whether a take's result makes its key worth naming.
func isHot(r *counter.Request) bool {
	return r.Op == counter.OpTake && (!r.Allowed || r.Level*2 > r.Burst)
}

func (sh *shard) findHot(h uint64) int {
	for i := range sh.hot {
		if sh.hot[i].h == h && sh.hot[i].name != "" {
			return i
		}
	}
	return -1
}

// noteHot records r's key in the shard's hot set; sh is locked.
func (sh *shard) noteHot(h uint64, r *counter.Request, now int64) {
	if i := sh.findHot(h); i >= 0 {
		hk := &sh.hot[i]
		hk.interval, hk.burst, hk.seen = r.Interval, r.Burst, now
		hk.denied = hk.denied || !r.Allowed
		return
	}
	sh.addHot(hotKey{name: string(r.Key), h: h, kind: r.Kind, denied: !r.Allowed,
		interval: r.Interval, burst: r.Burst, seen: now})
}

// hotSample is how many places addHot compares when the set is full.
const hotSample = 4

// addHot takes a free place or, when the set is full, one of a few
// places from a rotating hand: a key never denied (only more than half
// full) goes before a denied one, then the one noted longest ago. Keys
// are not looked up in the table here — a random table access per name
// would cost more than the rest of the event; Hot drops idle ones.
func (sh *shard) addHot(hk hotKey) {
	if sh.hot == nil {
		sh.hot = make([]hotKey, sh.hotN)
	}
	victim := -1
	for i := range sh.hot {
		if sh.hot[i].name == "" {
			victim = i
			break
		}
	}
	if victim < 0 {
		for range hotSample {
			sh.hotHand = (sh.hotHand + 1) % len(sh.hot)
			c := &sh.hot[sh.hotHand]
			if victim < 0 {
				victim = sh.hotHand
				continue
			}
			v := &sh.hot[victim]
			if !c.denied && v.denied || c.denied == v.denied && c.seen < v.seen {
				victim = sh.hotHand
			}
		}
	}
	sh.hot[victim] = hk
}

// hasFreeHot reports whether addHot would take a free place.
func (sh *shard) hasFreeHot() bool {
	if sh.hot == nil {
		return sh.hotN > 0
	}
	for i := range sh.hot {
		if sh.hot[i].name == "" {
			return true
		}
	}
	return false
}

// forgetHot drops h's name, if kept.
func (sh *shard) forgetHot(h uint64) {
	if i := sh.findHot(h); i >= 0 {
		sh.hot[i] = hotKey{}
	}
}

// Hot lists up to n keys that were denied or more than half full and are
// not idle yet, fullest first.
func (s *Store) Hot(ctx context.Context, n int) ([]counter.HotKey, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []counter.HotKey
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		now := s.now()
		for j := range sh.hot {
			hk := &sh.hot[j]
			if hk.name == "" {
				continue
			}
			v := sh.get(hk.h, now)
			if v == 0 {
				*hk = hotKey{}
				continue
			}
			k := counter.HotKey{Key: hk.name, Kind: hk.kind, Interval: hk.interval, Burst: hk.burst, Level: v}
			if hk.kind == counter.KindRate {
				r := counter.Request{Kind: hk.kind, Op: counter.OpPeek, Interval: hk.interval, Burst: hk.burst, Cost: 1}
				_, _, k.RetryAfter, _ = counter.GCRA(now, v, &r)
				k.Level = level(v, now, hk.interval)
			}
			out = append(out, k)
		}
		sh.mu.Unlock()
	}
	counter.SortHot(out)
	if n >= 0 && len(out) > n {
		out = out[:n]
	}
	return out, nil
}

// level is the number of units in a rate bucket whose tat is v.
func level(v, now, interval int64) int64 {
	d := v - now
	if d <= 0 || interval <= 0 {
		return 0
	}
	return (d + interval - 1) / interval
}
