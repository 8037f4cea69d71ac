package redisstore

import "sync/atomic"

// stats are the store's counters since it was opened.
type stats struct {
	calls, roundTrips, errors, fastFails, opens atomic.Uint64
	reloads, compensations                      atomic.Uint64
	refreshErrors, leasesLost, refused          atomic.Uint64
	fallbacks                                   [3]atomic.Uint64 // allow, tempfail, local
}

// Stats is a snapshot of the store's counters, for metrics. All but
// Leases and Down only grow.
type Stats struct {
	Calls         uint64 // calls to Redis: events, refunds, exemptions, hot keys, lease refreshes
	RoundTrips    uint64 // script round trips (an event takes one; NOSCRIPT or a cross-slot undo adds one)
	Errors        uint64 // calls that failed: Redis unreachable, too slow, or down
	FastFails     uint64 // calls refused at once while Redis was known to be down
	BreakerOpens  uint64 // times Redis was found down
	ScriptReloads uint64 // NOSCRIPT answers (Redis restarted or flushed its scripts)
	Compensations uint64 // cross-slot undos under Cluster
	RefreshErrors uint64 // lease refreshes that failed
	LeasesLost    uint64 // leases found gone at refresh (expired, or Redis restarted)
	// Replies refused for declaring more than the store's bounds (see
	// ErrReplyRefused): a hostile or broken server at the Redis address.
	RepliesRefused uint64
	// Requests that rules answered by on_store_error while the store failed.
	FallbackAllow, FallbackTempfail, FallbackLocal uint64
	Leases                                         int  // concurrency slots this process holds
	Down                                           bool // calls are failing fast now
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	st := &s.stats
	return Stats{
		Calls: st.calls.Load(), RoundTrips: st.roundTrips.Load(), Errors: st.errors.Load(),
		FastFails: st.fastFails.Load(), BreakerOpens: st.opens.Load(), ScriptReloads: st.reloads.Load(),
		Compensations: st.compensations.Load(), RefreshErrors: st.refreshErrors.Load(), LeasesLost: st.leasesLost.Load(),
		RepliesRefused: st.refused.Load(),
		FallbackAllow:  st.fallbacks[0].Load(), FallbackTempfail: st.fallbacks[1].Load(), FallbackLocal: st.fallbacks[2].Load(),
		Leases: s.Leases(), Down: s.brk.isOpen(),
	}
}

// RecordFallback counts requests that rules answered by their
// on_store_error policy ("allow", "tempfail" or "local") because the store
// failed. The engine logs the failures, sampled.
func (s *Store) RecordFallback(policy string, requests int, err error) {
	i := 0
	switch policy {
	case "tempfail":
		i = 1
	case "local":
		i = 2
	}
	s.stats.fallbacks[i].Add(uint64(requests))
}
