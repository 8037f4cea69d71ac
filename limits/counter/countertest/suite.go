package countertest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"sluice/limits/counter"
)

// Suite checks the semantics documented on counter.Store, one subtest per
// operation, each on a fresh store.
func Suite(t *testing.T, newStore NewStore) {
	tests := []struct {
		name string
		f    func(*testing.T, counter.Store, *Clock)
	}{
		{"RateBurstThenRefuse", testRateBurst},
		{"RateDrains", testRateDrains},
		{"RateRefund", testRateRefund},
		{"RatePeek", testRatePeek},
		{"RateCost", testRateCost},
		{"Concurrent", testConcurrent},
		{"AllOrNothing", testAllOrNothing},
		{"InvalidRequest", testInvalid},
		{"Cancelled", testCancelled},
		{"Reset", testReset},
		{"Allows", testAllows},
		{"Hot", testHot},
		{"Parallel", testParallel},
		{"Distinct", testDistinct},
		{"DistinctAllOrNothing", testDistinctAllOrNothing},
		{"Restrict", testRestrict},
		{"Override", testOverride},
		{"Claim", testClaim},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := NewClock()
			st := newStore(t, clock.Now)
			defer st.Close()
			tt.f(t, st, clock)
		})
	}
}

// Rate returns a take on a rate key: n per period, burst b.
func Rate(key string, n int64, period time.Duration, b int64) counter.Request {
	return counter.Request{Key: []byte(key), Kind: counter.KindRate, Op: counter.OpTake,
		Interval: int64(period) / n, Burst: b, Cost: 1, Blocking: true}
}

// Slots returns a take on a concurrency key with max slots.
func Slots(key string, max int64, holder string) counter.Request {
	return counter.Request{Key: []byte(key), Kind: counter.KindConcurrent, Op: counter.OpTake,
		Burst: max, Cost: 1, Blocking: true, Holder: []byte(holder)}
}

// Do runs one event and fails the test on error.
func Do(t *testing.T, st counter.Store, reqs ...*counter.Request) {
	t.Helper()
	rs := make([]counter.Request, len(reqs))
	for i, r := range reqs {
		rs[i] = *r
	}
	if err := st.Do(context.Background(), rs); err != nil {
		t.Fatalf("Do: %v", err)
	}
	for i, r := range reqs {
		*r = rs[i]
	}
}

func with(r counter.Request, f func(*counter.Request)) *counter.Request {
	f(&r)
	return &r
}

func peek(t *testing.T, st counter.Store, r counter.Request) counter.Request {
	t.Helper()
	r.Op = counter.OpPeek
	Do(t, st, &r)
	return r
}

func expect(t *testing.T, what string, r *counter.Request, allowed bool, level int64) {
	t.Helper()
	if r.Allowed != allowed || r.Level != level {
		t.Errorf("%s: allowed=%v level=%d, want allowed=%v level=%d", what, r.Allowed, r.Level, allowed, level)
	}
}

func testRateBurst(t *testing.T, st counter.Store, clock *Clock) {
	base := Rate("r", 10, time.Minute, 3) // one unit every 6s
	for i := range 3 {
		r := base
		Do(t, st, &r)
		expect(t, fmt.Sprintf("take %d", i+1), &r, true, int64(i+1))
		if r.RetryAfter != 0 {
			t.Errorf("take %d: RetryAfter %v on an admitted take", i+1, r.RetryAfter)
		}
	}
	r := base
	Do(t, st, &r)
	expect(t, "take 4", &r, false, 3)
	if r.RetryAfter != 6*time.Second {
		t.Errorf("take 4: RetryAfter %v, want 6s", r.RetryAfter)
	}
	clock.Advance(6*time.Second - 1)
	r = base
	Do(t, st, &r)
	expect(t, "1ns before the retry time", &r, false, 3)
	if r.RetryAfter != 1 {
		t.Errorf("RetryAfter %v, want 1ns", r.RetryAfter)
	}
	clock.Advance(1)
	r = base
	Do(t, st, &r)
	expect(t, "at the retry time", &r, true, 3)
}

func testRateDrains(t *testing.T, st counter.Store, clock *Clock) {
	base := Rate("drain", 10, time.Minute, 5)
	for range 5 {
		r := base
		Do(t, st, &r)
	}
	clock.Advance(6*time.Second + 1) // one unit and a bit drained: 4 left, level rounds up
	if got := peek(t, st, base); got.Level != 4 || !got.Allowed {
		t.Errorf("after 6s: level %d allowed %v, want 4 true", got.Level, got.Allowed)
	}
	clock.Advance(30 * time.Second)
	if got := peek(t, st, base); got.Level != 0 || !got.Allowed || got.RetryAfter != 0 {
		t.Errorf("after idle: %+v, want level 0, allowed", got)
	}
	// From idle the whole burst is there again.
	for i := range 5 {
		r := base
		Do(t, st, &r)
		expect(t, fmt.Sprintf("take %d after idle", i+1), &r, true, int64(i+1))
	}
}

func testRateRefund(t *testing.T, st counter.Store, clock *Clock) {
	base := Rate("refund", 10, time.Minute, 5)
	for range 3 {
		r := base
		Do(t, st, &r)
	}
	ref := with(base, func(r *counter.Request) { r.Op = counter.OpRefund; r.Cost = 2 })
	Do(t, st, ref)
	expect(t, "refund 2 of 3", ref, true, 1)
	ref = with(base, func(r *counter.Request) { r.Op = counter.OpRefund; r.Cost = 5 })
	Do(t, st, ref)
	expect(t, "refund more than taken", ref, true, 0)
	ref = with(base, func(r *counter.Request) { r.Key = []byte("never-seen"); r.Op = counter.OpRefund })
	Do(t, st, ref)
	expect(t, "refund of an unknown key", ref, true, 0)
	if got := peek(t, st, *with(base, func(r *counter.Request) { r.Key = []byte("never-seen") })); got.Level != 0 {
		t.Errorf("a refund created state: level %d", got.Level)
	}
}

func testRatePeek(t *testing.T, st counter.Store, clock *Clock) {
	base := Rate("peek", 1, time.Hour, 1)
	r := base
	Do(t, st, &r)
	for range 3 {
		p := peek(t, st, base)
		expect(t, "peek at a full bucket", &p, false, 1)
		if p.RetryAfter != time.Hour {
			t.Errorf("peek RetryAfter %v, want 1h", p.RetryAfter)
		}
	}
	clock.Advance(time.Hour)
	p := peek(t, st, base)
	expect(t, "peek once drained", &p, true, 0)
}

func testRateCost(t *testing.T, st counter.Store, clock *Clock) {
	// bytes: 1000 per second, burst 5000
	base := counter.Request{Key: []byte("bytes"), Kind: counter.KindRate, Op: counter.OpTake,
		Interval: int64(time.Millisecond), Burst: 5000, Cost: 3000, Blocking: true}
	r := base
	Do(t, st, &r)
	expect(t, "3000 of 5000", &r, true, 3000)
	r = base
	Do(t, st, &r)
	expect(t, "6000 of 5000", &r, false, 3000)
	if r.RetryAfter != time.Second {
		t.Errorf("RetryAfter %v, want 1s", r.RetryAfter)
	}
	r = base
	r.Cost = 6000
	clock.Advance(time.Hour)
	Do(t, st, &r)
	expect(t, "a cost above the burst, from idle", &r, false, 0)
	r = base
	r.Cost = 0
	Do(t, st, &r)
	expect(t, "cost 0", &r, true, 0)
}

func testConcurrent(t *testing.T, st counter.Store, clock *Clock) {
	for i := range 2 {
		r := Slots("conc", 2, fmt.Sprint("s", i))
		Do(t, st, &r)
		expect(t, fmt.Sprintf("slot %d", i+1), &r, true, int64(i+1))
	}
	r := Slots("conc", 2, "s2")
	Do(t, st, &r)
	expect(t, "third slot", &r, false, 2)
	p := peek(t, st, Slots("conc", 2, "s2"))
	expect(t, "peek", &p, false, 2)
	clock.Advance(24 * time.Hour) // slots are held until released, whatever the time
	rel := with(Slots("conc", 2, "s0"), func(r *counter.Request) { r.Op = counter.OpRefund })
	Do(t, st, rel)
	expect(t, "release one", rel, true, 1)
	r = Slots("conc", 2, "s3")
	Do(t, st, &r)
	expect(t, "take after release", &r, true, 2)
	for _, h := range []string{"s1", "s3"} {
		rel := with(Slots("conc", 2, h), func(r *counter.Request) { r.Op = counter.OpRefund })
		Do(t, st, rel)
	}
	p = peek(t, st, Slots("conc", 2, "x"))
	expect(t, "all released", &p, true, 0)
}

// testAllOrNothing: A is within its limit, B is over it.
func testAllOrNothing(t *testing.T, st counter.Store, clock *Clock) {
	cases := []struct {
		name              string
		a, b              func(*counter.Request)
		appliedA, applied bool // A applied; B applied
	}{
		{"blocking denial refuses the event", nil, nil, false, false},
		{"non-blocking denial does not", nil, func(r *counter.Request) { r.Blocking = false }, true, false},
		{"strict A is added to a refused event", func(r *counter.Request) { r.Strict = true }, nil, true, false},
		{"strict B is added although denied", nil, func(r *counter.Request) { r.Strict = true }, false, true},
		{"a refund in a refused event is not applied", func(r *counter.Request) { r.Op = counter.OpRefund }, nil, false, false},
		{"a peek never refuses", nil, func(r *counter.Request) { r.Op = counter.OpPeek }, true, false},
		{"a denied concurrent slot refuses too", nil, func(r *counter.Request) { *r = Slots(string(r.Key), 0, "h") }, false, false},
	}
	for i, c := range cases {
		aKey, bKey := fmt.Sprint("A", i), fmt.Sprint("B", i)
		a := Rate(aKey, 10, time.Minute, 5)
		b := Rate(bKey, 10, time.Minute, 1)
		// A holds 2 units, B is full.
		for range 2 {
			r := a
			Do(t, st, &r)
		}
		r := b
		Do(t, st, &r)
		if c.a != nil {
			c.a(&a)
		}
		if c.b != nil {
			c.b(&b)
		}
		Do(t, st, &a, &b)
		wantA := int64(2)
		if c.appliedA {
			wantA = 3
			if a.Op == counter.OpRefund {
				wantA = 1
			}
		} else if a.Op == counter.OpRefund {
			wantA = 2
		}
		if a.Level != wantA || !a.Allowed {
			t.Errorf("%s: A allowed=%v level=%d, want true %d", c.name, a.Allowed, a.Level, wantA)
		}
		if b.Allowed {
			t.Errorf("%s: B allowed", c.name)
		}
		wantB := int64(1)
		if b.Kind == counter.KindConcurrent {
			wantB = 0
		}
		if c.applied {
			wantB++
		}
		if b.Level != wantB {
			t.Errorf("%s: B level %d, want %d", c.name, b.Level, wantB)
		}
		// The stored state agrees with the results.
		if p := peek(t, st, Rate(aKey, 10, time.Minute, 5)); p.Level != wantA {
			t.Errorf("%s: A stored level %d, want %d", c.name, p.Level, wantA)
		}
	}
}

func testInvalid(t *testing.T, st counter.Store, clock *Clock) {
	good := Rate("good", 10, time.Minute, 5)
	bad := []counter.Request{
		{Key: nil, Kind: counter.KindRate, Interval: 1, Burst: 1, Cost: 1},
		{Key: []byte("k"), Kind: counter.KindRate, Interval: 0, Burst: 1, Cost: 1},
		{Key: []byte("k"), Kind: counter.KindRate, Interval: 1, Burst: -1, Cost: 1},
		{Key: []byte("k"), Kind: counter.KindRate, Interval: 1, Burst: 1, Cost: -1},
		{Key: []byte("k"), Kind: 9, Interval: 1, Burst: 1, Cost: 1},
		{Key: []byte("k"), Kind: counter.KindRate, Op: 9, Interval: 1, Burst: 1, Cost: 1},
	}
	for i, b := range bad {
		if err := st.Do(context.Background(), []counter.Request{good, b}); err == nil {
			t.Errorf("bad request %d: no error", i)
		}
	}
	if p := peek(t, st, good); p.Level != 0 {
		t.Errorf("a failed Do applied its good request: level %d", p.Level)
	}
}

func testCancelled(t *testing.T, st counter.Store, clock *Clock) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := st.Do(ctx, []counter.Request{Rate("c", 1, time.Hour, 1)}); err == nil {
		t.Errorf("Do with a cancelled context: no error")
	}
	if p := peek(t, st, Rate("c", 1, time.Hour, 1)); p.Level != 0 {
		t.Errorf("a cancelled Do applied: level %d", p.Level)
	}
}

func testReset(t *testing.T, st counter.Store, clock *Clock) {
	r := Rate("reset", 1, time.Hour, 1)
	s := Slots("reset-slots", 1, "h")
	keep := Rate("keep", 1, time.Hour, 1)
	Do(t, st, &r, &s, &keep)
	if err := counter.Reset(context.Background(), st, [][]byte{[]byte("reset"), []byte("reset-slots")}); err != nil {
		t.Fatal(err)
	}
	if p := peek(t, st, r); p.Level != 0 || !p.Allowed {
		t.Errorf("rate key after reset: %+v", p)
	}
	if p := peek(t, st, s); p.Level != 0 || !p.Allowed {
		t.Errorf("slots key after reset: %+v", p)
	}
	if p := peek(t, st, keep); p.Level != 1 {
		t.Errorf("reset touched another key: level %d", p.Level)
	}
}

func testAllows(t *testing.T, st counter.Store, clock *Clock) {
	ctx := context.Background()
	if m, err := counter.Allows(ctx, st); err != nil || len(m) != 0 {
		t.Fatalf("empty store: %v %v", m, err)
	}
	now := time.Unix(0, clock.Now())
	set := func(key string, until time.Time) {
		if err := counter.SetAllow(ctx, st, key, until); err != nil {
			t.Fatal(err)
		}
	}
	set("sender:a@example.org", now.Add(time.Hour))
	set("sender:b@example.org", now.Add(2*time.Hour))
	set("sender:c@example.org", now.Add(-time.Second)) // already over: not kept
	m, err := counter.Allows(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 2 || !m["sender:a@example.org"].Equal(now.Add(time.Hour)) || !m["sender:b@example.org"].Equal(now.Add(2*time.Hour)) {
		t.Errorf("Allows = %v", m)
	}
	clock.Advance(time.Hour)
	if m, _ := counter.Allows(ctx, st); len(m) != 1 || m["sender:b@example.org"].IsZero() {
		t.Errorf("after 1h: %v, want only b", m)
	}
	set("sender:b@example.org", time.Time{})
	if m, _ := counter.Allows(ctx, st); len(m) != 0 {
		t.Errorf("after removal: %v", m)
	}
}

func testHot(t *testing.T, st counter.Store, clock *Clock) {
	ctx := context.Background()
	full := Rate("full", 10, time.Minute, 4)
	for range 5 { // 4 admitted, the 5th denied
		r := full
		Do(t, st, &r)
	}
	most := Rate("most", 10, time.Minute, 4)
	for range 3 {
		r := most
		Do(t, st, &r)
	}
	cold := Rate("cold", 10, time.Minute, 4)
	Do(t, st, &cold)
	slots := Slots("slots", 2, "h")
	Do(t, st, &slots) // 1 of 2: not more than half

	hot, err := counter.Hot(ctx, st, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(hot) != 2 || hot[0].Key != "full" || hot[1].Key != "most" {
		t.Fatalf("Hot = %+v, want full then most", hot)
	}
	h := hot[0]
	if h.Kind != counter.KindRate || h.Level != 4 || h.Burst != 4 || h.Interval != full.Interval || h.RetryAfter != 6*time.Second {
		t.Errorf("full: %+v", h)
	}
	if hot, _ := counter.Hot(ctx, st, 1); len(hot) != 1 || hot[0].Key != "full" {
		t.Errorf("Hot(1) = %+v", hot)
	}
	clock.Advance(time.Hour)
	if hot, _ := counter.Hot(ctx, st, 10); len(hot) != 0 {
		t.Errorf("after idle: Hot = %+v", hot)
	}
}

// testParallel hammers one concurrency key and one rate key from many
// goroutines; slots never exceed the limit and all come back.
func testParallel(t *testing.T, st counter.Store, clock *Clock) {
	const workers, rounds, max = 8, 200, 3
	var wg sync.WaitGroup
	var mu sync.Mutex
	admitted := 0
	errs := make(chan string, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				s := Slots("par-slots", max, fmt.Sprint(w, "-", i))
				r := Rate("par-rate", 1, time.Hour, 100)
				reqs := []counter.Request{s, r}
				if err := st.Do(context.Background(), reqs); err != nil {
					errs <- err.Error()
					return
				}
				if reqs[0].Level > max {
					errs <- fmt.Sprintf("level %d above %d", reqs[0].Level, max)
					return
				}
				if reqs[0].Allowed && reqs[1].Allowed {
					mu.Lock()
					admitted++
					mu.Unlock()
					rel := s
					rel.Op = counter.OpRefund
					if err := st.Do(context.Background(), []counter.Request{rel}); err != nil {
						errs <- err.Error()
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if admitted != 100 {
		t.Errorf("%d events admitted on a rate key with burst 100 and no time passing", admitted)
	}
	if p := peek(t, st, Slots("par-slots", max, "x")); p.Level != 0 {
		t.Errorf("slots held after all released: %d", p.Level)
	}
}
