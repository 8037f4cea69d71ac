package alert

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"sluice/guard"
	"sluice/limits/counter"
)

// Notifier is what the engine tells of events; Notify must not block.
type Notifier interface {
	Notify(ev Event)
}

// Queue and retry bounds: an alert is worth a few tries, not a backlog
// that outlives the incident.
const (
	queueSize   = 1000 // per target
	workers     = 2    // per target: one target that hangs holds no other's alerts
	maxAttempts = 5
	maxLocal    = 10_000 // (target, rule, key, event) pairs remembered for dedup
	claimWait   = 2 * time.Second
)

// The first retry waits firstRetry, each next one twice as long, up to
// maxRetry; tests shorten them.
var (
	firstRetry = time.Second
	maxRetry   = time.Minute
)

// Options are what a Dispatcher runs on.
type Options struct {
	// Store deduplicates across the hosts sharing it, when it is a
	// counter.Claimer; nil: this host alone.
	Store counter.Store
	Log   *zap.Logger
	Host  string // names this host in alerts; default os.Hostname
	// Now is the clock events are stamped and deduplicated by; nil:
	// time.Now.
	Now func() time.Time
}

// Dispatcher sends alerts: it is safe for concurrent use, built once and
// given new targets at each config load.
type Dispatcher struct {
	opt     Options
	targets atomic.Pointer[[]*target]
	cfgMu   sync.Mutex // one Configure at a time
	wg      sync.WaitGroup
	closed  atomic.Bool

	mu   sync.Mutex
	sent map[string]time.Time // dedup key -> until

	warn  rate.Sometimes
	stats stats
}

type job struct {
	t       *target
	ev      Event
	attempt int
	claimed bool
}

// target is one [[alert]] table, compiled, with its own queue and
// workers.
type target struct {
	cfg   Config
	id    string // stable across reloads: what it sends to
	kind  string // "webhook" or "mail", the metrics' label
	rules map[string]bool
	on    map[string]bool
	send  func(ctx context.Context, ev *Event) error
	queue chan job
	stop  chan struct{} // closed when a reload or Close retires it
}

// New makes a dispatcher with no targets.
func New(opt Options) *Dispatcher {
	if opt.Log == nil {
		opt.Log = zap.NewNop()
	}
	if opt.Host == "" {
		opt.Host, _ = os.Hostname()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	d := &Dispatcher{opt: opt, sent: make(map[string]time.Time), warn: rate.Sometimes{Interval: 10 * time.Second}}
	d.targets.Store(&[]*target{})
	return d
}

// Configure puts cfgs in force, replacing the targets; the config was
// validated. A target whose table is unchanged keeps its queue; those no
// longer in the file stop, and what they had queued is not sent. An
// error leaves the targets in force as they were.
func (d *Dispatcher) Configure(cfgs []Config) error {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	if d.closed.Load() {
		return errors.New("alerts: dispatcher closed")
	}
	old := *d.targets.Load()
	kept := make(map[*target]bool)
	ts := make([]*target, 0, len(cfgs))
	var fresh []*target
	for i := range cfgs {
		c := cfgs[i]
		c.Defaults()
		if t := sameTarget(old, &c, kept); t != nil {
			ts = append(ts, t)
			continue
		}
		t, err := newTarget(c)
		if err != nil {
			return fmt.Errorf("alert %d: %w", i, err)
		}
		ts, fresh = append(ts, t), append(fresh, t)
	}
	for _, t := range fresh {
		d.start(t)
	}
	d.targets.Store(&ts)
	for _, t := range old {
		if !kept[t] {
			close(t.stop)
		}
	}
	return nil
}

// sameTarget finds in ts a target of the same table not kept yet.
func sameTarget(ts []*target, c *Config, kept map[*target]bool) *target {
	for _, t := range ts {
		if !kept[t] && reflect.DeepEqual(&t.cfg, c) {
			kept[t] = true
			return t
		}
	}
	return nil
}

func (d *Dispatcher) start(t *target) {
	for range workers {
		d.wg.Add(1)
		guard.Go(d.opt.Log, "alert worker", func() {
			defer d.wg.Done()
			for {
				select {
				case <-t.stop:
					return
				case j := <-t.queue:
					d.run(j)
				}
			}
		})
	}
}

func newTarget(c Config) (*target, error) {
	t := &target{cfg: c, rules: make(map[string]bool), on: make(map[string]bool),
		queue: make(chan job, queueSize), stop: make(chan struct{})}
	for _, r := range c.Rules {
		t.rules[r] = true
	}
	for _, k := range c.On {
		t.on[k] = true
	}
	var err error
	if c.Webhook != "" {
		t.kind, t.id = "webhook", "webhook "+c.Webhook
		t.send, err = newWebhook(c)
	} else {
		t.kind, t.id = "mail", "mail "+c.Mail
		t.send = newMailer(c)
	}
	return t, err
}

// Active reports whether any target is configured: without one, Notify
// does nothing and the engine need not build events.
func (d *Dispatcher) Active() bool { return d != nil && len(*d.targets.Load()) > 0 }

// Notify queues ev for every target it concerns, once per (target, rule,
// key, event) per the target's every. It never blocks: a full queue
// drops the alert, counted and logged now and then.
func (d *Dispatcher) Notify(ev Event) {
	if d.closed.Load() {
		return
	}
	if ev.Host == "" {
		ev.Host = d.opt.Host
	}
	if ev.Time.IsZero() {
		ev.Time = d.opt.Now()
	}
	for _, t := range *d.targets.Load() {
		if !t.on[ev.Event] || len(t.rules) > 0 && !t.rules[ev.Rule] {
			continue
		}
		if !d.first(t, &ev) {
			d.stats.add(t.kind, "deduplicated")
			continue
		}
		select {
		case t.queue <- job{t: t, ev: ev}:
		default:
			d.stats.add(t.kind, "dropped")
			d.warn.Do(func() {
				d.opt.Log.Warn("alert queue full; alert dropped (logged once in 10s)", zap.String("target", t.kind),
					zap.String("rule", ev.Rule), zap.String("key", ev.Key), zap.String("event", ev.Event))
			})
		}
	}
}

// first reports whether this host has not sent ev to t within its every,
// and remembers that it does now.
func (d *Dispatcher) first(t *target, ev *Event) bool {
	k := t.id + "\x00" + dedupKey(ev)
	d.mu.Lock()
	defer d.mu.Unlock()
	if until, ok := d.sent[k]; ok && ev.Time.Before(until) {
		return false
	}
	if len(d.sent) >= maxLocal {
		for k, until := range d.sent {
			if !ev.Time.Before(until) {
				delete(d.sent, k)
			}
		}
		if len(d.sent) >= maxLocal {
			clear(d.sent) // the store's claims still deduplicate
		}
	}
	d.sent[k] = ev.Time.Add(t.cfg.Every.D())
	return true
}

// claimKey names an alert in the store's claims: short, and free of what
// a client wrote.
func claimKey(t *target, ev *Event) string {
	return "alert:" + strconv.FormatUint(xxhash.Sum64String(t.id+"\x00"+dedupKey(ev)), 36)
}

// run sends one job once; a failure that may pass is tried again later,
// from a timer, so that a dead target holds no worker.
func (d *Dispatcher) run(j job) {
	defer guard.Recover(d.opt.Log, "alert send")
	t := j.t
	if !j.claimed && d.opt.Store != nil {
		ctx, cancel := context.WithTimeout(context.Background(), claimWait)
		ok, err := counter.Claim(ctx, d.opt.Store, claimKey(t, &j.ev), t.cfg.Every.D())
		cancel()
		switch {
		case err == nil && !ok:
			d.stats.add(t.kind, "deduplicated") // another host sent it
			return
		case err != nil && !errors.Is(err, counter.ErrUnsupported):
			// The store is down: better twice than never.
			d.opt.Log.Debug("alert claim failed; sending anyway", zap.Error(err))
		}
		j.claimed = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), t.cfg.Timeout.D())
	err := t.send(ctx, &j.ev)
	cancel()
	j.attempt++
	if err == nil {
		d.stats.add(t.kind, "sent")
		return
	}
	var perm *permanentError
	if errors.As(err, &perm) || j.attempt >= maxAttempts {
		d.stats.add(t.kind, "failed")
		d.warn.Do(func() {
			d.opt.Log.Error("alert not sent", zap.String("target", t.kind), zap.String("rule", j.ev.Rule),
				zap.String("key", j.ev.Key), zap.String("event", j.ev.Event), zap.Int("attempts", j.attempt), zap.Error(err))
		})
		return
	}
	d.stats.add(t.kind, "retried")
	wait := min(firstRetry<<(j.attempt-1), maxRetry)
	time.AfterFunc(wait, func() {
		select {
		case <-t.stop:
		case t.queue <- j:
		default:
			d.stats.add(t.kind, "dropped")
		}
	})
}

// permanentError is a failure no retry mends (a 4xx answer).
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Close stops the workers, leaving what is queued unsent, within ctx.
func (d *Dispatcher) Close(ctx context.Context) {
	d.cfgMu.Lock()
	if d.closed.Swap(true) {
		d.cfgMu.Unlock()
		return
	}
	for _, t := range *d.targets.Load() {
		close(t.stop)
	}
	d.cfgMu.Unlock()
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// stats counts alerts by target kind and result.
type stats struct {
	mu sync.Mutex
	n  map[[2]string]uint64
}

func (s *stats) add(target, result string) {
	s.mu.Lock()
	if s.n == nil {
		s.n = make(map[[2]string]uint64)
	}
	s.n[[2]string{target, result}]++
	s.mu.Unlock()
}

// Count returns how many alerts to target ended in result (sent, failed,
// retried, dropped, deduplicated).
func (d *Dispatcher) Count(target, result string) uint64 {
	d.stats.mu.Lock()
	defer d.stats.mu.Unlock()
	return d.stats.n[[2]string{target, result}]
}

var alertsDesc = prometheus.NewDesc("sluice_alerts_total",
	"Alerts by target (webhook, mail) and result: sent, failed (after retries, or refused for good), retried, dropped (queue full), deduplicated (sent within every, by this host or another).",
	[]string{"target", "result"}, nil)

// Collector exports sluice_alerts_total, read at each scrape.
func (d *Dispatcher) Collector() prometheus.Collector { return collector{d} }

type collector struct{ d *Dispatcher }

func (c collector) Describe(ch chan<- *prometheus.Desc) { ch <- alertsDesc }

func (c collector) Collect(ch chan<- prometheus.Metric) {
	c.d.stats.mu.Lock()
	defer c.d.stats.mu.Unlock()
	for _, t := range []string{"webhook", "mail"} {
		for _, r := range []string{"sent", "failed", "retried", "dropped", "deduplicated"} {
			ch <- prometheus.MustNewConstMetric(alertsDesc, prometheus.CounterValue, float64(c.d.stats.n[[2]string{t, r}]), t, r)
		}
	}
}
