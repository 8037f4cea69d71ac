package metrics

import "github.com/prometheus/client_golang/prometheus"

// connMetrics count the MTA connections sluice refused or closed to stay
// within its bounds (max_connections and the caps of one connection).
// Their methods make Metrics a milter.ConnObserver.
type connMetrics struct {
	max     prometheus.Gauge
	refused prometheus.Counter
	closed  *prometheus.CounterVec
}

// connCloseReasons are the reasons a connection is closed for, each
// exported from the start so that a rate over them is never empty.
var connCloseReasons = []string{"header_bytes", "macro_bytes", "packet_length", "malformed", "silent"}

func (c *connMetrics) init(f factory) {
	c.max = f.gauge(prometheus.GaugeOpts{
		Name: "sluice_connections_max",
		Help: "max_connections in force: MTA connections sluice keeps open at once.",
	})
	c.refused = f.counter(prometheus.CounterOpts{
		Name: "sluice_connections_refused_total",
		Help: "MTA connections closed as soon as accepted because max_connections were open.",
	})
	c.closed = f.counterVec(prometheus.CounterOpts{
		Name: "sluice_connections_closed_total",
		Help: "MTA connections sluice closed to stay within its bounds: header_bytes, macro_bytes and packet_length " +
			"(a cap crossed), malformed (a packet the milter library cannot read), silent (closed to make room at max_connections).",
	}, "reason")
	for _, r := range connCloseReasons {
		c.closed.WithLabelValues(r)
	}
}

// SetMaxConnections records max_connections.
func (c *connMetrics) SetMaxConnections(n int) { c.max.Set(float64(n)) }

// ConnRefused counts a connection refused at max_connections.
func (c *connMetrics) ConnRefused() { c.refused.Inc() }

// ConnCut counts a connection closed for crossing a bound.
func (c *connMetrics) ConnCut(reason string) { c.closed.WithLabelValues(reason).Inc() }
