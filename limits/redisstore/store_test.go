package redisstore

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"sluice/conf"
	"sluice/limits/counter"
	"sluice/limits/counter/countertest"
	"sluice/limits/redisstore/redistest"
)

// testConfig is a config for a server at addrs, with a prefix of its own
// per store so that stores of one test never see each other's keys.
func testConfig(t testing.TB, cluster bool, addrs ...string) Config {
	c := Config{Addrs: addrs, Cluster: cluster, Prefix: "t" + time.Now().Format("150405.000000000") + ":", Timeout: conf.Duration(2 * time.Second)}
	c.Defaults()
	return c
}

func openTest(t testing.TB, cfg Config, opts ...Option) *Store {
	t.Helper()
	s, err := Open(cfg, zaptest.NewLogger(t), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSuiteRedis(t *testing.T) {
	srv := redistest.Start(t)
	countertest.Suite(t, func(t *testing.T, now func() int64) counter.Store {
		return openTest(t, testConfig(t, false, srv.Addr), WithClock(now))
	})
}

func TestPropertyRedis(t *testing.T) {
	srv := redistest.Start(t)
	opt := countertest.PropertyOptions{Seed: 1, Sequences: 300}
	if testing.Short() {
		opt.Sequences = 30
	}
	countertest.Property(t, func(t *testing.T, now func() int64) counter.Store {
		return openTest(t, testConfig(t, false, srv.Addr), WithClock(now))
	}, opt)
}

func TestSuiteCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	countertest.Suite(t, func(t *testing.T, now func() int64) counter.Store {
		return openTest(t, testConfig(t, true, cl.Addrs()...), WithClock(now))
	})
}

func TestPropertyCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	opt := countertest.PropertyOptions{Seed: 1000, Sequences: 150}
	if testing.Short() {
		opt.Sequences = 20
	}
	countertest.Property(t, func(t *testing.T, now func() int64) counter.Store {
		return openTest(t, testConfig(t, true, cl.Addrs()...), WithClock(now))
	}, opt)
}

// With Redis's own clock (no test clock), a burst is admitted and then refused.
func TestRedisClock(t *testing.T) {
	srv := redistest.Start(t)
	s := openTest(t, testConfig(t, false, srv.Addr))
	for i := range 4 {
		r := []counter.Request{countertest.Rate("rule:0:sender:a@example.org", 3, time.Hour, 3)}
		if err := s.Do(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		if want := i < 3; r[0].Allowed != want {
			t.Fatalf("take %d: allowed %v, want %v", i+1, r[0].Allowed, want)
		}
		if i == 3 && (r[0].RetryAfter <= 19*time.Minute || r[0].RetryAfter > 20*time.Minute) {
			t.Errorf("retry after %v, want just under 20m", r[0].RetryAfter)
		}
	}
}
