package milter

import (
	"time"

	"sluice/policy"
)

// Observer hears what the server does, for metrics. Its methods are called
// from every session's goroutine at once: they must be cheap, safe for
// concurrent use, and must not block.
type Observer interface {
	// SessionOpened and SessionClosed bracket each MTA connection.
	SessionOpened()
	SessionClosed()
	// Stage reports a stage's decision and the time sluice took to reach it
	// (the store, checks and decision; not a pause asked for by the policy).
	// d and what it points to are only valid during the call.
	Stage(st policy.Stage, took time.Duration, d *policy.Decision)
	// Check reports one sender check's result ("spf", "fail") and the time
	// the MAIL FROM checks it came with took.
	Check(check, result string, took time.Duration)
}

// ConnObserver is what an Observer may also hear: connections sluice
// refused or closed to stay within its bounds. Its methods are called from
// the accept loop and from sessions' goroutines at once.
type ConnObserver interface {
	// ConnRefused: max_connections were open, and none had been silent
	// long enough to make room; a new connection was closed at once.
	ConnRefused()
	// ConnCut: a connection was closed for crossing a bound. reason is
	// header_bytes, macro_bytes, packet_length, or silent (closed to make
	// room for a new one).
	ConnCut(reason string)
}

type nopObserver struct{}

func (nopObserver) SessionOpened()                                      {}
func (nopObserver) SessionClosed()                                      {}
func (nopObserver) Stage(policy.Stage, time.Duration, *policy.Decision) {}
func (nopObserver) Check(string, string, time.Duration)                 {}

// Observe makes o hear every session from now on. Call it before Serve.
func (s *Server) Observe(o Observer) {
	if o == nil {
		o = nopObserver{}
	}
	s.obs = o
	s.bounds.obs, _ = o.(ConnObserver)
}
