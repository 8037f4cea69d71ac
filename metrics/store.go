package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/limits/counter"
)

// Store wraps s so that every call is counted and timed under the store
// label name ("memory", "redis", "local"). The limits engine is given the
// wrapped store and never knows.
func (m *Metrics) Store(name string, s counter.Store) counter.Store {
	w := &store{Store: s}
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
	o.time.Observe(time.Since(start).Seconds())
	o.n.Inc()
	if err != nil {
		o.errs.Inc()
	}
}

type store struct {
	counter.Store
	do, reset, hot, setAllow, allows opStats
}

func (s *store) Do(ctx context.Context, reqs []counter.Request) error {
	start := time.Now()
	err := s.Store.Do(ctx, reqs)
	s.do.done(start, err)
	return err
}

func (s *store) Reset(ctx context.Context, keys [][]byte) error {
	start := time.Now()
	err := s.Store.Reset(ctx, keys)
	s.reset.done(start, err)
	return err
}

func (s *store) Hot(ctx context.Context, n int) ([]counter.HotKey, error) {
	start := time.Now()
	keys, err := s.Store.Hot(ctx, n)
	s.hot.done(start, err)
	return keys, err
}

func (s *store) SetAllow(ctx context.Context, key string, until time.Time) error {
	start := time.Now()
	err := s.Store.SetAllow(ctx, key, until)
	s.setAllow.done(start, err)
	return err
}

func (s *store) Allows(ctx context.Context) (map[string]time.Time, error) {
	start := time.Now()
	m, err := s.Store.Allows(ctx)
	s.allows.done(start, err)
	return m, err
}
