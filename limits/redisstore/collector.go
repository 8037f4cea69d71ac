package redisstore

import "github.com/prometheus/client_golang/prometheus"

// Collector exports the store's own statistics as sluice_redis_*: round
// trips, outages, script reloads, leases. The values are read at each
// scrape.
func (s *Store) Collector() prometheus.Collector { return NewCollector(s.Stats) }

// NewCollector exports the statistics stats returns at each scrape.
func NewCollector(stats func() Stats) prometheus.Collector { return collector{stats} }

// The Redis store's requests answered by on_store_error are not here:
// sluice_store_fallbacks_total counts the same requests for every store.
var (
	redisCounters = []struct {
		desc *prometheus.Desc
		val  func(*Stats) uint64
	}{
		{redisDesc("calls_total", "Calls to Redis: events, refunds, exemptions, hot keys, lease refreshes, readiness pings."),
			func(s *Stats) uint64 { return s.Calls }},
		{redisDesc("round_trips_total", "Script round trips to Redis: one per counted event, one more after a NOSCRIPT answer or for a cross-slot undo."),
			func(s *Stats) uint64 { return s.RoundTrips }},
		{redisDesc("errors_total", "Calls to Redis that failed: unreachable, or no answer within timeout."),
			func(s *Stats) uint64 { return s.Errors }},
		{redisDesc("fast_failures_total", "Calls refused at once, without trying, while Redis was known to be down (circuit breaker open)."),
			func(s *Stats) uint64 { return s.FastFails }},
		{redisDesc("breaker_opens_total", "Times Redis was found down (the circuit breaker opened): one per outage."),
			func(s *Stats) uint64 { return s.BreakerOpens }},
		{redisDesc("script_reloads_total", "NOSCRIPT answers: Redis had lost sluice's scripts (restart, SCRIPT FLUSH) and was sent them again."),
			func(s *Stats) uint64 { return s.ScriptReloads }},
		{redisDesc("cross_slot_undos_total", "Redis Cluster: events refused on one slot whose counts on other slots were given back by a second call."),
			func(s *Stats) uint64 { return s.Compensations }},
		{redisDesc("lease_refresh_errors_total", "Refreshes of this host's concurrency leases that failed; the leases expire after lease_time unless Redis answers."),
			func(s *Stats) uint64 { return s.RefreshErrors }},
		{redisDesc("leases_lost_total", "Concurrency leases found gone at refresh (outage longer than lease_time, Redis restarted empty, or reset): their sessions are no longer counted."),
			func(s *Stats) uint64 { return s.LeasesLost }},
		{redisDesc("replies_refused_total", "Replies refused for declaring more than the store's bounds (64 MiB, 1,048,576 elements, 32 levels) or for not being RESP: a hostile or broken server at the Redis address."),
			func(s *Stats) uint64 { return s.RepliesRefused }},
	}
	redisLeasesDesc = redisDesc("leases", "Concurrency slots this sluice holds in Redis now.")
	redisDownDesc   = redisDesc("down", "1 while Redis is known to be down: calls fail at once and rules follow on_store_error.")
)

func redisDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc("sluice_redis_"+name, help, nil, nil)
}

type collector struct{ stats func() Stats }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range redisCounters {
		ch <- m.desc
	}
	ch <- redisLeasesDesc
	ch <- redisDownDesc
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.stats()
	for _, m := range redisCounters {
		ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(m.val(&st)))
	}
	ch <- prometheus.MustNewConstMetric(redisLeasesDesc, prometheus.GaugeValue, float64(st.Leases))
	down := 0.0
	if st.Down {
		down = 1
	}
	ch <- prometheus.MustNewConstMetric(redisDownDesc, prometheus.GaugeValue, down)
}
