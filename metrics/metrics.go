// Package metrics turns what sluice does into Prometheus metrics and serves
// them, with /healthz and /readyz, on an HTTP listener bound to localhost.
package metrics

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"sluice/conf"
	"sluice/guard"
	"sluice/limits/counter"
	"sluice/smtp"
	"sluice/socket"
)

// Config is the [metrics] table. Metrics are off when listen is empty (the
// table is absent): an HTTP port is something an admin opens on purpose.
type Config struct {
	Listen string `toml:"listen"` // host:port, e.g. "127.0.0.1:9465"
}

// DefaultListen is the port the example config and the docs use (9465 is
// free in Prometheus' list of default ports).
const DefaultListen = "127.0.0.1:9465"

// Defaults fills what the file left out: nothing, metrics stay off.
func (c *Config) Defaults() {}

// Validate checks the [metrics] keys.
func (c *Config) Validate() error {
	if c.Listen == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return conf.Errorf("listen", "%q: %s (write host:port, e.g. %q)", c.Listen, socket.AddrWhy(err), DefaultListen)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return conf.Errorf("listen", "%q: port %q is not a number from 1 to 65535", c.Listen, port)
	}
	if host != "" && host != "localhost" && net.ParseIP(host) == nil {
		return conf.Errorf("listen", "%q: host %q is not an IP address", c.Listen, host)
	}
	return nil
}

// Exposure says when the listener is reachable from other hosts (any
// address but loopback): not an error, since a scraper may sit elsewhere
// behind a firewall, but worth a warning, since /metrics and /readyz
// answer whoever connects.
func (c *Config) Exposure() error {
	if c.Listen == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil || host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return nil
	}
	return conf.Errorf("listen", "%q is reachable beyond loopback: any host that can connect reads sluice's metrics and health; listen on %q unless a firewall guards the port", c.Listen, DefaultListen)
}

// Enabled reports whether metrics are served.
func (c *Config) Enabled() bool { return c.Listen != "" }

// Buckets for sluice's own work per stage and per store call: from 10 µs
// to the stage timeout (a hanging backend). A stage on the memory store
// takes under 50 µs when nothing takes its CPU away, so the finest
// buckets tell that apart from a stage kept waiting for a CPU.
var latencyBuckets = []float64{
	0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
	0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20,
}

// Metrics holds every sluice metric. It is safe for concurrent use; the
// per-stage series are resolved once so that a session's hot path does no
// map lookups.
type Metrics struct {
	reg *prometheus.Registry

	sessionsOpen  prometheus.Gauge
	sessionsTotal prometheus.Counter
	connMetrics
	stageTime [smtp.Data + 1]prometheus.Observer
	replies   [smtp.Data + 1][smtp.ActionReject + 1]prometheus.Counter
	decisions *prometheus.CounterVec

	checks    *prometheus.CounterVec
	checkTime *prometheus.HistogramVec

	storeOps    *prometheus.CounterVec
	storeErrors *prometheus.CounterVec
	storeTime   *prometheus.HistogramVec
	fallbacks   *prometheus.CounterVec

	reloads      *prometheus.CounterVec
	reloadOK     prometheus.Gauge
	reloadAt     prometheus.Gauge
	rules        prometheus.Gauge
	shuttingDown prometheus.Gauge
}

// New makes the metrics, registered in a registry of their own with the Go
// runtime and process collectors.
func New(version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := factory{m.reg}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f.gauge(prometheus.GaugeOpts{
		Name:        "sluice_build_info",
		Help:        "Always 1; the labels say which sluice runs.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	}).Set(1)

	m.sessionsOpen = f.gauge(prometheus.GaugeOpts{
		Name: "sluice_sessions_open",
		Help: "MTA connections (milter sessions) open now.",
	})
	m.sessionsTotal = f.counter(prometheus.CounterOpts{
		Name: "sluice_sessions_total",
		Help: "MTA connections (milter sessions) accepted.",
	})
	m.connMetrics.init(f)
	stageTime := f.histogramVec(prometheus.HistogramOpts{
		Name:    "sluice_stage_duration_seconds",
		Help:    "Time sluice took to answer an SMTP stage (counting, checks, decision), pauses asked for by the policy excluded.",
		Buckets: latencyBuckets,
	}, "stage")
	replies := f.counterVec(prometheus.CounterOpts{
		Name: "sluice_replies_total",
		Help: "Answers to the MTA by stage; action none is continue, the others are refusals.",
	}, "stage", "action")
	for st := smtp.Connect; st <= smtp.Data; st++ {
		m.stageTime[st] = stageTime.WithLabelValues(st.String())
		for a := smtp.ActionNone; a <= smtp.ActionReject; a++ {
			if a == smtp.ActionNone || a.Refuses() {
				m.replies[st][a] = replies.WithLabelValues(st.String(), a.String())
			}
		}
	}
	m.decisions = f.counterVec(prometheus.CounterOpts{
		Name: "sluice_decisions_total",
		Help: "Verdicts by rule or check, the action it asks for and the mode it was applied in; " +
			"a refusing action in mode tag or dry-run is a refusal that would have happened.",
	}, "rule", "action", "mode")

	m.checks = f.counterVec(prometheus.CounterOpts{
		Name: "sluice_check_results_total",
		Help: "Results of sender checks (check=spf: pass, fail, softfail, neutral, none, temperror, permerror).",
	}, "check", "result")
	m.checkTime = f.histogramVec(prometheus.HistogramOpts{
		Name:    "sluice_check_duration_seconds",
		Help:    "Time a sender check took, DNS lookups included.",
		Buckets: latencyBuckets,
	}, "check")

	m.storeOps = f.counterVec(prometheus.CounterOpts{
		Name: "sluice_store_operations_total",
		Help: "Calls to the counter store, by store (memory, redis, local fallback) and operation.",
	}, "store", "op")
	m.storeErrors = f.counterVec(prometheus.CounterOpts{
		Name: "sluice_store_errors_total",
		Help: "Counter store calls that failed; each rule's on_store_error then decided.",
	}, "store", "op")
	m.storeTime = f.histogramVec(prometheus.HistogramOpts{
		Name:    "sluice_store_duration_seconds",
		Help:    "Latency of counter store calls.",
		Buckets: latencyBuckets,
	}, "store", "op")

	m.fallbacks = f.counterVec(prometheus.CounterOpts{
		Name: "sluice_store_fallbacks_total",
		Help: "Requests that rules answered by their on_store_error policy (allow, tempfail, local) because the store failed.",
	}, "policy")
	for _, p := range []string{"allow", "tempfail", "local"} {
		m.fallbacks.WithLabelValues(p)
	}

	m.reloads = f.counterVec(prometheus.CounterOpts{
		Name: "sluice_config_reloads_total",
		Help: "Config reloads (SIGHUP) by result; a failed one leaves the running config in force.",
	}, "result")
	for _, r := range []string{"success", "failure"} {
		m.reloads.WithLabelValues(r)
	}
	m.reloadOK = f.gauge(prometheus.GaugeOpts{
		Name: "sluice_config_last_reload_successful",
		Help: "1 when the last config load or reload succeeded, 0 when the file on disk was refused.",
	})
	m.reloadAt = f.gauge(prometheus.GaugeOpts{
		Name: "sluice_config_last_reload_success_timestamp_seconds",
		Help: "When the config in force was loaded (Unix time).",
	})
	m.rules = f.gauge(prometheus.GaugeOpts{
		Name: "sluice_config_rules",
		Help: "Limit rules in the config in force.",
	})
	m.shuttingDown = f.gauge(prometheus.GaugeOpts{
		Name: "sluice_shutting_down",
		Help: "1 once sluice stopped accepting connections to exit.",
	})
	m.reg.MustRegister(panicCollector{})
	return m
}

// Registry is where the metrics are registered, for the HTTP handler and
// for tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// SessionOpened counts a new MTA connection.
func (m *Metrics) SessionOpened() {
	m.sessionsOpen.Inc()
	m.sessionsTotal.Inc()
}

// SessionClosed counts an MTA connection gone.
func (m *Metrics) SessionClosed() { m.sessionsOpen.Dec() }

// Stage records a stage's latency, its answer and every verdict in it;
// it makes Metrics an engine.Observer.
func (m *Metrics) Stage(st smtp.Stage, took time.Duration, d *smtp.Decision) {
	if st > smtp.Data {
		return
	}
	m.stageTime[st].Observe(took.Seconds())
	if a := d.Action; a <= smtp.ActionReject {
		if c := m.replies[st][a]; c != nil {
			c.Inc()
		}
	}
	for i := range d.Outcomes {
		o := &d.Outcomes[i]
		m.decisions.WithLabelValues(o.Source, o.Asked.String(), o.Mode.String()).Inc()
	}
}

// Check records the result of one sender check (check "spf", result
// "pass") and how long it took.
func (m *Metrics) Check(check, result string, took time.Duration) {
	m.checks.WithLabelValues(check, result).Inc()
	m.checkTime.WithLabelValues(check).Observe(took.Seconds())
}

// RecordFallback counts requests that rules answered by on_store_error
// because the store failed; it makes Metrics a limits.StoreErrorRecorder.
func (m *Metrics) RecordFallback(policy string, requests int, err error) {
	m.fallbacks.WithLabelValues(policy).Add(float64(requests))
}

// ConfigLoaded records a config put in force (at start or by a reload).
func (m *Metrics) ConfigLoaded(rules int, reload bool) {
	if reload {
		m.reloads.WithLabelValues("success").Inc()
	}
	m.reloadOK.Set(1)
	m.reloadAt.SetToCurrentTime()
	m.rules.Set(float64(rules))
}

// ReloadFailed records a reload that left the running config in force.
func (m *Metrics) ReloadFailed() {
	m.reloads.WithLabelValues("failure").Inc()
	m.reloadOK.Set(0)
}

// ShuttingDown records that sluice stopped accepting connections.
func (m *Metrics) ShuttingDown() { m.shuttingDown.Set(1) }

// WatchStore exports the number of keys the store tracks and, when the
// store exports metrics of its own (the memory store's snapshot, the
// Redis store's statistics), those. The values are read at each scrape.
func (m *Metrics) WatchStore(s counter.Store) {
	m.reg.MustRegister(&storeCollector{s: s})
	if c, ok := counter.As[interface{ Collector() prometheus.Collector }](s); ok {
		m.reg.MustRegister(c.Collector())
	}
}

var keysDesc = prometheus.NewDesc("sluice_store_keys",
	"Keys the counter store tracks now (idle ones not yet reclaimed included).", nil, nil)

type storeCollector struct{ s counter.Store }

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- keysDesc }

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	if n := counter.Len(c.s); n >= 0 {
		ch <- prometheus.MustNewConstMetric(keysDesc, prometheus.GaugeValue, float64(n))
	}
}

var panicsDesc = prometheus.NewDesc("sluice_panics_total",
	"Panics recovered, by the place that recovered them: a bug, logged with its stack; sluice went on.", []string{"where"}, nil)

// panicCollector reads guard's counts at each scrape.
type panicCollector struct{}

func (panicCollector) Describe(ch chan<- *prometheus.Desc) { ch <- panicsDesc }

func (panicCollector) Collect(ch chan<- prometheus.Metric) {
	for _, c := range guard.Counts() {
		ch <- prometheus.MustNewConstMetric(panicsDesc, prometheus.CounterValue, float64(c.N), c.Where)
	}
}

// factory registers what it makes.
type factory struct{ reg *prometheus.Registry }

func (f factory) gauge(o prometheus.GaugeOpts) prometheus.Gauge {
	g := prometheus.NewGauge(o)
	f.reg.MustRegister(g)
	return g
}

func (f factory) counter(o prometheus.CounterOpts) prometheus.Counter {
	c := prometheus.NewCounter(o)
	f.reg.MustRegister(c)
	return c
}

func (f factory) counterVec(o prometheus.CounterOpts, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(o, labels)
	f.reg.MustRegister(c)
	return c
}

func (f factory) histogramVec(o prometheus.HistogramOpts, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(o, labels)
	f.reg.MustRegister(h)
	return h
}

// errNotReady is what /readyz says while sluice is starting or stopping.
var errNotReady = errors.New("not ready")

// ReadyFunc answers /readyz: nil when sluice can take sessions and count.
type ReadyFunc func(ctx context.Context) error
