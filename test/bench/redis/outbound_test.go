package redis

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"sluice/limits"
	"sluice/policy"
)

// outboundPolicy is a provider's outbound policy: recipients per SASL
// user with runtime overrides (a check of the key's and its domain's) and
// a restriction, and distinct recipient domains per SASL user with a
// restriction. One RCPT asks the store 7 things: 1 rate window, 2
// override checks, 2 restrictions, 1 distinct set... all in one call.
var outboundPolicy = limits.Config{Trusted: []string{}, Rules: []limits.Rule{
	{Name: "rcpts", Count: "recipients", Per: "sasl_user", Rate: "1000000/1h", Overrides: "runtime", RestrictFor: "today"},
	{Name: "domains", Count: "distinct", Of: "rcpt_domain", Per: "sasl_user", Rate: "100000/1h", RestrictFor: "24h"},
}}

// BenchmarkOutboundStage is one RCPT under outboundPolicy through the
// limits engine, Check and Settle: its latency, and the round trips and
// script runs it costs the Redis store (still one of each per stage
// with one server; under Cluster the override check of the domain key
// lives on another slot, in the same pipeline).
func BenchmarkOutboundStage(b *testing.B) {
	for _, be := range backends(b) {
		b.Run(be.name, func(b *testing.B) {
			h := &calls{}
			st := be.open(b, h)
			defer st.Close()
			e, err := limits.New(&outboundPolicy, nil, limits.Options{Store: st})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			s := e.NewSession()
			fact := func(i int) *policy.Facts {
				return &policy.Facts{SASLUser: fmt.Sprintf("user%d@example%d.test", i%1000, i%10),
					Rcpt: fmt.Sprintf("r@d%d.example", i%97)}
			}
			for i := range 1000 {
				if _, err := e.Check(ctx, policy.StageRcpt, fact(i), s); err != nil {
					b.Fatal(err)
				}
				e.Settle(ctx, s, false)
			}
			var ev0 int64
			if be.evals != nil {
				ev0 = be.evals()
			}
			c0 := h.n.Load()
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				f := fact(i)
				t0 := time.Now()
				vs, err := e.Check(ctx, policy.StageRcpt, f, s)
				if err != nil || vs != nil {
					b.Fatalf("check: %v %v", vs, err)
				}
				e.Settle(ctx, s, false)
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(h.n.Load()-c0)/float64(b.N), "roundtrips/stage")
			if be.evals != nil {
				b.ReportMetric(float64(be.evals()-ev0)/float64(b.N), "evalsha/stage")
			}
		})
	}
}
