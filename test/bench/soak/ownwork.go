package main

import (
	"math"
	"slices"
)

// sluice's own time per stage comes from its sluice_stage_duration_seconds
// histogram: from the command read to the answer decided, so it holds the
// counting, the store and the decision and none of the wait for a halted
// vCPU to wake that every round trip on this machine carries (the load
// generator's p99s, taken from the far end of the socket, are mostly that).

// stageHist is one stage's histogram as scraped: the count of
// observations at or under each bucket's upper bound, +Inf last.
type stageHist struct {
	upper []float64 // seconds
	count []float64 // cumulative
}

// stageHists reads every stage's histogram out of a scrape.
func stageHists(m metricFamilies) map[string]stageHist {
	f := m["sluice_stage_duration_seconds"]
	if f == nil {
		return nil
	}
	out := map[string]stageHist{}
	for _, s := range f.GetMetric() {
		if s.Histogram == nil {
			continue
		}
		var stage string
		for _, lp := range s.GetLabel() {
			if lp.GetName() == "stage" {
				stage = lp.GetValue()
			}
		}
		var h stageHist
		for _, b := range s.Histogram.GetBucket() {
			h.upper = append(h.upper, b.GetUpperBound())
			h.count = append(h.count, float64(b.GetCumulativeCount()))
		}
		if n := len(h.upper); n == 0 || !math.IsInf(h.upper[n-1], 1) {
			h.upper = append(h.upper, math.Inf(1))
			h.count = append(h.count, float64(s.Histogram.GetSampleCount()))
		}
		out[stage] = h
	}
	return out
}

// since is what h gained after prev, an earlier scrape of the same
// daemon; all of h when prev has no such stage or other buckets.
func (h stageHist) since(prev stageHist) stageHist {
	if !slices.Equal(h.upper, prev.upper) {
		return h
	}
	d := stageHist{upper: h.upper, count: make([]float64, len(h.count))}
	for i := range h.count {
		d.count[i] = h.count[i] - prev.count[i]
	}
	return d
}

// quantile is the q-quantile in milliseconds, found as Prometheus's
// histogram_quantile finds it: linearly within the bucket it falls in,
// from 0 in the first; false with no observation, or when it falls in the
// +Inf bucket (beyond the stage timeout, so not a latency to judge).
func (h stageHist) quantile(q float64) (float64, bool) {
	n := len(h.count)
	if n == 0 || h.count[n-1] <= 0 {
		return 0, false
	}
	rank := q * h.count[n-1]
	i, _ := slices.BinarySearchFunc(h.count, rank, func(c, r float64) int {
		if c < r {
			return -1
		}
		return 1 // the first bucket whose count reaches the rank
	})
	if i >= n || math.IsInf(h.upper[i], 1) {
		return 0, false
	}
	lo, below := 0.0, 0.0
	if i > 0 {
		lo, below = h.upper[i-1], h.count[i-1]
	}
	in := h.count[i] - below
	if in <= 0 {
		return h.upper[i] * 1000, true
	}
	return (lo + (h.upper[i]-lo)*(rank-below)/in) * 1000, true
}

// ownP99s is each stage's p99 in ms over what now gained after prev,
// leaving out the stages with no command in between.
func ownP99s(now, prev map[string]stageHist) map[string]float64 {
	var out map[string]float64
	for stage, h := range now {
		if v, ok := h.since(prev[stage]).quantile(0.99); ok {
			if out == nil {
				out = map[string]float64{}
			}
			out[stage] = v
		}
	}
	return out
}
