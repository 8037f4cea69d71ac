package main

import (
	"math"
	"testing"
)

func hist(counts ...float64) stageHist {
	return stageHist{upper: []float64{0.0001, 0.00025, 0.0005, 0.001, math.Inf(1)}, count: counts}
}

// The p99 lands inside the bucket that holds the 99th percentile's rank,
// in proportion to how far into the bucket the rank falls, as Prometheus's
// histogram_quantile places it.
func TestOwnQuantileInterpolatesWithinTheBucket(t *testing.T) {
	// 1000 observations: 900 ≤ 0.1 ms, 80 more ≤ 0.25 ms, 20 more ≤ 0.5 ms.
	h := hist(900, 980, 1000, 1000, 1000)
	got, ok := h.quantile(0.99)
	// rank 990 is 10 of the 20 into (0.25, 0.5]: 0.375 ms.
	if !ok || math.Abs(got-0.375) > 1e-9 {
		t.Errorf("p99 = %v, %v; want 0.375 ms", got, ok)
	}
	if _, ok := hist(0, 0, 0, 0, 0).quantile(0.99); ok {
		t.Error("a p99 from no observation")
	}
	if _, ok := hist(0, 0, 0, 0, 10).quantile(0.99); ok {
		t.Error("a p99 in the +Inf bucket, past every bound")
	}
}

// A window's p99 is over what the histogram gained in it alone: the slow
// commands of an earlier window do not carry into the next.
func TestOwnP99IsOverTheWindowOnly(t *testing.T) {
	before := map[string]stageHist{"mail": hist(0, 0, 0, 1000, 1000)} // 1000 slow ones
	now := map[string]stageHist{"mail": hist(1000, 1000, 1000, 2000, 2000), "connect": hist(5, 5, 5, 5, 5)}
	got := ownP99s(now, before)
	if v := got["mail"]; math.Abs(v-0.1*0.99) > 1e-9 {
		t.Errorf("mail p99 since before = %v ms, want %v (all 1000 new ones ≤ 0.1 ms)", v, 0.1*0.99)
	}
	if _, ok := got["connect"]; !ok {
		t.Error("a stage the earlier scrape lacked is left out; want all of it counted")
	}
	if whole := ownP99s(now, nil)["mail"]; whole <= 0.5 {
		t.Errorf("mail p99 over everything = %v ms, want in (0.5, 1] with half of them slow", whole)
	}
}
