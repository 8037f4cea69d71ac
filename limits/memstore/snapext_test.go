package memstore

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sluice/limits/counter"
	"sluice/limits/counter/countertest"
)

// Distinct sets, restrictions (with their held queue ids and graces) and
// runtime overrides survive a restart through the snapshot; those that
// ended meanwhile do not come back.
func TestSnapshotKeepsOutboundState(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "counters.snap")
	clock := countertest.NewClock()
	a := newTestStore(t, Config{Snapshot: path}, clock.Now)
	for _, m := range []string{"a.example", "b.example", "c.example"} {
		take(t, a, countertest.Distinct("rcpts:d:sasl_user:alice", 3, time.Hour, m))
	}
	take(t, a, countertest.Distinct("short:d:sasl_user:alice", 3, time.Minute, "x"))
	cross := func(key string, until int64) {
		r := countertest.Rate("r:0:"+key, 1, time.Hour, 1)
		r.Group = 1
		take(t, a, r)
		r2, x := r, countertest.Restrict("r:x:"+key, 1, until)
		take(t, a, r2, x)
	}
	cross("sasl_user:alice", 0)
	cross("sasl_user:bob", clock.Now()+int64(time.Minute)) // over by the restart
	cross("sasl_user:carol", clock.Now()+int64(24*time.Hour))
	if _, ok, err := a.Release(ctx, []byte("r:x:sasl_user:carol"), time.Unix(0, clock.Now()).Add(time.Hour)); !ok || err != nil {
		t.Fatalf("release carol: %v %v", ok, err)
	}
	a.NoteHeld(ctx, []byte("r:x:sasl_user:alice"), "4XyZ1")
	a.NoteHeld(ctx, []byte("r:x:sasl_user:alice"), "4XyZ2")
	a.SetOverride(ctx, []byte("r:o:sasl_user:dave"), []byte("v1 7/1h"), time.Time{})
	a.SetOverride(ctx, []byte("r:o:sasl_user:erin"), []byte("v1 1/1h"), time.Unix(0, clock.Now()).Add(time.Minute))
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	clock.Advance(2 * time.Minute)
	b := newTestStore(t, Config{Snapshot: path}, clock.Now)
	defer b.Close()
	if r := b.lastDistinct(t, "rcpts:d:sasl_user:alice", "d.example"); r.Allowed || r.Level != 3 {
		t.Errorf("alice's 4th domain after a restart: allowed %v level %d, want refused at 3", r.Allowed, r.Level)
	}
	if r := b.lastDistinct(t, "rcpts:d:sasl_user:alice", "a.example"); !r.Allowed || r.Changed {
		t.Errorf("a domain alice sent to before the restart counts again: %+v", r)
	}
	short := countertest.Distinct("short:d:sasl_user:alice", 3, time.Minute, "")
	short.Op = counter.OpPeek
	reqs := []counter.Request{short}
	take(t, b, reqs...)
	if reqs[0].Level != 0 {
		t.Errorf("a set whose window passed before the restart: level %d", reqs[0].Level)
	}
	list, err := b.Restrictions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range list {
		got = append(got, fmt.Sprintf("%s grace=%v held=%v", x.Key, x.Grace, x.Held))
	}
	want := []string{"r:x:sasl_user:alice grace=false held=[4XyZ1 4XyZ2]", "r:x:sasl_user:carol grace=true held=[]"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("restrictions after a restart:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	ovs, _ := b.Overrides(ctx)
	if len(ovs) != 1 || ovs[0].Key != "r:o:sasl_user:dave" || string(ovs[0].Value) != "v1 7/1h" {
		t.Errorf("overrides after a restart: %+v", ovs)
	}
}

// lastDistinct takes member on key and returns the result.
func (s *Store) lastDistinct(t *testing.T, key, member string) counter.Request {
	t.Helper()
	r := []counter.Request{countertest.Distinct(key, 3, time.Hour, member)}
	if err := s.Do(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return r[0]
}

// A crafted snapshot is refused whole, never half loaded, when its new
// records break their bounds: too many restrictions, held queue ids or
// overrides, a second seed, a set with no member or a member seen after
// its set ends.
func TestSnapshotOutboundRecordsBounded(t *testing.T) {
	until := uint64(countertest.Start + int64(24*time.Hour))
	restriction := func(e *encoder, key string, held int) {
		e.u8(tagRestrict)
		e.u64(uint64(countertest.Start))
		e.u64(until)
		e.u64(3)
		e.u8(0)
		e.u16(uint16(held))
		for i := range held {
			id := fmt.Sprintf("Q%d", i)
			e.u8(uint8(len(id)))
			e.bytes([]byte(id))
		}
		e.name(key)
	}
	cases := []struct {
		name    string
		records func(e *encoder)
		reason  string
	}{
		{"restrictions", func(e *encoder) {
			for i := range maxRestrictions + 1 {
				restriction(e, fmt.Sprintf("r:x:sasl_user:u%d", i), 0)
			}
		}, "more than 100000 restrictions"},
		{"held ids", func(e *encoder) {
			for i := range maxHeldTotal/60000 + 1 {
				restriction(e, fmt.Sprintf("r:x:sasl_user:u%d", i), 60000)
			}
		}, "more than 1000000 held queue ids"},
		{"overrides", func(e *encoder) {
			for i := range maxOverrides + 1 {
				e.u8(tagOverride)
				e.u64(0)
				e.name(fmt.Sprintf("r:o:sasl_user:u%d", i))
				e.name("v1 1/1h")
			}
		}, "more than 100000 overrides"},
		{"two seeds", func(e *encoder) {
			e.u8(tagSeed)
			e.u64(1)
			e.u8(tagSeed)
			e.u64(2)
		}, "more than one member seed"},
		{"empty set", func(e *encoder) {
			e.u8(tagDistinct)
			e.u64(7)
			e.u64(until)
			e.u16(0)
		}, "invalid distinct set"},
		{"member from the future", func(e *encoder) {
			e.u8(tagDistinct)
			e.u64(7)
			e.u64(until)
			e.u16(1)
			e.u64(1)
			e.u64(until) // µs: far beyond the set's end
		}, "invalid distinct member"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "crafted.snap")
			craftSnapshot(t, path, true, func(e *encoder) {
				restriction(e, "r:x:sasl_user:first", 1) // a good record before the bad ones
				tc.records(e)
			})
			s := newTestStore(t, Config{Snapshot: path}, countertest.NewClock().Now)
			defer s.Close()
			if list, _ := s.Restrictions(context.Background()); len(list) != 0 {
				t.Errorf("a refused snapshot left %d restrictions", len(list))
			}
			if ovs, _ := s.Overrides(context.Background()); len(ovs) != 0 {
				t.Errorf("a refused snapshot left %d overrides", len(ovs))
			}
			f, _ := openSnapshot(path)
			defer f.Close()
			if _, _, err := s.loadFrom(f); err == nil || !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("load: %v, want %q", err, tc.reason)
			}
		})
	}
}

// The members of distinct sets count against max_keys: a flood of new
// members and keys never holds more than the store's share of them.
func TestDistinctMembersBounded(t *testing.T) {
	clock := countertest.NewClock()
	s := newTestStore(t, Config{MaxKeys: 1000}, clock.Now)
	defer s.Close()
	for k := range 200 {
		for m := range 50 {
			take(t, s, countertest.Distinct(fmt.Sprintf("flood:d:sasl_user:u%d", k), 100, time.Hour, fmt.Sprintf("m%d.example", m)))
		}
	}
	members := 0
	for i := range s.shards {
		sh := &s.shards[i]
		if sh.ext == nil {
			continue
		}
		n := 0
		for _, ds := range sh.ext.sets {
			n += len(ds.members)
		}
		if n != sh.ext.members {
			t.Fatalf("shard %d counts %d members, holds %d", i, sh.ext.members, n)
		}
		if n > sh.limit {
			t.Errorf("shard %d holds %d members, its limit is %d", i, n, sh.limit)
		}
		members += n
	}
	if members > 1000 || members < 500 {
		t.Errorf("%d members held for max_keys 1000", members)
	}
	// The latest key is whole: eviction takes others first.
	if r := s.lastDistinct(t, "flood:d:sasl_user:u199", "m0.example"); r.Changed {
		t.Errorf("the key last written lost its members")
	}
}
