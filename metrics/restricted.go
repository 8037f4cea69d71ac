package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var restrictedDesc = prometheus.NewDesc("sluice_restricted_keys",
	"Keys restricted now by each rule with restrict_for (sluice counters restricted lists them); shared by the hosts of a Redis store.",
	[]string{"rule"}, nil)

// restrictedEvery is how long one count serves scrapes: counting asks the
// store for every restriction, which with Redis is a round trip per key.
const restrictedEvery = 15 * time.Second

// WatchRestrictions exports sluice_restricted_keys{rule} from count,
// asked at most every 15 seconds and for at most 5 seconds.
func (m *Metrics) WatchRestrictions(count func(ctx context.Context) (map[string]int, error)) {
	m.reg.MustRegister(&restrictedCollector{count: count})
}

type restrictedCollector struct {
	count func(ctx context.Context) (map[string]int, error)
	mu    sync.Mutex
	at    time.Time
	last  map[string]int
}

func (c *restrictedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- restrictedDesc }

func (c *restrictedCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) >= restrictedEvery {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if m, err := c.count(ctx); err == nil {
			c.last, c.at = m, time.Now()
		}
		cancel()
	}
	for rule, n := range c.last {
		ch <- prometheus.MustNewConstMetric(restrictedDesc, prometheus.GaugeValue, float64(n), rule)
	}
}
