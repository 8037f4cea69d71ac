package metrics

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/limits/counter"
)

// Store wraps s so that every call is counted and timed under the store
// label name ("memory", "redis", "local"). The limits engine is given the
// wrapped store and never knows. What s can do beyond counting (reset,
// hot keys, exemptions, pings, its own metrics) stays reachable through
// the wrapper: the optional methods are passed on, and what the wrapper
// does not offer is found by unwrapping (counter.As).
func (m *Metrics) Store(name string, s counter.Store) counter.Store {
	w := &store{inner: s}
	for op, st := range map[string]*opStats{
		"do": &w.do, "reset": &w.reset, "hot": &w.hot, "set_allow": &w.setAllow, "allows": &w.allows,
	} {
		st.n = m.storeOps.WithLabelValues(name, op)
		st.errs = m.storeErrors.WithLabelValues(name, op)
		st.time = m.storeTime.WithLabelValues(name, op)
	}
	return w
}

type opStats struct {
	n, errs prometheus.Counter
	time    prometheus.Observer
}

func (o *opStats) done(start time.Time, err error) {
	if errors.Is(err, counter.ErrUnsupported) {
		return // no call was made
	}
	o.time.Observe(time.Since(start).Seconds())
	o.n.Inc()
	if err != nil {
		o.errs.Inc()
	}
}

type store struct {
	inner                            counter.Store
	do, reset, hot, setAllow, allows opStats
}

var (
	_ counter.Wrapper   = (*store)(nil)
	_ counter.Resetter  = (*store)(nil)
	_ counter.HotLister = (*store)(nil)
	_ counter.Allower   = (*store)(nil)
	_ counter.Lener     = (*store)(nil)
	_ counter.Pinger    = (*store)(nil)
)

func (s *store) Unwrap() counter.Store { return s.inner }

func (s *store) Close() error { return s.inner.Close() }

func (s *store) Do(ctx context.Context, reqs []counter.Request) error {
	start := time.Now()
	err := s.inner.Do(ctx, reqs)
	s.do.done(start, err)
	return err
}

func (s *store) Reset(ctx context.Context, keys [][]byte) error {
	start := time.Now()
	err := counter.Reset(ctx, s.inner, keys)
	s.reset.done(start, err)
	return err
}

func (s *store) Hot(ctx context.Context, n int) ([]counter.HotKey, error) {
	start := time.Now()
	keys, err := counter.Hot(ctx, s.inner, n)
	s.hot.done(start, err)
	return keys, err
}

func (s *store) SetAllow(ctx context.Context, key string, until time.Time) error {
	start := time.Now()
	err := counter.SetAllow(ctx, s.inner, key, until)
	s.setAllow.done(start, err)
	return err
}

func (s *store) Allows(ctx context.Context) (map[string]time.Time, error) {
	start := time.Now()
	m, err := counter.Allows(ctx, s.inner)
	s.allows.done(start, err)
	return m, err
}

func (s *store) Len() int { return counter.Len(s.inner) }

func (s *store) Ping(ctx context.Context) error { return counter.Ping(ctx, s.inner) }
