package countertest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"sluice/limits/counter"
)

// Distinct returns a take of member on a distinct key: at most max
// different members within window.
func Distinct(key string, max int64, window time.Duration, member string) counter.Request {
	return counter.Request{Key: []byte(key), Kind: counter.KindDistinct, Op: counter.OpTake,
		Interval: int64(window), Burst: max, Cost: 1, Blocking: true, Member: []byte(member)}
}

// Restrict returns the restrict request of group g on key, restricting
// until the given Unix ns (0: until released).
func Restrict(key string, g uint16, until int64) counter.Request {
	return counter.Request{Key: []byte(key), Kind: counter.KindRestrict, Op: counter.OpTake, Group: g, Until: until, Strict: true}
}

// Override returns the check of the runtime override under key against
// value (nil: none).
func Override(key string, value []byte) counter.Request {
	return counter.Request{Key: []byte(key), Kind: counter.KindOverride, Op: counter.OpPeek, Member: value}
}

// distinctModel is the reference for a distinct key: every member with
// when it was last seen, in whole µs as the stores keep it.
type distinctModel struct {
	window   int64 // ns, whole µs
	burst    int64
	blocking bool
	seen     map[string]int64 // µs
}

func (m *distinctModel) live(now int64) []int64 {
	var out []int64
	for _, s := range m.seen {
		if now/1000-s < m.window/1000 {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// judge says what a take of member at now gets: allowed, the retry in ns
// when denied, and the count now.
func (m *distinctModel) judge(now int64, member string) (bool, int64, int64) {
	live := m.live(now)
	n := int64(len(live))
	if s, ok := m.seen[member]; ok && now/1000-s < m.window/1000 {
		return true, 0, n
	}
	if n < m.burst {
		return true, 0, n
	}
	return false, (live[n-m.burst]+m.window/1000)*1000 - now, n
}

func (m *distinctModel) add(now int64, member string) (changed bool) {
	s, ok := m.seen[member]
	changed = !ok || now/1000-s >= m.window/1000
	m.seen[member] = now / 1000
	return changed
}

func testDistinct(t *testing.T, st counter.Store, clock *Clock) {
	const w = time.Hour
	take := func(member string, allowed bool, level int64, changed bool) counter.Request {
		t.Helper()
		r := Distinct("d", 3, w, member)
		Do(t, st, &r)
		if r.Allowed != allowed || r.Level != level || r.Changed != changed {
			t.Errorf("take %s: allowed=%v level=%d changed=%v, want %v %d %v", member, r.Allowed, r.Level, r.Changed, allowed, level, changed)
		}
		return r
	}
	take("a.example", true, 1, true)
	clock.Advance(time.Minute)
	take("b.example", true, 2, true)
	clock.Advance(time.Minute)
	take("c.example", true, 3, true)
	clock.Advance(time.Minute)
	take("a.example", true, 3, false) // seen again: renewed, not counted twice
	r := take("d.example", false, 3, false)
	// a was renewed: b, seen 2 minutes ago, leaves the window first.
	if want := w - 2*time.Minute; r.RetryAfter != want {
		t.Errorf("retry after %v, want %v (when b leaves the window)", r.RetryAfter, want)
	}
	p := Distinct("d", 3, w, "")
	p.Op = counter.OpPeek
	Do(t, st, &p)
	if p.Level != 3 || p.Allowed {
		t.Errorf("peek: level %d allowed %v, want 3 false", p.Level, p.Allowed)
	}
	clock.Advance(w - 2*time.Minute)
	take("d.example", true, 3, true) // b left: room for d
	// A refund takes a new member out again (a refused event gives back).
	e := take("e.example", false, 3, false)
	_ = e
	ref := Distinct("d", 3, w, "d.example")
	ref.Op = counter.OpRefund
	Do(t, st, &ref)
	if ref.Level != 2 {
		t.Errorf("after a refund: level %d, want 2", ref.Level)
	}
	take("e.example", true, 3, true)
	clock.Advance(2 * w)
	take("f.example", true, 1, true) // all gone: a fresh window
}

// testDistinctAllOrNothing: a distinct take in a refused event is not
// applied unless strict, and a strict one beyond the limit is kept, up
// to Burst+1 members.
func testDistinctAllOrNothing(t *testing.T, st counter.Store, clock *Clock) {
	full := Rate("full", 1, time.Hour, 1)
	Do(t, st, &full) // full now denies
	d := Distinct("d", 2, time.Hour, "a")
	f := Rate("full", 1, time.Hour, 1)
	Do(t, st, &d, &f)
	if !d.Allowed || f.Allowed {
		t.Fatalf("distinct allowed %v, full allowed %v; want true false", d.Allowed, f.Allowed)
	}
	if p := peekDistinct(t, st, "d", 2); p.Level != 0 {
		t.Errorf("a refused event added its member: level %d", p.Level)
	}
	for i, m := range []string{"a", "b", "c", "d", "e"} {
		clock.Advance(time.Second) // distinct times: which member is oldest is clear
		r := Distinct("d", 2, time.Hour, m)
		r.Strict = true
		Do(t, st, &r)
		want := int64(min(i+1, 3))
		if r.Level != want || r.Allowed != (i < 2) {
			t.Errorf("strict take %s: allowed %v level %d, want %v %d (at most Burst+1 kept)", m, r.Allowed, r.Level, i < 2, want)
		}
	}
	// The three kept are the most recent: c, d, e; a is forgotten.
	r := Distinct("d", 2, time.Hour, "e")
	Do(t, st, &r)
	if !r.Allowed || r.Changed {
		t.Errorf("e, kept: allowed %v changed %v", r.Allowed, r.Changed)
	}
	r = Distinct("d", 2, time.Hour, "a")
	Do(t, st, &r)
	if r.Allowed {
		t.Errorf("a, the oldest, was not the one let go: allowed")
	}
}

func peekDistinct(t *testing.T, st counter.Store, key string, max int64) counter.Request {
	t.Helper()
	r := Distinct(key, max, time.Hour, "")
	r.Op = counter.OpPeek
	Do(t, st, &r)
	return r
}

// testRestrict: a crossing restricts; the restriction outlasts the
// window; release gives a grace; the queue ids noted come back.
func testRestrict(t *testing.T, st counter.Store, clock *Clock) {
	ctx := context.Background()
	rst, ok := counter.As[counter.Restricter](st)
	if !ok {
		t.Fatal("the store keeps no restrictions")
	}
	rate := func() counter.Request {
		r := Rate("r:0:sasl_user:alice", 2, time.Hour, 2)
		r.Group = 1
		return r
	}
	event := func(until int64) (counter.Request, counter.Request) {
		t.Helper()
		r, x := rate(), Restrict("r:x:sasl_user:alice", 1, until)
		Do(t, st, &r, &x)
		return r, x
	}
	day := clock.Now() + int64(24*time.Hour)
	for i := range 2 {
		if r, x := event(day); !r.Allowed || !x.Allowed || x.Changed {
			t.Fatalf("take %d: rate %v restrict %+v; want allowed, not restricted", i+1, r.Allowed, x)
		}
	}
	r, x := event(day)
	if r.Allowed || !x.Allowed || !x.Changed || x.Level != 3 {
		t.Fatalf("the crossing: rate %v restrict allowed=%v changed=%v level=%d; want denied, restricted now with count 3", r.Allowed, x.Allowed, x.Changed, x.Level)
	}
	clock.Advance(2 * time.Hour) // the window has drained
	r, x = event(day)
	if !r.Allowed || x.Allowed || x.Changed || x.Level != 3 || x.RetryAfter != 22*time.Hour {
		t.Errorf("after the window: rate %v restrict %+v; want the rate allowed, the key restricted 22h more", r.Allowed, x)
	}
	for _, id := range []string{"Q1", "Q2", "Q1"} {
		if err := rst.NoteHeld(ctx, []byte("r:x:sasl_user:alice"), id); err != nil {
			t.Fatal(err)
		}
	}
	list, err := rst.Restrictions(ctx)
	if err != nil || len(list) != 1 || list[0].Key != "r:x:sasl_user:alice" || list[0].Count != 3 || list[0].Grace ||
		list[0].Until.UnixNano() != day || !slices.Equal(list[0].Held, []string{"Q1", "Q2"}) {
		t.Fatalf("Restrictions = %+v, %v", list, err)
	}
	grace := time.Unix(0, clock.Now()).Add(time.Hour)
	was, ok, err := rst.Release(ctx, []byte("r:x:sasl_user:alice"), grace)
	if err != nil || !ok || was.Count != 3 || !slices.Equal(was.Held, []string{"Q1", "Q2"}) {
		t.Fatalf("Release = %+v %v %v", was, ok, err)
	}
	if _, ok, _ := rst.Release(ctx, []byte("r:x:sasl_user:alice"), grace); ok {
		t.Errorf("a second release found a restriction")
	}
	// In the grace a crossing does not restrict again.
	for range 3 {
		event(day)
	}
	if _, x := event(day); !x.Allowed || x.Changed {
		t.Errorf("in the grace: %+v; want not restricted", x)
	}
	if list, _ := rst.Restrictions(ctx); len(list) != 1 || !list[0].Grace {
		t.Errorf("in the grace, Restrictions = %+v; want alice in her grace", list)
	}
	clock.Advance(2 * time.Hour)
	// Past the grace, until released: the crossing restricts for good.
	event(0)
	event(0)
	if _, x := event(0); !x.Changed {
		t.Fatalf("past the grace: %+v; want restricted again", x)
	}
	clock.Advance(30 * 24 * time.Hour)
	if _, x := event(0); x.Allowed || x.RetryAfter != 0 {
		t.Errorf("restricted until released, a month on: %+v", x)
	}
	// A crossing of another group restricts nothing.
	b := Rate("r:0:sasl_user:bob", 1, time.Hour, 1)
	b.Group = 2
	Do(t, st, &b)
	b = Rate("r:0:sasl_user:bob", 1, time.Hour, 1)
	b.Group = 2
	x = Restrict("r:x:sasl_user:bob", 1, 0)
	Do(t, st, &b, &x)
	if b.Allowed || x.Changed {
		t.Errorf("bob crossed group 2: restrict of group 1 changed %v", x.Changed)
	}
}

// testOverride: an override request that disagrees with the store fails
// the whole event with ErrStale and the value in force; one that agrees
// lets it through.
func testOverride(t *testing.T, st counter.Store, clock *Clock) {
	ctx := context.Background()
	ov, ok := counter.As[counter.Overrider](st)
	if !ok {
		t.Fatal("the store keeps no overrides")
	}
	key := "r:o:sasl_user:dave"
	do := func(expect []byte) (counter.Request, counter.Request, error) {
		r, o := Rate("r:0:sasl_user:dave", 5, time.Hour, 5), Override(key, expect)
		reqs := []counter.Request{r, o}
		err := st.Do(ctx, reqs)
		return reqs[0], reqs[1], err
	}
	if _, _, err := do(nil); err != nil {
		t.Fatalf("no override, none expected: %v", err)
	}
	until := time.Unix(0, clock.Now()).Add(time.Hour)
	if err := ov.SetOverride(ctx, []byte(key), []byte("1/1h"), until); err != nil {
		t.Fatal(err)
	}
	_, o, err := do(nil)
	if !errors.Is(err, counter.ErrStale) || string(o.Member) != "1/1h" || o.Until != until.UnixNano() {
		t.Fatalf("an override set, none expected: err %v value %q until %d", err, o.Member, o.Until)
	}
	if p := peek(t, st, Rate("r:0:sasl_user:dave", 5, time.Hour, 5)); p.Level != 1 {
		t.Errorf("the stale event was applied: level %d, want 1 (the first event only)", p.Level)
	}
	if _, _, err := do([]byte("1/1h")); err != nil {
		t.Errorf("the override expected: %v", err)
	}
	if _, o, err := do([]byte("2/1h")); !errors.Is(err, counter.ErrStale) || string(o.Member) != "1/1h" {
		t.Errorf("another value expected: %v %q", err, o.Member)
	}
	list, err := ov.Overrides(ctx)
	if err != nil || len(list) != 1 || list[0].Key != key || string(list[0].Value) != "1/1h" || !list[0].Until.Equal(until) {
		t.Errorf("Overrides = %+v %v", list, err)
	}
	clock.Advance(time.Hour)
	if _, o, err := do([]byte("1/1h")); !errors.Is(err, counter.ErrStale) || o.Member != nil {
		t.Errorf("expired: %v %q, want stale with none in force", err, o.Member)
	}
	if list, _ := ov.Overrides(ctx); len(list) != 0 {
		t.Errorf("expired override listed: %+v", list)
	}
	if err := ov.SetOverride(ctx, []byte(key), []byte("9/1d"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(365 * 24 * time.Hour)
	if _, _, err := do([]byte("9/1d")); err != nil {
		t.Errorf("an override without end, a year on: %v", err)
	}
	if err := ov.SetOverride(ctx, []byte(key), nil, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := do(nil); err != nil {
		t.Errorf("removed: %v", err)
	}
}

func testClaim(t *testing.T, st counter.Store, clock *Clock) {
	ctx := context.Background()
	claim := func(key string) bool {
		t.Helper()
		ok, err := counter.Claim(ctx, st, key, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !claim("a") || claim("a") || !claim("b") {
		t.Errorf("claims: the first of each key wins, the second loses")
	}
	clock.Advance(time.Hour + time.Second)
	if !claim("a") {
		t.Errorf("a claim outlived its ttl")
	}
}

// distinctReq is a take of member on the property test's k-th distinct key.
func distinctReq(prefix string, k int, m *distinctModel, member string) counter.Request {
	return counter.Request{Key: []byte(fmt.Sprintf("%s:distinct%d", prefix, k)), Kind: counter.KindDistinct,
		Op: counter.OpTake, Interval: m.window, Burst: m.burst, Cost: 1, Blocking: m.blocking, Member: []byte(member)}
}
