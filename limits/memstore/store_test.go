package memstore

import (
	"testing"

	"go.uber.org/zap/zaptest"

	"sluice/limits/counter"
	"sluice/limits/counter/countertest"
)

func newTestStore(t *testing.T, cfg Config, now func() int64, opts ...Option) *Store {
	t.Helper()
	s, err := New(cfg, zaptest.NewLogger(t), append([]Option{WithClock(now)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSuite(t *testing.T) {
	countertest.Suite(t, func(t *testing.T, now func() int64) counter.Store {
		return newTestStore(t, Config{}, now)
	})
}

func TestProperty(t *testing.T) {
	opt := countertest.PropertyOptions{Seed: 1}
	if testing.Short() {
		opt.Sequences = 50
	}
	countertest.Property(t, func(t *testing.T, now func() int64) counter.Store {
		// A small table, so that growth and deletion run under the property too.
		return newTestStore(t, Config{MaxKeys: 100_000}, now)
	}, opt)
}
