package milter

// Observer hears of MTA connections, for metrics. Its methods are called
// from every session's goroutine at once: they must be cheap, safe for
// concurrent use, and must not block. What each stage decided is the
// engine's to report (engine.Observer).
type Observer interface {
	SessionOpened()
	SessionClosed()
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
}
