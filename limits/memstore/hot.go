package memstore

import (
	"cmp"
	"context"
	"slices"

	"sluice/limits/counter"
)

// hotKey remembers the name and parameters of a key that was denied or
// more than half full, so an admin can list it. Cold keys have none: the
// table knows them only by hash.
type hotKey struct {
	h        uint64
	kind     counter.Kind
	interval int64
	burst    int64
	seen     int64 // last noted, Unix ns
}

// hotKeys bounds the names kept, about 10 bytes of table per name for a
// typical 60-byte key: an admin reads the top of the list, not all of it.
const hotKeys = 10_000

// isHot reports whether a take's result makes its key worth naming.
func isHot(r *counter.Request) bool {
	return r.Op == counter.OpTake && (!r.Allowed || r.Level*2 > r.Burst)
}

// noteHot records r's key in the shard's hot set; sh is locked.
func (sh *shard) noteHot(h uint64, r *counter.Request, now int64) {
	if hk := sh.hot[string(r.Key)]; hk != nil {
		hk.h, hk.kind, hk.interval, hk.burst, hk.seen = h, r.Kind, r.Interval, r.Burst, now
		return
	}
	if sh.hot == nil {
		sh.hot = make(map[string]*hotKey)
	}
	if len(sh.hot) >= sh.hotN {
		sh.dropHot(now)
	}
	sh.hot[string(r.Key)] = &hotKey{h: h, kind: r.Kind, interval: r.Interval, burst: r.Burst, seen: now}
}

// dropHot makes room in a full hot set: a key no longer tracked or idle
// goes first, else the one noted longest ago.
func (sh *shard) dropHot(now int64) {
	var oldest string
	var at int64
	for name, hk := range sh.hot {
		if sh.get(hk.h, now) == 0 {
			delete(sh.hot, name)
			return
		}
		if oldest == "" || hk.seen < at {
			oldest, at = name, hk.seen
		}
	}
	delete(sh.hot, oldest)
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
		for name, hk := range sh.hot {
			v := sh.get(hk.h, now)
			if v == 0 {
				delete(sh.hot, name)
				continue
			}
			k := counter.HotKey{Key: name, Kind: hk.kind, Interval: hk.interval, Burst: hk.burst, Level: v}
			if hk.kind == counter.KindRate {
				r := counter.Request{Kind: hk.kind, Op: counter.OpPeek, Interval: hk.interval, Burst: hk.burst, Cost: 1}
				_, _, k.RetryAfter, _ = counter.GCRA(now, v, &r)
				k.Level = level(v, now, hk.interval)
			}
			out = append(out, k)
		}
		sh.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b counter.HotKey) int {
		return cmp.Or(
			cmp.Compare(fullness(b), fullness(a)),
			cmp.Compare(b.RetryAfter, a.RetryAfter),
			cmp.Compare(a.Key, b.Key))
	})
	if n >= 0 && len(out) > n {
		out = out[:n]
	}
	return out, nil
}

func fullness(k counter.HotKey) float64 {
	if k.Burst <= 0 {
		return float64(k.Level) + 1 // any use of a zero limit is over it
	}
	return float64(k.Level) / float64(k.Burst)
}

// level is the number of units in a rate bucket whose tat is v.
func level(v, now, interval int64) int64 {
	d := v - now
	if d <= 0 || interval <= 0 {
		return 0
	}
	return (d + interval - 1) / interval
}
