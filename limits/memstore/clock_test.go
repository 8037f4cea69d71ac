package memstore

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"sluice/limits/counter"
)

// steppedClock is a machine's two clocks: the monotonic one, which only
// advances, and the wall clock, which also jumps when stepped.
type steppedClock struct {
	mono atomic.Int64 // nanoseconds since boot
	step atomic.Int64 // sum of the steps of the wall clock
	boot int64        // Unix nanoseconds at boot
}

func newSteppedClock() *steppedClock {
	return &steppedClock{boot: time.Date(2025, 3, 30, 0, 30, 0, 0, time.UTC).UnixNano()}
}

func (c *steppedClock) advance(d time.Duration)  { c.mono.Add(int64(d)) }
func (c *steppedClock) stepWall(d time.Duration) { c.step.Add(int64(d)) }

func (c *steppedClock) Mono() int64 { return c.mono.Load() }
func (c *steppedClock) Wall() int64 { return c.boot + c.mono.Load() + c.step.Load() }

func (c *steppedClock) storeClock() *wallClock { return newClockFrom(c) }

// withWallClock makes the store read c, refreshed as the real clock is.
func withWallClock(c *wallClock) Option {
	return func(s *Store) { s.clock, s.now = c, c.now }
}

// The store's time follows the monotonic clock: a wall clock stepped back
// an hour does not move it, a step forward is caught up with (as after a
// suspend), and it never runs backwards.
func TestClockFollowsMonotonicClock(t *testing.T) {
	sc := newSteppedClock()
	c := sc.storeClock()
	t0 := c.now()
	if t0 != sc.boot {
		t.Fatalf("store time at start %d, wall clock %d", t0, sc.boot)
	}

	sc.advance(5 * time.Second)
	sc.stepWall(-time.Hour)
	c.refresh()
	if got := c.now() - t0; got != int64(5*time.Second) {
		t.Errorf("after 5s and a step back of 1h the store's time moved %v, want 5s", time.Duration(got))
	}

	sc.advance(5 * time.Second)
	sc.stepWall(time.Hour) // the wall clock is right again
	c.refresh()
	if got := c.now() - t0; got != int64(10*time.Second) {
		t.Errorf("after 10s and the wall clock set right the store's time moved %v, want 10s", time.Duration(got))
	}

	sc.advance(5 * time.Second)
	sc.stepWall(time.Hour)
	c.refresh()
	if got := c.now() - t0; got != int64(time.Hour+15*time.Second) {
		t.Errorf("after 15s and a step forward of 1h the store's time moved %v, want 1h0m15s", time.Duration(got))
	}

	last := c.now()
	sc.stepWall(-2 * time.Hour)
	for range 10 {
		sc.advance(time.Millisecond)
		c.refresh()
		if now := c.now(); now <= last {
			t.Fatalf("store time went from %d to %d", last, now)
		}
		last = c.now()
	}
}

// With the wall clock stepped an hour back, forward, or both during a
// run, a full bucket frees no earlier than its window less the step and
// no later than its window plus the step; and when the wall clock only
// goes back (or back and then right again) each window is measured on the
// monotonic clock, to the second.
func TestClockStepsDuringARun(t *testing.T) {
	const step = time.Hour
	type stepAt struct {
		at time.Duration // since the bucket was filled
		d  time.Duration
	}
	scenarios := []struct {
		name  string
		steps []stepAt
		exact bool // the window must be its length exactly
	}{
		{"back", []stepAt{{time.Minute, -step}}, true},
		{"forward", []stepAt{{time.Minute, step}}, false},
		{"back then forward", []stepAt{{time.Minute, -step}, {2 * time.Minute, step}}, true},
		{"forward then back", []stepAt{{time.Minute, step}, {2 * time.Minute, -step}}, false},
		{"back twice", []stepAt{{time.Minute, -step / 2}, {3 * time.Minute, -step / 2}}, true},
	}
	windows := []struct {
		n      int64
		window time.Duration
	}{{10, 10 * time.Minute}, {60, time.Hour}, {120, 2 * time.Hour}, {1000, 24 * time.Hour}}

	for _, sc := range scenarios {
		for _, w := range windows {
			t.Run(fmt.Sprintf("%s/%d per %v", sc.name, w.n, w.window), func(t *testing.T) {
				clk := newSteppedClock()
				s, err := New(Config{MaxKeys: 1000}, zaptest.NewLogger(t), withWallClock(clk.storeClock()))
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				ctx := context.Background()
				req := func(op counter.Op, cost int64) counter.Request {
					return counter.Request{Key: []byte("r:0:sender:a@example.test"), Kind: counter.KindRate, Op: op,
						Interval: int64(w.window) / w.n, Burst: w.n, Cost: cost, Blocking: true}
				}
				do := func(r counter.Request) counter.Request {
					t.Helper()
					rs := []counter.Request{r}
					if err := s.Do(ctx, rs); err != nil {
						t.Fatal(err)
					}
					return rs[0]
				}
				for i := range w.n {
					if r := do(req(counter.OpTake, 1)); !r.Allowed {
						t.Fatalf("take %d of %d refused", i+1, w.n)
					}
				}
				if r := do(req(counter.OpTake, 1)); r.Allowed {
					t.Fatalf("take %d of %d allowed", w.n+1, w.n)
				}

				// Second by second, as the background loop would, until a
				// take of the whole burst fits: the bucket is empty.
				const tick = time.Second
				next := 0
				var elapsed time.Duration
				for elapsed = 0; elapsed <= w.window+2*step; elapsed += tick {
					for next < len(sc.steps) && sc.steps[next].at <= elapsed {
						clk.stepWall(sc.steps[next].d)
						next++
					}
					s.clock.refresh()
					if do(req(counter.OpPeek, w.n)).Allowed {
						break
					}
					clk.advance(tick)
				}
				t.Logf("freed after %v (window %v)", elapsed, w.window)
				if elapsed < w.window-step {
					t.Errorf("freed after %v: earlier than the window %v less the step %v", elapsed, w.window, step)
				}
				if elapsed > w.window+step {
					t.Errorf("still locked after %v: longer than the window %v plus the step %v", elapsed, w.window, step)
				}
				if sc.exact && elapsed != w.window {
					t.Errorf("freed after %v of monotonic time, want exactly the window %v", elapsed, w.window)
				}
			})
		}
	}
}
