package memstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"sluice/conf"
	"sluice/limits/counter"
	"sluice/limits/counter/countertest"
)

func newTestStore(t testing.TB, cfg Config, now func() int64, opts ...Option) *Store {
	t.Helper()
	s, err := New(cfg, zaptest.NewLogger(t), append([]Option{WithClock(now)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSuite(t *testing.T) {
	countertest.Suite(t, func(t *testing.T, now func() int64) counter.Store {
		return newTestStore(t, Config{}, now)
	})
}

func TestProperty(t *testing.T) {
	opt := countertest.PropertyOptions{Seed: 1, Sequences: 3000}
	if testing.Short() || raceEnabled {
		opt.Sequences = 200
	}
	countertest.Property(t, func(t *testing.T, now func() int64) counter.Store {
		// A small table, so that growth, reclaim and deletion run under
		// the property too.
		return newTestStore(t, Config{MaxKeys: 100_000}, now)
	}, opt)
}

func TestConfig(t *testing.T) {
	var c Config
	c.Defaults()
	if c.MaxKeys != 1_000_000 || c.SnapshotInterval.D() != 30*time.Second || c.Snapshot != "" {
		t.Errorf("defaults: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	for _, tc := range []struct {
		c   Config
		key string
	}{
		{Config{MaxKeys: -1, SnapshotInterval: conf.Duration(time.Minute)}, "max_keys"},
		{Config{MaxKeys: 1 << 31, SnapshotInterval: conf.Duration(time.Minute)}, "max_keys"},
		{Config{MaxKeys: 10, SnapshotInterval: conf.Duration(time.Millisecond)}, "snapshot_interval"},
	} {
		err := tc.c.Validate()
		var ce *conf.Error
		if !errors.As(err, &ce) || len(ce.Path) != 1 || ce.Path[0] != tc.key {
			t.Errorf("%+v: error %v, want one about %s", tc.c, err, tc.key)
		}
	}
	if _, err := New(Config{MaxKeys: -5}, nil); err == nil {
		t.Errorf("New accepted max_keys = -5")
	}
}

func rate(key string) counter.Request {
	return countertest.Rate(key, 1, time.Second, 1)
}

func take(t testing.TB, s *Store, reqs ...counter.Request) {
	t.Helper()
	if err := s.Do(context.Background(), reqs); err != nil {
		t.Fatal(err)
	}
}

// peek returns the level of r's key.
func peek(t testing.TB, s *Store, r counter.Request) int64 {
	t.Helper()
	r.Op = counter.OpPeek
	reqs := []counter.Request{r}
	take(t, s, reqs...)
	return reqs[0].Level
}

func TestMaxKeysBound(t *testing.T) {
	clock := countertest.NewClock()
	s := newTestStore(t, Config{MaxKeys: 1000}, clock.Now)
	defer s.Close()
	for i := range 20_000 {
		take(t, s, rate(fmt.Sprint("ip:2001:db8::", i)))
	}
	if n := s.Len(); n > 1000 || n < 900 {
		t.Errorf("Len = %d with max_keys 1000", n)
	}
	// The newest key is tracked: eviction makes room, it never refuses.
	if l := peek(t, s, rate("ip:2001:db8::19999")); l != 1 {
		t.Errorf("newest key not tracked: level %d", l)
	}
}

func TestMaxKeysSparesHeldSlots(t *testing.T) {
	clock := countertest.NewClock()
	s := newTestStore(t, Config{MaxKeys: 1000}, clock.Now)
	defer s.Close()
	for i := range 200 {
		take(t, s, countertest.Slots(fmt.Sprint("conc:", i), 5, "h"))
	}
	for i := range 50_000 {
		take(t, s, rate(fmt.Sprint("flood:", i)))
	}
	for i := range 200 {
		if peek(t, s, countertest.Slots(fmt.Sprint("conc:", i), 5, "h")) != 1 {
			t.Fatalf("conc:%d lost its slot in a flood", i)
		}
	}
}

func TestIdleKeysReclaimed(t *testing.T) {
	clock := countertest.NewClock()
	s := newTestStore(t, Config{MaxKeys: 10_000}, clock.Now)
	defer s.Close()
	// 100 waves of 1000 keys, each idle a second later: the bound holds,
	// and eviction takes idle keys, never the live wave.
	for wave := range 100 {
		for i := range 1000 {
			take(t, s, rate(fmt.Sprint(wave, ":", i)))
		}
		if n := s.Len(); n > 10_000 {
			t.Fatalf("wave %d: Len %d above max_keys", wave, n)
		}
		for i := range 1000 {
			if peek(t, s, rate(fmt.Sprint(wave, ":", i))) != 1 {
				t.Fatalf("wave %d: live key %d evicted while idle keys were there", wave, i)
			}
		}
		clock.Advance(time.Second)
	}
	// The sweep takes the rest.
	for i := range s.shards {
		s.sweepShard(i)
	}
	if n := s.Len(); n != 0 {
		t.Errorf("Len = %d after every key went idle and a sweep", n)
	}
}

func TestHotNamesBounded(t *testing.T) {
	clock := countertest.NewClock()
	s := newTestStore(t, Config{}, clock.Now)
	defer s.Close()
	for i := range 50_000 {
		take(t, s, rate(fmt.Sprint("hot:", i))) // 1 of burst 1: hot
	}
	names := 0
	for i := range s.shards {
		names += len(s.shards[i].hot)
	}
	if names > hotKeys || names < hotKeys/2 {
		t.Errorf("%d hot names kept, bound %d", names, hotKeys)
	}
	hot, err := s.Hot(context.Background(), 20)
	if err != nil || len(hot) != 20 {
		t.Fatalf("Hot(20): %d keys, %v", len(hot), err)
	}
}

func TestClosed(t *testing.T) {
	clock := countertest.NewClock()
	s := newTestStore(t, Config{}, clock.Now)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.Do(context.Background(), []counter.Request{rate("k")}); !errors.Is(err, ErrClosed) {
		t.Errorf("Do after Close: %v", err)
	}
	if err := s.Reset(context.Background(), [][]byte{[]byte("k")}); !errors.Is(err, ErrClosed) {
		t.Errorf("Reset after Close: %v", err)
	}
}

func TestZeroAllocs(t *testing.T) {
	clock := countertest.NewClock()
	s := newTestStore(t, Config{}, clock.Now)
	defer s.Close()
	ctx := context.Background()
	cold := []counter.Request{countertest.Rate("cold", 1000, time.Second, 1000)}
	hot := []counter.Request{countertest.Rate("hot", 1, time.Hour, 1)}
	three := []counter.Request{rate("a"), rate("b"), countertest.Slots("c", 5, "h")}
	for _, reqs := range [][]counter.Request{cold, hot, three} {
		s.Do(ctx, reqs)
		if n := testing.AllocsPerRun(1000, func() { s.Do(ctx, reqs) }); n != 0 {
			t.Errorf("Do(%s...): %.1f allocs", reqs[0].Key, n)
		}
	}
}

// TestParallel runs multi-key events over shared keys from many goroutines
// next to every other operation; run with -race. Events lock several
// shards in one step, so a lock-order mistake deadlocks here.
func TestParallel(t *testing.T) {
	clock := countertest.NewClock()
	s := newTestStore(t, Config{MaxKeys: 5000, Snapshot: t.TempDir() + "/snap"}, clock.Now)
	defer s.Close()
	ctx := context.Background()
	const slots = 4
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			for i := range 3000 {
				reqs := []counter.Request{countertest.Slots(fmt.Sprint("conc:", rng.IntN(4)), slots, fmt.Sprint(w, i))}
				for range 1 + rng.IntN(4) {
					reqs = append(reqs, countertest.Rate(fmt.Sprint("k", rng.IntN(10_000)), 10, time.Second, 10))
				}
				if err := s.Do(ctx, reqs); err != nil {
					errc <- err
					return
				}
				if reqs[0].Level > slots {
					errc <- fmt.Errorf("%d slots held, limit %d", reqs[0].Level, slots)
					return
				}
				if reqs[0].Allowed && reqs[0].Level > 0 {
					reqs[0].Op = counter.OpRefund
					if err := s.Do(ctx, reqs[:1]); err != nil {
						errc <- err
						return
					}
				}
				clock.Advance(time.Microsecond)
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-errc:
				return
			default:
			}
			if _, err := s.Hot(ctx, 10); err != nil {
				errc <- err
				return
			}
			s.Len()
			s.Reset(ctx, [][]byte{[]byte(fmt.Sprint("k", i%10_000))})
			s.SetAllow(ctx, fmt.Sprint("sender:", i%5), time.Unix(0, clock.Now()).Add(time.Hour))
			s.Allows(ctx)
			s.sweepShard(i % len(s.shards))
			if i%50 == 0 {
				s.writeSnapshot()
			}
			if i > 300 {
				return
			}
		}
	}()
	wg.Wait()
	<-done
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	for c := range 4 {
		if l := peek(t, s, countertest.Slots(fmt.Sprint("conc:", c), slots, "x")); l != 0 {
			t.Errorf("conc:%d: %d slots left held", c, l)
		}
	}
}

// TestEventOnOneShard: requests of one event that share a shard, or a key,
// each see what the earlier ones did.
func TestEventOnOneShard(t *testing.T) {
	clock := countertest.NewClock()
	s := newTestStore(t, Config{MaxKeys: 100}, clock.Now) // one shard
	defer s.Close()
	if len(s.shards) != 1 {
		t.Fatalf("%d shards", len(s.shards))
	}
	var reqs []counter.Request
	for i := range 40 {
		reqs = append(reqs, countertest.Rate(fmt.Sprint("new:", i), 1, time.Hour, 5))
	}
	take(t, s, reqs...)
	for i := range 40 {
		if l := peek(t, s, countertest.Rate(fmt.Sprint("new:", i), 1, time.Hour, 5)); l != 1 {
			t.Errorf("new:%d: level %d after one event, want 1", i, l)
		}
	}
	twice := []counter.Request{countertest.Rate("twice", 1, time.Hour, 5), countertest.Rate("twice", 1, time.Hour, 5)}
	take(t, s, twice...)
	if twice[0].Level != 1 || twice[1].Level != 2 {
		t.Errorf("one key twice in an event: levels %d, %d, want 1, 2", twice[0].Level, twice[1].Level)
	}
	if l := peek(t, s, twice[0]); l != 2 {
		t.Errorf("stored level %d, want 2", l)
	}
}
