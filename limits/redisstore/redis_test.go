package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"sluice/conf"
	"sluice/limits/counter"
	"sluice/limits/counter/countertest"
	"sluice/limits/redisstore/redistest"
)

func do(t *testing.T, s *Store, reqs ...counter.Request) []counter.Request {
	t.Helper()
	if err := s.Do(context.Background(), reqs); err != nil {
		t.Fatal(err)
	}
	return reqs
}

// The key layout puts the dimension key in the hash tag, and the slot we
// compute is the one Redis computes.
func TestKeySlots(t *testing.T) {
	srv := redistest.Start(t, "--cluster-enabled", "yes", "--cluster-config-file", t.TempDir()+"/nodes.conf")
	s := openTest(t, testConfig(t, false, srv.Addr))
	c := srv.Client()
	keys := [][]byte{
		[]byte("msgs-per-sender:0:sender:alice@example.org"),
		[]byte("msgs-per-sender:1:sender:alice@example.org"),
		[]byte("conc:c:client_ip:192.0.2.1"),
		[]byte("x:0:sender:we}ird{@example.org"),
		[]byte("short"),
		[]byte("a:b"),
		[]byte("r:0:"),
		[]byte("r:0:{}"),
	}
	for _, k := range keys {
		for _, kind := range []counter.Kind{counter.KindRate, counter.KindConcurrent} {
			rk := s.redisKey(kind, k)
			want, err := c.ClusterKeySlot(context.Background(), rk).Result()
			if err != nil {
				t.Fatal(err)
			}
			if got := slotOf(rk); int64(got) != want {
				t.Errorf("slot of %q: %d, Redis says %d", rk, got, want)
			}
		}
	}
	a := slotOf(s.redisKey(counter.KindRate, keys[0]))
	if b := slotOf(s.redisKey(counter.KindRate, keys[1])); a != b {
		t.Errorf("two windows of one rule on slots %d and %d", a, b)
	}
	if b := slotOf(s.redisKey(counter.KindRate, []byte("other-rule:0:sender:alice@example.org"))); a != b {
		t.Errorf("two rules about one sender on slots %d and %d", a, b)
	}
}

// countHook counts the commands and pipelines the client sends.
type countHook struct{ calls, cmds atomic.Int64 }

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.calls.Add(1)
		h.cmds.Add(1)
		return next(ctx, cmd)
	}
}
func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.calls.Add(1)
		h.cmds.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// One event is one call to Redis, whatever the number of rules and windows.
func TestOneRoundTrip(t *testing.T) {
	srv := redistest.Start(t)
	h := &countHook{}
	s := openTest(t, testConfig(t, false, srv.Addr), WithHook(h))
	var reqs []counter.Request
	for i := range 8 {
		reqs = append(reqs, countertest.Rate(fmt.Sprintf("rule%d:0:sender:a%d@example.org", i, i), 10, time.Minute, 10))
	}
	reqs = append(reqs, countertest.Slots("conc:c:client_ip:192.0.2.1", 3, "s1"))
	before := h.calls.Load()
	for range 10 {
		do(t, s, reqs...)
	}
	if got := h.calls.Load() - before; got != 10 {
		t.Errorf("10 events of 9 requests took %d calls, want 10", got)
	}
	if st := s.Stats(); st.RoundTrips != 10 {
		t.Errorf("Stats.RoundTrips %d, want 10", st.RoundTrips)
	}
}

// A server that lost its scripts (restart, SCRIPT FLUSH) gets them again.
func TestNoScript(t *testing.T) {
	srv := redistest.Start(t)
	s := openTest(t, testConfig(t, false, srv.Addr))
	r := countertest.Rate("r:0:k", 10, time.Minute, 10)
	do(t, s, r)
	if err := srv.Client().ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	got := do(t, s, r)
	if !got[0].Allowed || got[0].Level != 2 {
		t.Errorf("after SCRIPT FLUSH: %+v", got[0])
	}
	if st := s.Stats(); st.ScriptReloads != 1 {
		t.Errorf("ScriptReloads %d, want 1", st.ScriptReloads)
	}
	got = do(t, s, r)
	if got[0].Level != 3 || s.Stats().ScriptReloads != 1 {
		t.Errorf("the script was not kept: %+v, reloads %d", got[0], s.Stats().ScriptReloads)
	}
}

// Two hosts share one Redis: a limit holds across them, and their session
// numbers (both starting at 1) never share a slot.
func TestTwoHosts(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testConfig(t, false, srv.Addr)
	a, b := openTest(t, cfg), openTest(t, cfg)
	admitted := 0
	for i := range 15 {
		st := a
		if i%2 == 1 {
			st = b
		}
		if do(t, st, countertest.Rate("msgs:0:sender:x@example.org", 10, time.Hour, 10))[0].Allowed {
			admitted++
		}
	}
	if admitted != 10 {
		t.Errorf("%d of 15 admitted across two hosts, want 10", admitted)
	}
	for i, st := range []*Store{a, b, a} {
		do(t, st, countertest.Slots("conc:c:client_ip:192.0.2.9", 3, strconv.Itoa(1+i/2)))
	}
	r := do(t, b, countertest.Slots("conc:c:client_ip:192.0.2.9", 3, "2"))
	if r[0].Allowed || r[0].Level != 3 {
		t.Errorf("4th slot across hosts: %+v", r[0])
	}
	if a.Leases() != 2 || b.Leases() != 1 {
		t.Errorf("leases held: %d and %d, want 2 and 1", a.Leases(), b.Leases())
	}
}

// A host that dies keeps its slots only until its leases expire; a live
// one keeps them as long as it lives, by refreshing them.
func TestLeases(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testConfig(t, false, srv.Addr)
	cfg.LeaseTime = conf.Duration(time.Second)
	cfg.Timeout = conf.Duration(200 * time.Millisecond)
	live, dead, watcher := openTest(t, cfg), openTest(t, cfg), openTest(t, cfg)
	key := "conc:c:client_ip:192.0.2.7"
	do(t, live, countertest.Slots(key, 5, "1"))
	do(t, dead, countertest.Slots(key, 5, "1"), countertest.Slots(key+"x", 5, "1"))
	dead.crash()
	level := func() int64 {
		p := countertest.Slots(key, 5, "w")
		p.Op = counter.OpPeek
		return do(t, watcher, p)[0].Level
	}
	if l := level(); l != 2 {
		t.Fatalf("level %d, want 2", l)
	}
	deadline := time.Now().Add(5 * time.Second)
	for level() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the dead host's slot did not expire within 5s of a 1s lease")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The live host's slot outlives several lease times.
	time.Sleep(2500 * time.Millisecond)
	if l := level(); l != 1 {
		t.Errorf("after 2.5 lease times, level %d: the live host's lease was not refreshed", l)
	}
	rel := countertest.Slots(key, 5, "1")
	rel.Op = counter.OpRefund
	do(t, live, rel)
	if l := level(); l != 0 || live.Leases() != 0 {
		t.Errorf("after release: level %d, leases %d", l, live.Leases())
	}
	// Close gives back what is still held.
	do(t, live, countertest.Slots(key, 5, "2"))
	live.Close()
	if l := level(); l != 0 {
		t.Errorf("after Close: level %d", l)
	}
}

// A lease gone from Redis (restarted empty, reset) is counted lost once,
// at the first refresh that finds it gone, and no longer held; the
// others are refreshed as before.
func TestLeaseLost(t *testing.T) {
	srv := redistest.Start(t)
	s := openTest(t, testConfig(t, false, srv.Addr))
	ctx := context.Background()
	gone, kept := "conc:c:client_ip:192.0.2.8", "conc:c:client_ip:192.0.2.9"
	do(t, s, countertest.Slots(gone, 5, "1"))
	do(t, s, countertest.Slots(kept, 5, "2"))
	if err := srv.Client().Del(ctx, s.redisKey(counter.KindConcurrent, []byte(gone))).Err(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		s.refreshLeases(ctx)
	}
	st := s.Stats()
	if st.LeasesLost != 1 || st.Leases != 1 || st.RefreshErrors != 0 {
		t.Errorf("after 3 refreshes: %d leases lost, %d held, %d refresh errors; want 1, 1, 0", st.LeasesLost, st.Leases, st.RefreshErrors)
	}
	p := countertest.Slots(kept, 5, "w")
	p.Op = counter.OpPeek
	if l := do(t, s, p)[0].Level; l != 1 {
		t.Errorf("the lease still held: level %d, want 1", l)
	}
	// Its session ends: the release finds nothing to give back, and
	// nothing more is counted.
	rel := countertest.Slots(gone, 5, "1")
	rel.Op = counter.OpRefund
	do(t, s, rel)
	s.refreshLeases(ctx)
	if st := s.Stats(); st.LeasesLost != 1 || st.Leases != 1 {
		t.Errorf("after the release: %d leases lost, %d held; want 1 and 1", st.LeasesLost, st.Leases)
	}
}

// A hung Redis costs one timeout, then calls fail at once until it
// answers again; counting resumes where it was.
func TestBreaker(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testConfig(t, false, srv.Addr)
	cfg.Timeout = conf.Duration(100 * time.Millisecond)
	cfg.RetryBackoff = conf.Duration(300 * time.Millisecond)
	cfg.RetryBackoffMax = conf.Duration(time.Second)
	s := openTest(t, cfg)
	r := countertest.Rate("r:0:sender:b@example.org", 10, time.Hour, 10)
	do(t, s, r)
	srv.Pause()
	defer srv.Resume()
	err := s.Do(context.Background(), []counter.Request{r})
	if err == nil || errors.Is(err, ErrUnavailable) {
		t.Fatalf("first call to a hung Redis: %v, want a timeout", err)
	}
	for range 50 {
		if err := s.Do(context.Background(), []counter.Request{r}); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("while open: %v, want ErrUnavailable", err)
		}
	}
	st := s.Stats()
	if st.FastFails != 50 || st.BreakerOpens != 1 || !st.Down {
		t.Errorf("stats while down: %+v", st)
	}
	srv.Resume()
	deadline := time.Now().Add(5 * time.Second)
	var got []counter.Request
	for {
		got = []counter.Request{r}
		if err := s.Do(context.Background(), got); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Redis answers again but the store does not use it")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// 1 before, maybe 1 from the timed-out call (it reached Redis), 1 now.
	if got[0].Level < 2 || got[0].Level > 3 || s.Stats().Down {
		t.Errorf("after recovery: level %d, down %v", got[0].Level, s.Stats().Down)
	}
}

// A Redis that is down at start does not stop the store from opening.
func TestOpenWhileDown(t *testing.T) {
	srv := redistest.Start(t)
	srv.Stop()
	cfg := testConfig(t, false, srv.Addr)
	cfg.RetryBackoff = conf.Duration(50 * time.Millisecond)
	s := openTest(t, cfg)
	if !s.Stats().Down {
		t.Error("store not marked down")
	}
	if err := s.Do(context.Background(), []counter.Request{countertest.Rate("r:0:k", 1, time.Hour, 1)}); err == nil {
		t.Error("Do with Redis down: no error")
	}
	srv.Start()
	deadline := time.Now().Add(5 * time.Second)
	for s.Ping(context.Background()) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the store did not reconnect")
		}
		time.Sleep(60 * time.Millisecond)
	}
	if r := do(t, s, countertest.Rate("r:0:k", 1, time.Hour, 1)); !r[0].Allowed || r[0].Level != 1 {
		t.Errorf("after reconnect: %+v", r[0])
	}
}

// Hot keys and exemptions set on one host are seen by another.
func TestFleetShares(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testConfig(t, false, srv.Addr)
	a, b := openTest(t, cfg), openTest(t, cfg)
	ctx := context.Background()
	for range 3 {
		do(t, a, countertest.Rate("msgs:0:sender:hot@example.org", 2, time.Hour, 2))
	}
	hot, err := b.Hot(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	a.flushHot(ctx)
	if hot, err = b.Hot(ctx, 10); err != nil || len(hot) != 1 || hot[0].Key != "msgs:0:sender:hot@example.org" || hot[0].Level != 2 {
		t.Fatalf("Hot on the other host: %+v %v", hot, err)
	}
	until := time.Now().Add(time.Hour).Truncate(time.Second)
	if err := a.SetAllow(ctx, "sender:vip@example.org", until); err != nil {
		t.Fatal(err)
	}
	m, err := b.Allows(ctx)
	if err != nil || !m["sender:vip@example.org"].Equal(until) {
		t.Errorf("Allows on the other host: %v %v", m, err)
	}
	if err := b.Reset(ctx, [][]byte{[]byte("msgs:0:sender:hot@example.org")}); err != nil {
		t.Fatal(err)
	}
	if r := do(t, a, countertest.Rate("msgs:0:sender:hot@example.org", 2, time.Hour, 2)); r[0].Level != 1 {
		t.Errorf("after Reset on the other host: level %d", r[0].Level)
	}
	// Counters expire: the key's TTL is the time its bucket takes to drain.
	ttl, err := srv.Client().PTTL(ctx, a.redisKey(counter.KindRate, []byte("msgs:0:sender:hot@example.org"))).Result()
	if err != nil || ttl <= 29*time.Minute || ttl > 30*time.Minute+time.Second {
		t.Errorf("TTL %v %v, want about 30m (one unit of 2/1h)", ttl, err)
	}
}

// The stored tat is a decimal of Unix nanoseconds, whatever its size.
func TestStoredTAT(t *testing.T) {
	srv := redistest.Start(t)
	now := countertest.NewClock()
	s := openTest(t, testConfig(t, false, srv.Addr), WithClock(now.Now))
	r := counter.Request{Key: []byte("r:0:k"), Kind: counter.KindRate, Interval: 7, Burst: 1000, Cost: 999}
	do(t, s, r)
	v, err := srv.Client().Get(context.Background(), s.redisKey(counter.KindRate, r.Key)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if want := strconv.FormatInt(now.Now()+7*999, 10); v != want {
		t.Errorf("stored tat %s, want %s", v, want)
	}
	big := counter.Request{Key: []byte("r:0:big"), Kind: counter.KindRate, Interval: 1 << 40, Burst: 1 << 13, Cost: 1}
	if err := s.Do(context.Background(), []counter.Request{big}); err == nil {
		t.Error("a span above 52 days: no error")
	}
}

// Sentinel: the store finds the master through a Sentinel and follows a
// failover to the replica; counts made before it are on the replica.
func TestSentinelFailover(t *testing.T) {
	master := redistest.Start(t)
	replica := redistest.Start(t, "--replicaof", strings.Replace(master.Addr, ":", " ", 1))
	sen := redistest.StartSentinel(t, "sluicemaster", master)
	cfg := testConfig(t, false, sen.Addr)
	cfg.MasterName = "sluicemaster"
	cfg.RetryBackoff = conf.Duration(100 * time.Millisecond)
	cfg.RetryBackoffMax = conf.Duration(500 * time.Millisecond)
	s := openTest(t, cfg)
	r := countertest.Rate("msgs:0:sender:s@example.org", 10, time.Hour, 10)
	for range 3 {
		do(t, s, r)
	}
	// Wait until the replica has the count, then lose the master.
	deadline := time.Now().Add(10 * time.Second)
	for replica.Client().Exists(context.Background(), s.redisKey(counter.KindRate, r.Key)).Val() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the replica never got the key")
		}
		time.Sleep(50 * time.Millisecond)
	}
	master.Kill()
	deadline = time.Now().Add(30 * time.Second)
	var got []counter.Request
	for {
		got = []counter.Request{r}
		err := s.Do(context.Background(), got)
		if m, _ := sen.Master("sluicemaster"); err == nil && m == replica.Addr {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failover to %s within 30s: %v", replica.Addr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !got[0].Allowed || got[0].Level < 4 {
		t.Errorf("after failover: %+v, want the count to go on from 3", got[0])
	}
}
