// Package redis measures the Redis counter store against a local
// redis-server: round trips per SMTP stage, decisions per second and
// latency, beside the memory store as a baseline measured in the same run.
//
//	go test -run '^$' -bench . -benchtime 20000x ./test/bench/redis/
//
// ./test/bench/redis/run also drives two sluice daemons (memory and Redis)
// with the milter load generator and prints the latency each stage adds.
package redis

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"sluice/conf"
	"sluice/limits/counter"
	"sluice/limits/memstore"
	"sluice/limits/redisstore"
	"sluice/limits/redisstore/redistest"
)

// stage builds the requests of one MAIL FROM under a realistic policy:
// three rules (per sender, per sender domain, per client IP) with two
// windows each — six keys — for sender number i.
func stage(i int) []counter.Request {
	sender := "user" + strconv.Itoa(i%10000) + "@example" + strconv.Itoa(i%100) + ".test"
	ip := "10.0." + strconv.Itoa(i/256%256) + "." + strconv.Itoa(i%256)
	var reqs []counter.Request
	for _, k := range []struct{ rule, dim string }{
		{"msgs-per-sender", "sender:" + sender},
		{"msgs-per-domain", "sender_domain:" + sender[strings.IndexByte(sender, '@')+1:]},
		{"msgs-per-ip", "client_ip:" + ip},
	} {
		for w, per := range []time.Duration{time.Minute, 24 * time.Hour} {
			reqs = append(reqs, counter.Request{
				Key:  []byte(k.rule + ":" + strconv.Itoa(w) + ":" + k.dim),
				Kind: counter.KindRate, Interval: int64(per) / 1_000_000, Burst: 1_000_000, Cost: 1, Blocking: true,
			})
		}
	}
	return reqs
}

// calls counts what the client sends: each command or pipeline is one
// round trip.
type calls struct{ n atomic.Int64 }

func (c *calls) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (c *calls) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error { c.n.Add(1); return next(ctx, cmd) }
}
func (c *calls) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error { c.n.Add(1); return next(ctx, cmds) }
}

type backend struct {
	name  string
	open  func(b *testing.B, h *calls) counter.Store
	evals func() int64 // EVALSHA calls Redis counted; nil for memory
}

func backends(b *testing.B) []backend {
	// Started here, on the top-level benchmark, so that they outlive the
	// runs of each sub-benchmark.
	srv := redistest.Start(b)
	cl := redistest.StartCluster(b, 3)
	evalsha := func(addrs ...string) int64 {
		var n int64
		for _, a := range addrs {
			c := goredis.NewClient(&goredis.Options{Addr: a})
			info := c.Info(context.Background(), "commandstats").Val()
			c.Close()
			for _, l := range strings.Split(info, "\n") {
				if rest, ok := strings.CutPrefix(l, "cmdstat_evalsha:calls="); ok {
					v, _ := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
					n += v
				}
			}
		}
		return n
	}
	redisOpen := func(b *testing.B, h *calls, cluster bool, addrs ...string) counter.Store {
		cfg := redisstore.Config{Addrs: addrs, Cluster: cluster, Prefix: fmt.Sprintf("bench%d:", time.Now().UnixNano()), Timeout: conf.Duration(time.Second)}
		s, err := redisstore.Open(cfg, nil, redisstore.WithHook(h))
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	return []backend{
		{name: "memory", open: func(b *testing.B, h *calls) counter.Store {
			s, err := memstore.New(memstore.Config{}, nil)
			if err != nil {
				b.Fatal(err)
			}
			return s
		}},
		{name: "redis", open: func(b *testing.B, h *calls) counter.Store {
			return redisOpen(b, h, false, srv.Addr)
		}, evals: func() int64 { return evalsha(srv.Addr) }},
		{name: "cluster3", open: func(b *testing.B, h *calls) counter.Store {
			return redisOpen(b, h, true, cl.Addrs()...)
		}, evals: func() int64 { return evalsha(cl.Addrs()...) }},
	}
}

// BenchmarkStage runs one stage's Do at a time and reports its latency
// percentiles, round trips per stage (client calls) and script runs per
// stage (EVALSHA, one per Cluster slot touched).
func BenchmarkStage(b *testing.B) {
	for _, be := range backends(b) {
		b.Run(be.name, func(b *testing.B) {
			h := &calls{}
			st := be.open(b, h)
			defer st.Close()
			ctx := context.Background()
			for i := range 1000 { // warm the connections and the script cache
				if err := st.Do(ctx, stage(i)); err != nil {
					b.Fatal(err)
				}
			}
			var ev0 int64
			if be.evals != nil {
				ev0 = be.evals()
			}
			c0 := h.n.Load()
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				reqs := stage(i)
				t0 := time.Now()
				if err := st.Do(ctx, reqs); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
			b.ReportMetric(float64(h.n.Load()-c0)/float64(b.N), "roundtrips/stage")
			if be.evals != nil {
				b.ReportMetric(float64(be.evals()-ev0)/float64(b.N), "evalsha/stage")
			}
		})
	}
}

// BenchmarkStageParallel runs stages from many goroutines, as many SMTP
// sessions do: decisions (stages) per second.
func BenchmarkStageParallel(b *testing.B) {
	for _, be := range backends(b) {
		b.Run(be.name, func(b *testing.B) {
			h := &calls{}
			st := be.open(b, h)
			defer st.Close()
			var seq atomic.Int64
			b.SetParallelism(16) // 16 goroutines per CPU: sessions waiting on Redis
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					if err := st.Do(ctx, stage(int(seq.Add(1)))); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "stages/s")
		})
	}
}
