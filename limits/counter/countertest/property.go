// Package countertest holds the tests every counter.Store must pass — the
// GCRA property test against a sliding-log model and the semantics suite.
package countertest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"sluice/limits/counter"
)

// Clock is the time a store under test reads, moved by the test only.
type Clock struct{ ns atomic.Int64 }

// Start is where test clocks begin: a realistic Unix time, so stores that
// treat 0 as "no state" are exercised as in production.
const Start = int64(1_700_000_000_000_000_000)

// NewClock returns a clock at Start.
func NewClock() *Clock {
	c := &Clock{}
	c.ns.Store(Start)
	return c
}

// Now returns the time in Unix nanoseconds; pass it to the store.
func (c *Clock) Now() int64 { return c.ns.Load() }

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// NewStore makes an empty store that reads the time from now (Unix ns).
// The test closes it.
type NewStore func(t *testing.T, now func() int64) counter.Store

// PropertyOptions sizes the property test; zero values take defaults.
type PropertyOptions struct {
	Seed      uint64 // first sequence's seed; each sequence i uses Seed+i
	Sequences int    // default 500
	Events    int    // per sequence, default 200
}

// Property runs random sequences of events against a store and, event by
// event, against the reference model (model.go), and checks:
//
//  1. every result — Allowed, RetryAfter, Level — equals the model's;
//  2. in every window of the rule's period W = N·T that ends at an
//     admitted take, the units applied are at most B + N - 1; so no window
//     of length W ever holds more than N + B admitted units (the
//     documented bound; one less in a half-open window because admissions are T
//     apart in the steady state and the burst is spent at one instant);
//  3. a take is never refused when the units in the closed window
//     [t-W, t] plus its cost are at most min(N, B): a client below the
//     rate is never refused. (Below min(N, B) because a burst smaller
//     than N refuses clumps a slower average would allow, and no client
//     gets more than its burst at once.) This holds for non-strict rules;
//     a strict rule also counts refused attempts, which is its point.
//
// 2 and 3 follow from 1; they are checked on their own so that a model
// mistake cannot hide a store mistake. Each event holds one to three
// requests on distinct keys with random Blocking flags, so the
// all-or-nothing rule of counter.Store is checked too. Concurrency keys
// take and release slots by holder, as a session does. Distinct keys
// take, peek at and give back members of a small alphabet, so members
// come back within and after their window; their results (Allowed,
// RetryAfter, Level, Changed) must equal an exact model that remembers
// every member.
func Property(t *testing.T, newStore NewStore, opt PropertyOptions) {
	t.Helper()
	if opt.Sequences == 0 {
		opt.Sequences = 500
	}
	if opt.Events == 0 {
		opt.Events = 200
	}
	clock := NewClock()
	st := newStore(t, clock.Now)
	defer st.Close()
	for i := range opt.Sequences {
		seed := opt.Seed + uint64(i)
		p := newPropRun(t, st, clock, seed, fmt.Sprintf("p%d-%d", seed, i))
		for ev := range opt.Events {
			if !p.step(ev) {
				t.Fatalf("property failed: seed %d (sequence %d), event %d\nrules: %s\nlast events:\n%s",
					seed, i, ev, p.describeRules(), strings.Join(p.trace, "\n"))
			}
		}
	}
}

type propRun struct {
	t      *testing.T
	st     counter.Store
	clock  *Clock
	rng    *rand.Rand
	prefix string
	rates  []*rateLog
	n      []int64 // N per rate key: period = N·interval
	slots  []*slotModel
	dists  []*distinctModel
	nextID int
	trace  []string
}

func newPropRun(t *testing.T, st counter.Store, clock *Clock, seed uint64, prefix string) *propRun {
	p := &propRun{t: t, st: st, clock: clock, rng: rand.New(rand.NewPCG(seed, 0x5eed)), prefix: prefix}
	intervals := []int64{1, 3, 1000, int64(time.Millisecond), int64(time.Second), int64(time.Minute)}
	for range 1 + p.rng.IntN(3) {
		n := 1 + p.rng.Int64N(20)
		m := &rateLog{
			interval: intervals[p.rng.IntN(len(intervals))],
			burst:    p.rng.Int64N(2*n + 3),
			strict:   p.rng.IntN(4) == 0,
			blocking: p.rng.IntN(4) != 0,
		}
		p.rates = append(p.rates, m)
		p.n = append(p.n, n)
	}
	if p.rng.IntN(2) == 0 {
		p.slots = append(p.slots, &slotModel{burst: p.rng.Int64N(5), blocking: p.rng.IntN(4) != 0})
	}
	if p.rng.IntN(2) == 0 {
		windows := []int64{1000, 3000, int64(time.Millisecond), int64(time.Second), int64(time.Minute)}
		p.dists = append(p.dists, &distinctModel{window: windows[p.rng.IntN(len(windows))],
			burst: 1 + p.rng.Int64N(5), blocking: p.rng.IntN(4) != 0, seen: map[string]int64{}})
	}
	return p
}

func (p *propRun) describeRules() string {
	var b strings.Builder
	for i, m := range p.rates {
		fmt.Fprintf(&b, "rate%d{N=%d T=%d B=%d strict=%v blocking=%v} ", i, p.n[i], m.interval, m.burst, m.strict, m.blocking)
	}
	for i, m := range p.slots {
		fmt.Fprintf(&b, "slots%d{max=%d blocking=%v} ", i, m.burst, m.blocking)
	}
	for i, m := range p.dists {
		fmt.Fprintf(&b, "distinct%d{max=%d window=%d blocking=%v} ", i, m.burst, m.window, m.blocking)
	}
	return b.String()
}

func (p *propRun) logf(format string, args ...any) {
	p.trace = append(p.trace, fmt.Sprintf("  t=+%d ", p.clock.Now()-Start)+fmt.Sprintf(format, args...))
	if len(p.trace) > 12 {
		p.trace = p.trace[1:]
	}
}

// advance moves time by a step typical of the rule's interval: often not
// at all, often a fraction or an exact multiple of an interval (the
// boundaries where off-by-one errors live), sometimes long enough to idle.
func (p *propRun) advance() {
	T := p.rates[p.rng.IntN(len(p.rates))].interval
	if len(p.dists) > 0 && p.rng.IntN(3) == 0 {
		T = p.dists[0].window / int64(1+p.rng.IntN(4))
	}
	var d int64
	switch r := p.rng.IntN(20); {
	case r < 6:
	case r < 11:
		d = p.rng.Int64N(2*T + 1)
	case r < 15:
		d = T * p.rng.Int64N(4)
	case r < 17:
		d = T*p.rng.Int64N(4) - 1
	case r < 19:
		d = T * p.rng.Int64N(40)
	default:
		d = T * 100
	}
	p.clock.Advance(time.Duration(max(d, 0)))
}

type want struct {
	allowed bool
	retry   int64 // -1: unspecified (a cost above the burst is never admitted)
	level   int64
	changed bool // distinct: the member was new
}

// step runs one event and reports whether the store agreed with the model.
func (p *propRun) step(ev int) bool {
	p.advance()
	now := p.clock.Now()
	// Pick distinct keys: rate keys by index, then slot keys, then
	// distinct keys after them.
	nkeys := len(p.rates) + len(p.slots) + len(p.dists)
	order := p.rng.Perm(nkeys)[:1+p.rng.IntN(min(3, nkeys))]
	reqs := make([]counter.Request, len(order))
	holders := make([]string, len(order))
	firstDist := len(p.rates) + len(p.slots)
	for i, k := range order {
		r := &reqs[i]
		if k >= firstDist {
			m := p.dists[k-firstDist]
			holders[i] = fmt.Sprintf("m%d.example", p.rng.IntN(int(m.burst)+3))
			*r = distinctReq(p.prefix, k-firstDist, m, holders[i])
			switch x := p.rng.IntN(10); {
			case x < 7:
			case x < 9:
				r.Op = counter.OpPeek
			default:
				r.Op = counter.OpRefund
			}
			continue
		}
		if k < len(p.rates) {
			m := p.rates[k]
			*r = counter.Request{
				Key: []byte(fmt.Sprintf("%s:rate%d", p.prefix, k)), Kind: counter.KindRate,
				Interval: m.interval, Burst: m.burst, Cost: 1,
				Blocking: m.blocking, Strict: m.strict,
			}
			switch x := p.rng.IntN(20); {
			case x < 13:
				r.Op = counter.OpTake
			case x < 17:
				r.Op = counter.OpRefund
			default:
				r.Op = counter.OpPeek
			}
			if p.rng.IntN(5) == 0 {
				r.Cost = p.rng.Int64N(m.burst + 3)
			}
			continue
		}
		m := p.slots[k-len(p.rates)]
		*r = counter.Request{
			Key: []byte(fmt.Sprintf("%s:slots%d", p.prefix, k-len(p.rates))), Kind: counter.KindConcurrent,
			Burst: m.burst, Cost: 1, Blocking: m.blocking, Op: counter.OpTake,
		}
		switch x := p.rng.IntN(10); {
		case x < 4 && len(m.holders) > 0:
			r.Op = counter.OpRefund
			holders[i] = m.holders[p.rng.IntN(len(m.holders))]
		case x < 5:
			r.Op = counter.OpPeek
		default:
			p.nextID++
			holders[i] = fmt.Sprintf("%s:session%d", p.prefix, p.nextID)
		}
		r.Holder = []byte(holders[i])
	}

	// The model judges every request on the state before the event.
	wants := make([]want, len(reqs))
	refused := false
	for i, k := range order {
		r := &reqs[i]
		w := &wants[i]
		w.allowed = true
		if k >= firstDist {
			if r.Op != counter.OpRefund {
				w.allowed, w.retry, w.level = p.dists[k-firstDist].judge(now, holders[i])
			}
		} else if k < len(p.rates) {
			m := p.rates[k]
			if r.Op != counter.OpRefund {
				w.allowed, w.retry = m.judge(now, r.Cost)
			}
		} else if m := p.slots[k-len(p.rates)]; r.Op != counter.OpRefund {
			w.allowed = int64(len(m.holders)) < m.burst
		}
		if !w.allowed && r.Blocking && r.Op == counter.OpTake {
			refused = true
		}
	}
	// Property 3 is about the state before the event, so check it first.
	for i, k := range order {
		if k >= len(p.rates) || reqs[i].Op != counter.OpTake {
			continue
		}
		m, n := p.rates[k], p.n[k]
		W := n * m.interval
		if !m.strict && m.unitsInClosed(now-W, now)+reqs[i].Cost <= min(n, m.burst) && !wants[i].allowed {
			p.logf("model refuses a client below the rate on rate%d: %d units in the last period, cost %d",
				k, m.unitsInClosed(now-W, now), reqs[i].Cost)
			return false
		}
	}
	// Then applies what the store must apply.
	for i, k := range order {
		r := &reqs[i]
		w := &wants[i]
		apply := r.Op != counter.OpPeek && (r.Strict || w.allowed && !refused)
		if k >= firstDist {
			m := p.dists[k-firstDist]
			if apply && r.Op == counter.OpRefund {
				if _, ok := m.seen[holders[i]]; ok {
					delete(m.seen, holders[i])
				}
			} else if apply {
				w.changed = m.add(now, holders[i])
			}
			w.level = int64(len(m.live(now)))
			continue
		}
		if k < len(p.rates) {
			m := p.rates[k]
			if apply {
				if r.Op == counter.OpRefund {
					m.refund(r.Cost)
				} else {
					m.add(now, r.Cost)
				}
			}
			w.level = m.level(now)
			continue
		}
		m := p.slots[k-len(p.rates)]
		if apply {
			if r.Op == counter.OpRefund {
				for j, h := range m.holders {
					if h == holders[i] {
						m.holders = append(m.holders[:j], m.holders[j+1:]...)
						break
					}
				}
			} else {
				m.holders = append(m.holders, holders[i])
			}
		}
		w.level = int64(len(m.holders))
	}

	if err := p.st.Do(context.Background(), reqs); err != nil {
		p.logf("Do: %v", err)
		return false
	}
	ok := true
	for i, k := range order {
		r, w := &reqs[i], wants[i]
		p.logf("event %d: %s op=%d cost=%d member=%s -> allowed=%v retry=%d level=%d changed=%v (model %v %d %d %v) refused=%v",
			ev, r.Key, r.Op, r.Cost, r.Member, r.Allowed, r.RetryAfter, r.Level, r.Changed, w.allowed, w.retry, w.level, w.changed, refused)
		if r.Allowed != w.allowed || r.Level != w.level {
			ok = false
		}
		if (k < len(p.rates) || k >= firstDist) && !r.Allowed && w.retry >= 0 && int64(r.RetryAfter) != w.retry {
			ok = false
		}
		if k >= firstDist && r.Changed != w.changed {
			ok = false
		}
		if r.Allowed && r.RetryAfter != 0 {
			ok = false
		}
		// Property 2: the window of length W ending now.
		if k < len(p.rates) && r.Op == counter.OpTake && r.Allowed && !refused {
			m, n := p.rates[k], p.n[k]
			W := n * m.interval
			if got := m.unitsIn(now-W, now); got > m.burst+n-1 || got > n+m.burst {
				p.logf("rate%d: %d units in a window of the period (N=%d, B=%d)", k, got, n, m.burst)
				ok = false
			}
		}
	}
	return ok
}
