package milter

// Observer hears of MTA connections, for metrics. Its methods are called
// from every session's goroutine at once: they must be cheap, safe for
// concurrent use, and must not block. What each stage decided is the
// engine's to report (engine.Observer).
type Observer interface {
	SessionOpened()
	SessionClosed()
}

// ConnObserver is what an Observer may also hear: connections sluice
// refused or closed to stay within its bounds. Its methods are called from
// the accept loop and from sessions' goroutines at once.
type ConnObserver interface {
	// ConnRefused: max_connections were open, and none had been silent
	// long enough to make room; a new connection was closed at once.
	ConnRefused()
	// ConnCut: a connection was closed for crossing a bound. reason is
	// header_bytes, macro_bytes, packet_length, malformed (a packet the
	// milter library cannot read safely), or silent (closed to make room
	// for a new one).
	ConnCut(reason string)
}

type nopObserver struct{}

func (nopObserver) SessionOpened() {}
func (nopObserver) SessionClosed() {}

// Observe makes o hear every session from now on. Call it before Serve.
func (s *Server) Observe(o Observer) {
	if o == nil {
		o = nopObserver{}
	}
	s.obs = o
	s.bounds.obs, _ = o.(ConnObserver)
}
