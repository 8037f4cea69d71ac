package counter_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"sluice/limits/counter"
	"sluice/limits/counter/countertest"
)

const now = countertest.Start

func TestGCRA(t *testing.T) {
	const T = int64(time.Second) // one unit a second
	type want struct {
		tat     int64
		allowed bool
		retry   time.Duration
		level   int64
	}
	tests := []struct {
		name  string
		tat   int64
		op    counter.Op
		burst int64
		cost  int64
		want  want
	}{
		{"new key", 0, counter.OpTake, 3, 1, want{now + T, true, 0, 1}},
		{"tat in the past counts from now", now - 10*T, counter.OpTake, 3, 1, want{now + T, true, 0, 1}},
		{"last unit of the burst", now + 2*T, counter.OpTake, 3, 1, want{now + 3*T, true, 0, 3}},
		{"over the burst", now + 3*T, counter.OpTake, 3, 1, want{now + 4*T, false, time.Second, 3}},
		{"over by a fraction: level rounds up", now + 2*T + 1, counter.OpTake, 3, 1, want{now + 3*T + 1, false, 1, 3}},
		{"cost of several units", now, counter.OpTake, 5, 4, want{now + 4*T, true, 0, 4}},
		{"cost above what is left", now + 2*T, counter.OpTake, 5, 4, want{now + 6*T, false, time.Second, 2}},
		{"cost above the burst, from idle", 0, counter.OpTake, 3, 4, want{now + 4*T, false, time.Second, 0}},
		{"burst 0 admits nothing", 0, counter.OpTake, 0, 1, want{now + T, false, time.Second, 0}},
		{"cost 0 from idle", 0, counter.OpTake, 0, 0, want{now, true, 0, 0}},
		{"peek is judged as a take", now + 3*T, counter.OpPeek, 3, 1, want{now + 4*T, false, time.Second, 3}},
		{"refund", now + 3*T, counter.OpRefund, 3, 2, want{now + T, true, 0, 1}},
		{"refund stops at now", now + T, counter.OpRefund, 3, 5, want{now, true, 0, 0}},
		{"refund of an idle key", now - T, counter.OpRefund, 3, 1, want{now, true, 0, 0}},
	}
	for _, tt := range tests {
		r := counter.Request{Op: tt.op, Interval: T, Burst: tt.burst, Cost: tt.cost}
		tat, allowed, retry, level := counter.GCRA(now, tt.tat, &r)
		if got := (want{tat, allowed, retry, level}); got != tt.want {
			t.Errorf("%s: got tat=now%+d allowed=%v retry=%v level=%d, want tat=now%+d %v %v %d", tt.name,
				got.tat-now, got.allowed, got.retry, got.level, tt.want.tat-now, tt.want.allowed, tt.want.retry, tt.want.level)
		}
	}
}

// TestGCRAProperty holds GCRA itself, through the smallest store that can
// run it, to the sliding-log model; memstore runs the same test.
func TestGCRAProperty(t *testing.T) {
	opt := countertest.PropertyOptions{Seed: 1000, Sequences: 1000}
	if testing.Short() {
		opt.Sequences = 100
	}
	countertest.Property(t, func(t *testing.T, now func() int64) counter.Store {
		return &mapStore{now: now, v: map[string]int64{}, dist: map[string]map[string]int64{}}
	}, opt)
}

// mapStore is counter.Store's Do contract over a map and one lock: the
// reference the real stores are compared with, kept as plain as can be.
type mapStore struct {
	mu   sync.Mutex
	now  func() int64
	v    map[string]int64            // kind byte + key -> tat or slots held
	dist map[string]map[string]int64 // distinct key -> member -> last seen, µs
}

// members lists the last-seen times within the window of r, oldest first.
func (m *mapStore) members(r *counter.Request, now int64) (seen []int64, has bool) {
	for mem, s := range m.dist[string(r.Key)] {
		if now/1000-s < r.Interval/1000 {
			seen = append(seen, s)
			has = has || mem == string(r.Member)
		}
	}
	slices.Sort(seen)
	return seen, has
}

func (m *mapStore) Do(ctx context.Context, reqs []counter.Request) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	id := func(r *counter.Request) string { return string(rune('0'+r.Kind)) + string(r.Key) }
	refused := false
	for i := range reqs {
		r := &reqs[i]
		v := m.v[id(r)]
		r.Allowed, r.RetryAfter, r.Level = true, 0, v
		switch {
		case r.Kind == counter.KindConcurrent && r.Op != counter.OpRefund:
			r.Allowed = v < r.Burst
		case r.Kind == counter.KindRate:
			if r.Op != counter.OpRefund {
				_, r.Allowed, r.RetryAfter, _ = counter.GCRA(now, v, r)
			}
			r.Level = ceil(v-now, r.Interval)
		case r.Kind == counter.KindDistinct:
			seen, has := m.members(r, now)
			r.Level = int64(len(seen))
			if r.Op != counter.OpRefund && !has && r.Level >= r.Burst {
				r.Allowed = false
				r.RetryAfter = time.Duration((seen[r.Level-r.Burst]+r.Interval/1000)*1000 - now)
			}
		}
		refused = refused || !r.Allowed && r.Blocking && r.Op == counter.OpTake
	}
	for i := range reqs {
		r := &reqs[i]
		if r.Op == counter.OpPeek || !r.Strict && (!r.Allowed || refused) {
			continue
		}
		if r.Kind == counter.KindDistinct {
			set := m.dist[string(r.Key)]
			if set == nil {
				set = map[string]int64{}
				m.dist[string(r.Key)] = set
			}
			if r.Op == counter.OpRefund {
				delete(set, string(r.Member))
			} else {
				s, ok := set[string(r.Member)]
				r.Changed = !ok || now/1000-s >= r.Interval/1000
				set[string(r.Member)] = now / 1000
			}
			seen, _ := m.members(r, now)
			r.Level = int64(len(seen))
			continue
		}
		v := m.v[id(r)]
		switch {
		case r.Kind == counter.KindRate:
			v, _, _, _ = counter.GCRA(now, v, r)
			r.Level = ceil(v-now, r.Interval)
		case r.Op == counter.OpRefund:
			v = max(v-1, 0)
			r.Level = v
		default:
			v++
			r.Level = v
		}
		m.v[id(r)] = v
	}
	return nil
}

func ceil(a, b int64) int64 {
	if a <= 0 {
		return 0
	}
	return (a + b - 1) / b
}

func (m *mapStore) Reset(context.Context, [][]byte) error                { return nil }
func (m *mapStore) Hot(context.Context, int) ([]counter.HotKey, error)   { return nil, nil }
func (m *mapStore) SetAllow(context.Context, string, time.Time) error    { return nil }
func (m *mapStore) Allows(context.Context) (map[string]time.Time, error) { return nil, nil }
func (m *mapStore) Len() int                                             { return len(m.v) }
func (m *mapStore) Close() error                                         { return nil }

func TestValidate(t *testing.T) {
	good := counter.Request{Key: []byte("k"), Kind: counter.KindRate, Interval: 1, Burst: 1, Cost: 1}
	if err := good.Validate(); err != nil {
		t.Errorf("good request: %v", err)
	}
	slots := counter.Request{Key: []byte("k"), Kind: counter.KindConcurrent, Burst: 3}
	if err := slots.Validate(); err != nil {
		t.Errorf("concurrency request without interval: %v", err)
	}
	for _, f := range []func(*counter.Request){
		func(r *counter.Request) { r.Key = nil },
		func(r *counter.Request) { r.Op = counter.OpPeek + 1 },
		func(r *counter.Request) { r.Kind = counter.KindConcurrent + 1 },
		func(r *counter.Request) { r.Burst = -1 },
		func(r *counter.Request) { r.Cost = -1 },
		func(r *counter.Request) { r.Interval = 0 },
	} {
		r := good
		f(&r)
		if err := r.Validate(); err == nil {
			t.Errorf("%+v: no error", r)
		}
	}
}

func TestSortHot(t *testing.T) {
	keys := []counter.HotKey{
		{Key: "half", Level: 5, Burst: 10},
		{Key: "over-b", Level: 11, Burst: 10, RetryAfter: time.Second},
		{Key: "over-a", Level: 11, Burst: 10, RetryAfter: time.Second},
		{Key: "over-longer", Level: 11, Burst: 10, RetryAfter: time.Minute},
		{Key: "zero-limit", Level: 1, Burst: 0},
		{Key: "full", Level: 3, Burst: 3},
	}
	counter.SortHot(keys)
	var got []string
	for _, k := range keys {
		got = append(got, k.Key)
	}
	want := "zero-limit over-longer over-a over-b full half"
	if s := fmt.Sprint(got); s != "["+want+"]" {
		t.Errorf("order %s, want [%s]", s, want)
	}
}
