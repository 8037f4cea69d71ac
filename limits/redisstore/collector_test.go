package metrics

import (
	"net"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"sluice/limits/memstore"
	"sluice/limits/redisstore"
)

// redisFake is a store that tells Redis statistics, as redisstore.Store does.
type redisFake struct{ st redisstore.Stats }

func (f *redisFake) Len() int                { return -1 }
func (f *redisFake) Stats() redisstore.Stats { return f.st }

func TestRedisStats(t *testing.T) {
	m := New("test")
	f := &redisFake{st: redisstore.Stats{
		Calls: 12, RoundTrips: 10, Errors: 3, FastFails: 7, BreakerOpens: 1, ScriptReloads: 2,
		Compensations: 4, RefreshErrors: 5, LeasesLost: 6, FallbackAllow: 99, Leases: 8, Down: true,
	}}
	m.WatchStore(f)
	want := `
# HELP sluice_redis_breaker_opens_total Times Redis was found down (the circuit breaker opened): one per outage.
# TYPE sluice_redis_breaker_opens_total counter
sluice_redis_breaker_opens_total 1
# HELP sluice_redis_calls_total Calls to Redis: events, refunds, exemptions, hot keys, lease refreshes, readiness pings.
# TYPE sluice_redis_calls_total counter
sluice_redis_calls_total 12
# HELP sluice_redis_cross_slot_undos_total Redis Cluster: events refused on one slot whose counts on other slots were given back by a second call.
# TYPE sluice_redis_cross_slot_undos_total counter
sluice_redis_cross_slot_undos_total 4
# HELP sluice_redis_down 1 while Redis is known to be down: calls fail at once and rules follow on_store_error.
# TYPE sluice_redis_down gauge
sluice_redis_down 1
# HELP sluice_redis_errors_total Calls to Redis that failed: unreachable, or no answer within timeout.
# TYPE sluice_redis_errors_total counter
sluice_redis_errors_total 3
# HELP sluice_redis_fast_failures_total Calls refused at once, without trying, while Redis was known to be down (circuit breaker open).
# TYPE sluice_redis_fast_failures_total counter
sluice_redis_fast_failures_total 7
# HELP sluice_redis_lease_refresh_errors_total Refreshes of this host's concurrency leases that failed; the leases expire after lease_time unless Redis answers.
# TYPE sluice_redis_lease_refresh_errors_total counter
sluice_redis_lease_refresh_errors_total 5
# HELP sluice_redis_leases Concurrency slots this sluice holds in Redis now.
# TYPE sluice_redis_leases gauge
sluice_redis_leases 8
# HELP sluice_redis_leases_lost_total Concurrency leases found gone at refresh (outage longer than lease_time, Redis restarted empty, or reset): their sessions are no longer counted.
# TYPE sluice_redis_leases_lost_total counter
sluice_redis_leases_lost_total 6
# HELP sluice_redis_round_trips_total Script round trips to Redis: one per counted event, one more after a NOSCRIPT answer or for a cross-slot undo.
# TYPE sluice_redis_round_trips_total counter
sluice_redis_round_trips_total 10
# HELP sluice_redis_script_reloads_total NOSCRIPT answers: Redis had lost sluice's scripts (restart, SCRIPT FLUSH) and was sent them again.
# TYPE sluice_redis_script_reloads_total counter
sluice_redis_script_reloads_total 2
`
	names := []string{"sluice_redis_breaker_opens_total", "sluice_redis_calls_total", "sluice_redis_cross_slot_undos_total",
		"sluice_redis_down", "sluice_redis_errors_total", "sluice_redis_fast_failures_total", "sluice_redis_lease_refresh_errors_total",
		"sluice_redis_leases", "sluice_redis_leases_lost_total", "sluice_redis_round_trips_total", "sluice_redis_script_reloads_total"}
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.reg, names...); n != len(names) {
		t.Errorf("%d sluice_redis_* series, want %d", n, len(names))
	}

	// Read at each scrape: Redis is back, more round trips.
	f.st.Down, f.st.RoundTrips = false, 11
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(`
# HELP sluice_redis_down 1 while Redis is known to be down: calls fail at once and rules follow on_store_error.
# TYPE sluice_redis_down gauge
sluice_redis_down 0
# HELP sluice_redis_round_trips_total Script round trips to Redis: one per counted event, one more after a NOSCRIPT answer or for a cross-slot undo.
# TYPE sluice_redis_round_trips_total counter
sluice_redis_round_trips_total 11
`), "sluice_redis_down", "sluice_redis_round_trips_total"); err != nil {
		t.Error(err)
	}
}

// The real Redis store is recognised: opened while nothing listens at its
// address, it is down from the start.
func TestRedisStoreDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	st, err := redisstore.Open(redisstore.Config{Addrs: []string{addr}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	m := New("test")
	m.WatchStore(st)
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(`
# HELP sluice_redis_down 1 while Redis is known to be down: calls fail at once and rules follow on_store_error.
# TYPE sluice_redis_down gauge
sluice_redis_down 1
`), "sluice_redis_down"); err != nil {
		t.Error(err)
	}
}

// The memory store has no Redis statistics: no sluice_redis_* series.
func TestNoRedisStatsOnMemory(t *testing.T) {
	m := New("test")
	m.WatchStore(newMemstore(t, memstore.Config{}))
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if strings.HasPrefix(f.GetName(), "sluice_redis_") {
			t.Errorf("a memory store exports %s", f.GetName())
		}
	}
}
