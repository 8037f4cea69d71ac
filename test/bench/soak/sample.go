package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// sample is the daemon at the end of one of the load generator's
// intervals.
type sample struct {
	at          time.Duration // since the load started
	length      time.Duration // of the load generator's interval
	msgsPerSec  float64
	refused     int
	errors      int
	rssMB       float64 // /proc/PID/status VmRSS
	heapMB      float64 // go_memstats_heap_inuse_bytes, the mean of a scrape a second
	heapGoalMB  float64 // go_memstats_next_gc_bytes (what the GC lets the heap grow to), the same
	goroutines  int     // go_goroutines
	fds         int     // entries of /proc/PID/fd
	keys        float64 // sluice_store_keys
	sessions    float64 // sluice_sessions_open
	snapAge     float64 // sluice_snapshot_age_seconds
	snapFailing float64 // sluice_snapshot_write_failing
	cpuPerMsg   float64 // ms of sluice's CPU per message, from /proc stat deltas
	loadCPU     float64 // ms of the load generator's own CPU per message
	p99         map[string]float64
	// winP99 is set on the sample that closes a judged window: each
	// stage's p99 over every command of the window.
	winP99 map[string]float64
	// ownP99 is sluice's own time per stage (its stage histogram) over
	// the interval, p99 in ms; ownWinP99 the same over the window that
	// closes with this sample.
	ownP99, ownWinP99 map[string]float64
	// ctl is the do-nothing milter driven beside sluice with the same
	// load over the same interval; nil when the soak ran without one.
	ctl *controlSample
}

// controlSample is what the load generator beside sluice's measured of
// the do-nothing milter: the machine's own latency and CPU at that moment,
// with no daemon work in them.
type controlSample struct {
	msgsPerSec float64
	cpuPerMsg  float64 // ms of the do-nothing milter's CPU per message
	p99        map[string]float64
	winP99     map[string]float64
}

func controlOf(rec loadRecord) *controlSample {
	c := &controlSample{cpuPerMsg: rec.CPUPerMsg, p99: rec.P99, winP99: rec.WindowP99}
	if rec.Length > 0 {
		c.msgsPerSec = float64(rec.Messages) / rec.Length.Seconds()
	}
	return c
}

func heapOf(m metricFamilies) (inUse, goal float64) {
	return m.value("go_memstats_heap_inuse_bytes") / (1 << 20), m.value("go_memstats_next_gc_bytes") / (1 << 20)
}

// heapMeter scrapes the heap once a second between samples. Heap in use
// climbs from the live heap to the goal and drops at each collection,
// several times a second at the soak's rates; one reading every 10 s
// lands anywhere on that saw, so a sample's spread would be the saw's,
// not the daemon's. The mean of ten readings is the level a leak would
// move.
type heapMeter struct {
	mu          sync.Mutex
	inUse, goal float64
	n           int
	quit        chan struct{}
	done        sync.WaitGroup
}

func startHeapMeter(addr string, every time.Duration) *heapMeter {
	h := &heapMeter{quit: make(chan struct{})}
	h.done.Add(1)
	go func() {
		defer h.done.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
			case <-h.quit:
				return
			}
			m, err := scrape(addr)
			if err != nil {
				continue // the sample's own scrape reports a daemon that does not answer
			}
			inUse, goal := heapOf(m)
			h.mu.Lock()
			h.inUse += inUse
			h.goal += goal
			h.n++
			h.mu.Unlock()
		}
	}()
	return h
}

// take returns the means since the last take, 0 when there was no reading.
func (h *heapMeter) take() (inUse, goal float64) {
	if h == nil {
		return 0, 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n > 0 {
		inUse, goal = h.inUse/float64(h.n), h.goal/float64(h.n)
	}
	h.inUse, h.goal, h.n = 0, 0, 0
	return inUse, goal
}

func (h *heapMeter) stop() {
	if h != nil {
		close(h.quit)
		h.done.Wait()
	}
}

// idle is what the daemon holds with no session open.
type idle struct {
	fds, goroutines int
}

func (d *daemon) sample(rec loadRecord) (sample, error) {
	pid := d.cmd.Process.Pid
	// /proc first: the scrape's own connection is an fd while it lasts.
	fds, err := countFDs(pid)
	if err != nil {
		return sample{}, err
	}
	rss, err := rssMB(pid)
	if err != nil {
		return sample{}, err
	}
	m, err := scrape(d.metrics)
	if err != nil {
		return sample{}, err
	}
	heap, goal := d.heap.take()
	if heap == 0 {
		heap, goal = heapOf(m)
	}
	s := sample{
		at:          rec.At,
		length:      rec.Length,
		refused:     rec.Refused,
		errors:      rec.Errors,
		rssMB:       rss,
		heapMB:      heap,
		heapGoalMB:  goal,
		goroutines:  int(m.value("go_goroutines")),
		fds:         fds,
		keys:        m.value("sluice_store_keys"),
		sessions:    m.value("sluice_sessions_open"),
		snapAge:     m.value("sluice_snapshot_age_seconds"),
		snapFailing: m.value("sluice_snapshot_write_failing"),
		cpuPerMsg:   rec.CPUPerMsg,
		loadCPU:     rec.LoadCPUPerMsg,
		p99:         rec.P99,
		winP99:      rec.WindowP99,
	}
	if rec.Length > 0 {
		s.msgsPerSec = float64(rec.Messages) / rec.Length.Seconds()
	}
	hists := stageHists(m)
	s.ownP99 = ownP99s(hists, d.lastHists)
	d.lastHists = hists
	if rec.WindowP99 != nil {
		s.ownWinP99 = ownP99s(hists, d.windowHists)
		d.windowHists = hists
	}
	return s, nil
}

func (d *daemon) idle() (idle, error) {
	fds, err := countFDs(d.cmd.Process.Pid)
	if err != nil {
		return idle{}, err
	}
	m, err := scrape(d.metrics)
	if err != nil {
		return idle{}, err
	}
	if open := m.value("sluice_sessions_open"); open != 0 {
		return idle{}, fmt.Errorf("%v sessions still open", open)
	}
	return idle{fds: fds, goroutines: int(m.value("go_goroutines"))}, nil
}

// steady returns what the idle daemon holds once n readings in a row,
// every interval, agree; after timeout, the last reading.
func (d *daemon) steady(n int, every, timeout time.Duration) (idle, error) {
	deadline := time.Now().Add(timeout)
	var last idle
	same := 0
	for {
		now, err := d.idle()
		if err != nil {
			return now, err
		}
		if now == last {
			same++
		} else {
			last, same = now, 1
		}
		if same >= n || time.Now().After(deadline) {
			return last, nil
		}
		time.Sleep(every)
	}
}

// settle waits, up to timeout, for the daemon to be idle with what it held
// before; it returns what it holds at the end either way.
func (d *daemon) settle(before idle, timeout time.Duration) (idle, error) {
	deadline := time.Now().Add(timeout)
	for {
		now, err := d.idle()
		if err == nil && now == before {
			return now, nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return now, err
			}
			return now, nil
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func countFDs(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, fmt.Errorf("open fds: %w", err)
	}
	return len(ents), nil
}

func rssMB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("RSS: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest) // "123456 kB"
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseFloat(f[0], 64)
				if err == nil {
					return kb / 1024, nil
				}
			}
			return 0, fmt.Errorf("RSS: cannot read %q", strings.TrimSpace(line))
		}
	}
	return 0, fmt.Errorf("RSS: no VmRSS line in /proc/%d/status", pid)
}

// metricFamilies is one scrape of /metrics.
type metricFamilies map[string]*dto.MetricFamily

// One connection per scrape: an idle keep-alive connection would be one
// more fd in the daemon between samples.
var httpClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func scrape(addr string) (metricFamilies, error) {
	resp, err := httpClient.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read /metrics: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("parse /metrics: %w", err)
	}
	return fams, nil
}

// value sums the counters and gauges of name whose labels include the
// given name, value pairs; 0 when there is none.
func (m metricFamilies) value(name string, labels ...string) float64 {
	f := m[name]
	if f == nil {
		return 0
	}
	sum := 0.0
next:
	for _, s := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range s.GetLabel() {
				found = found || lp.GetName() == labels[i] && lp.GetValue() == labels[i+1]
			}
			if !found {
				continue next
			}
		}
		switch {
		case s.Counter != nil:
			sum += s.Counter.GetValue()
		case s.Gauge != nil:
			sum += s.Gauge.GetValue()
		case s.Untyped != nil:
			sum += s.Untyped.GetValue()
		}
	}
	return sum
}
