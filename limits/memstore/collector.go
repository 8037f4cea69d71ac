package memstore

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	snapAgeDesc = prometheus.NewDesc("sluice_snapshot_age_seconds",
		"Seconds since the counter snapshot was last written (or loaded at start).", nil, nil)
	snapFailDesc = prometheus.NewDesc("sluice_snapshot_write_failing",
		"1 when the last snapshot write failed (full or read-only disk): counters are kept in memory and the write is retried.", nil, nil)
)

// Collector exports the snapshot's age and whether its last write failed,
// read at each scrape.
func (s *Store) Collector() prometheus.Collector { return snapshotCollector{s} }

type snapshotCollector struct{ s *Store }

func (c snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- snapAgeDesc
	ch <- snapFailDesc
}

func (c snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	last, err := c.s.SnapshotStatus()
	if !last.IsZero() {
		ch <- prometheus.MustNewConstMetric(snapAgeDesc, prometheus.GaugeValue, time.Since(last).Seconds())
	}
	failing := 0.0
	if err != nil {
		failing = 1
	}
	ch <- prometheus.MustNewConstMetric(snapFailDesc, prometheus.GaugeValue, failing)
}
