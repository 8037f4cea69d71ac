package redisstore

import (
	"net"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

// The collector exports every statistic under its sluice_redis_* name, and
// reads them again at each scrape.
func TestRedisStats(t *testing.T) {
	reg := prometheus.NewRegistry()
	st := Stats{
		Calls: 12, RoundTrips: 10, Errors: 3, FastFails: 7, BreakerOpens: 1, ScriptReloads: 2,
		Compensations: 4, RefreshErrors: 5, LeasesLost: 6, RepliesRefused: 9, FallbackAllow: 99, Leases: 8, Down: true,
	}
	reg.MustRegister(NewCollector(func() Stats { return st }))
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
# HELP sluice_redis_replies_refused_total Replies refused for declaring more than the store's bounds (64 MiB, 1,048,576 elements, 32 levels) or for not being RESP: a hostile or broken server at the Redis address.
# TYPE sluice_redis_replies_refused_total counter
sluice_redis_replies_refused_total 9
# HELP sluice_redis_round_trips_total Script round trips to Redis: one per counted event, one more after a NOSCRIPT answer or for a cross-slot undo.
# TYPE sluice_redis_round_trips_total counter
sluice_redis_round_trips_total 10
# HELP sluice_redis_script_reloads_total NOSCRIPT answers: Redis had lost sluice's scripts (restart, SCRIPT FLUSH) and was sent them again.
# TYPE sluice_redis_script_reloads_total counter
sluice_redis_script_reloads_total 2
`
	names := []string{"sluice_redis_breaker_opens_total", "sluice_redis_calls_total", "sluice_redis_cross_slot_undos_total",
		"sluice_redis_down", "sluice_redis_errors_total", "sluice_redis_fast_failures_total", "sluice_redis_lease_refresh_errors_total",
		"sluice_redis_leases", "sluice_redis_leases_lost_total", "sluice_redis_replies_refused_total", "sluice_redis_round_trips_total", "sluice_redis_script_reloads_total"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, names...); n != len(names) {
		t.Errorf("%d sluice_redis_* series, want %d", n, len(names))
	}

	// Read at each scrape: Redis is back, more round trips.
	st.Down, st.RoundTrips = false, 11
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
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

// The store's own collector says so when the store is opened while nothing
// listens at its address: it is down from the start.
func TestRedisStoreDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s, err := Open(Config{Addrs: []string{addr}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(s.Collector())
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP sluice_redis_down 1 while Redis is known to be down: calls fail at once and rules follow on_store_error.
# TYPE sluice_redis_down gauge
sluice_redis_down 1
`), "sluice_redis_down"); err != nil {
		t.Error(err)
	}
}
