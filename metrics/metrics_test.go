package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"sluice/guard"
	"sluice/limits/counter"
	"sluice/limits/memstore"
	"sluice/limits/redisstore"
	"sluice/milter"
	"sluice/smtp"
	"sluice/test/keepalive"
)

func TestStageAndDecisions(t *testing.T) {
	m := New("test")
	m.SessionOpened()
	m.SessionOpened()
	m.SessionClosed()
	d := smtp.Decision{Kind: smtp.Reply, Action: smtp.ActionTempfail, Outcomes: []smtp.Outcome{
		{Source: "a", Asked: smtp.ActionTempfail, Mode: smtp.ModeEnforce, Action: smtp.ActionTempfail},
		{Source: "b", Asked: smtp.ActionReject, Mode: smtp.ModeDryRun, Action: smtp.ActionNone},
	}}
	m.Stage(smtp.Mail, time.Millisecond, &d)
	m.Stage(smtp.Rcpt, time.Millisecond, &smtp.Decision{})
	m.Check("spf", "fail", 3*time.Millisecond)

	for _, c := range []struct {
		got  float64
		want float64
		what string
	}{
		{testutil.ToFloat64(m.sessionsOpen), 1, "sessions open"},
		{testutil.ToFloat64(m.sessionsTotal), 2, "sessions total"},
		{testutil.ToFloat64(m.decisions.WithLabelValues("a", "tempfail", "enforce")), 1, "decision a"},
		{testutil.ToFloat64(m.decisions.WithLabelValues("b", "reject", "dry-run")), 1, "would-have-refused b"},
		{testutil.ToFloat64(m.replies[smtp.Mail][smtp.ActionTempfail]), 1, "mail tempfail reply"},
		{testutil.ToFloat64(m.replies[smtp.Rcpt][smtp.ActionNone]), 1, "rcpt continue"},
		{testutil.ToFloat64(m.checks.WithLabelValues("spf", "fail")), 1, "spf fail"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	if n := testutil.CollectAndCount(m.reg, "sluice_stage_duration_seconds"); n != 5 {
		t.Errorf("%d stage histograms, want one per stage (5)", n)
	}
}

// TestStageBucketsTellCPUWaitFromWork proves the stage histogram keeps
// apart a stage that did its work (tens of microseconds on the memory
// store) from one that also waited for a CPU: 20 µs, 40 µs and 150 µs fall
// in three different buckets, and the last bucket reaches the stage
// timeout so a hanging backend is not lumped into +Inf.
func TestStageBucketsTellCPUWaitFromWork(t *testing.T) {
	m := New("test")
	for _, d := range []time.Duration{20 * time.Microsecond, 40 * time.Microsecond, 150 * time.Microsecond} {
		m.Stage(smtp.Mail, d, &smtp.Decision{})
	}
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var cumulative []uint64
	var bounds []float64
	for _, f := range fams {
		if f.GetName() != "sluice_stage_duration_seconds" {
			continue
		}
		for _, s := range f.GetMetric() {
			if s.GetLabel()[0].GetValue() != "mail" {
				continue
			}
			for _, b := range s.GetHistogram().GetBucket() {
				cumulative = append(cumulative, b.GetCumulativeCount())
				bounds = append(bounds, b.GetUpperBound())
			}
		}
	}
	if len(cumulative) == 0 {
		t.Fatal("no mail stage histogram")
	}
	steps := map[uint64]bool{}
	for _, c := range cumulative {
		steps[c] = true
	}
	// Three observations in three buckets: the cumulative counts pass
	// through 1, 2 and 3 (and 0 below the first).
	for _, want := range []uint64{1, 2, 3} {
		if !steps[want] {
			t.Errorf("no bucket holds exactly %d of the 20/40/150 µs stages: cumulative counts %v", want, cumulative)
		}
	}
	if !slices.Contains(bounds, 20) {
		t.Errorf("bucket bounds %v; want one at the 20 s stage timeout", bounds)
	}
}

// failing is a store that can only count, and whose every count fails.
type failing struct{}

var errDown = errors.New("down")

func (failing) Do(context.Context, []counter.Request) error { return errDown }
func (failing) Close() error                                { return nil }

// newMemstore opens a memory store that is closed when the test ends.
func newMemstore(t *testing.T, c memstore.Config) *memstore.Store {
	t.Helper()
	st, err := memstore.New(c, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestStoreWrapper(t *testing.T) {
	m := New("test")
	st := newMemstore(t, memstore.Config{})
	w := m.Store("memory", st)
	m.WatchStore(st)
	ctx := context.Background()
	reqs := []counter.Request{{Key: []byte("r:0:sender:a"), Kind: counter.KindRate, Interval: int64(time.Second), Burst: 1, Cost: 1}}
	for range 3 {
		if err := w.Do(ctx, reqs); err != nil {
			t.Fatal(err)
		}
	}
	counter.Reset(ctx, w, [][]byte{[]byte("x")})
	f := m.Store("redis", failing{})
	if err := f.Do(ctx, reqs); !errors.Is(err, errDown) {
		t.Fatalf("the wrapper changed the error: %v", err)
	}
	for _, c := range []struct {
		got, want float64
		what      string
	}{
		{testutil.ToFloat64(m.storeOps.WithLabelValues("memory", "do")), 3, "memory do"},
		{testutil.ToFloat64(m.storeOps.WithLabelValues("memory", "reset")), 1, "memory reset"},
		{testutil.ToFloat64(m.storeErrors.WithLabelValues("memory", "do")), 0, "memory errors"},
		{testutil.ToFloat64(m.storeErrors.WithLabelValues("redis", "do")), 1, "redis errors"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(`
# HELP sluice_store_keys Keys the counter store tracks now (idle ones not yet reclaimed included).
# TYPE sluice_store_keys gauge
sluice_store_keys 1
# HELP sluice_snapshot_write_failing 1 when the last snapshot write failed (full or read-only disk): counters are kept in memory and the write is retried.
# TYPE sluice_snapshot_write_failing gauge
sluice_snapshot_write_failing 0
`), "sluice_store_keys", "sluice_snapshot_write_failing"); err != nil {
		t.Error(err)
	}
}

func TestServer(t *testing.T) {
	m := New("test")
	var ready error = NotReady("starting")
	s, err := m.Listen("127.0.0.1:0", func(context.Context) error { return ready }, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + s.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "starting") {
		t.Errorf("/readyz while starting: %d %q", code, body)
	}
	ready = nil
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz when ready: %d", code)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "sluice_build_info") {
		t.Errorf("/metrics: %d", code)
	}
	if _, err := m.Listen(s.Addr().String(), nil, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "metrics: listen on") {
		t.Errorf("a port in use: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for listen, ok := range map[string]bool{
		"": true, "127.0.0.1:9465": true, "[::1]:9465": true, "localhost:9465": true, ":9465": true,
		"9465": false, "127.0.0.1:http": false, "127.0.0.1:70000": false, "example.org:9465": false,
	} {
		c := Config{Listen: listen}
		if err := c.Validate(); (err == nil) != ok {
			t.Errorf("listen %q: %v", listen, err)
		}
	}
}

// TestDashboardNames checks that the Grafana dashboard in docs/ uses only
// metrics that exist.
func TestDashboardNames(t *testing.T) {
	data, err := os.ReadFile("../docs/grafana-sluice.json")
	if err != nil {
		t.Fatal(err)
	}
	m := New("test")
	st := newMemstore(t, memstore.Config{Snapshot: filepath.Join(t.TempDir(), "snap")})
	m.WatchStore(st)
	// The dashboard shows the Redis store's statistics too.
	m.reg.MustRegister(redisstore.NewCollector(func() redisstore.Stats { return redisstore.Stats{} }))
	m.Store("memory", st).Do(context.Background(), nil)
	m.Stage(smtp.Mail, time.Millisecond, &smtp.Decision{Outcomes: []smtp.Outcome{{Source: "r", Asked: smtp.ActionTag}}})
	m.Check("spf", "pass", time.Millisecond)
	st.Close() // writes the snapshot: its age is known from now on
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range fams {
		have[f.GetName()] = true
	}
	used := regexp.MustCompile(`sluice_[a-z_]+`).FindAllString(string(data), -1)
	if len(used) < 10 {
		t.Fatalf("the dashboard uses only %d sluice metrics", len(used))
	}
	for _, name := range used {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
		if !have[base] {
			t.Errorf("the dashboard uses %s, which sluice does not export", name)
		}
	}
}

// TestServerCapsAndClosesKeepAlives: keep-alive connections to the metrics
// listener are capped at MaxConnections and closed when idle, so that
// scrapers (or anyone) holding them cannot take sluice's descriptors.
func TestServerCapsAndClosesKeepAlives(t *testing.T) {
	keepalive.CheckCapAndIdle(t, func(t testing.TB, idle time.Duration) keepalive.Dial {
		prev := idleTimeout
		idleTimeout = idle
		defer func() { idleTimeout = prev }()
		srv, err := New("test").Listen("127.0.0.1:0", func(context.Context) error { return nil }, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close(context.Background()) })
		return func() (net.Conn, error) { return net.Dial("tcp", srv.Addr().String()) }
	}, MaxConnections, "/healthz")
}

// TestConnMetrics: connections refused and closed by the milter server's
// bounds are counted by reason, and every reason is exported from the start.
func TestConnMetrics(t *testing.T) {
	var _ milter.ConnObserver = (*Metrics)(nil)
	m := New("test")
	if n := testutil.CollectAndCount(m.reg, "sluice_connections_closed_total"); n != len(connCloseReasons) {
		t.Errorf("%d reasons exported before any close, want %d", n, len(connCloseReasons))
	}
	m.SetMaxConnections(5000)
	m.ConnRefused()
	m.ConnRefused()
	m.ConnCut("header_bytes")
	for _, c := range []struct {
		got, want float64
		what      string
	}{
		{testutil.ToFloat64(m.connMetrics.max), 5000, "max connections"},
		{testutil.ToFloat64(m.connMetrics.refused), 2, "refused"},
		{testutil.ToFloat64(m.connMetrics.closed.WithLabelValues("header_bytes")), 1, "closed for header_bytes"},
		{testutil.ToFloat64(m.connMetrics.closed.WithLabelValues("silent")), 0, "closed silent"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
}

// A store seen through the metrics wrapper keeps what it can do beyond
// counting: its exemptions, hot keys, resets, key count and own metrics
// are reached through the wrapper and counted there; a store that can
// only count says so (ErrUnsupported) instead of seeming to succeed.
func TestWrapperPassesCapabilitiesThrough(t *testing.T) {
	m := New("test")
	st := newMemstore(t, memstore.Config{})
	w := m.Store("memory", st)
	ctx := context.Background()
	until := time.Now().Add(time.Hour)
	if err := counter.SetAllow(ctx, w, "sender:a@example.org", until); err != nil {
		t.Fatalf("SetAllow through the wrapper: %v", err)
	}
	if got, err := counter.Allows(ctx, w); err != nil || len(got) != 1 {
		t.Errorf("Allows through the wrapper: %v %v", got, err)
	}
	if got, err := counter.Allows(ctx, st); err != nil || len(got) != 1 {
		t.Errorf("the exemption did not reach the store: %v %v", got, err)
	}
	if _, err := counter.Hot(ctx, w, 10); err != nil {
		t.Errorf("Hot through the wrapper: %v", err)
	}
	if n := counter.Len(w); n != 0 {
		t.Errorf("Len through the wrapper = %d, want 0", n)
	}
	if _, ok := counter.As[interface{ SnapshotStatus() (time.Time, error) }](w); !ok {
		t.Error("the memory store's snapshot status is hidden by the wrapper")
	}
	if got := testutil.ToFloat64(m.storeOps.WithLabelValues("memory", "set_allow")); got != 1 {
		t.Errorf("set_allow counted %v times, want 1", got)
	}

	only := m.Store("redis", failing{})
	if _, err := counter.Allows(ctx, only); !errors.Is(err, counter.ErrUnsupported) {
		t.Errorf("Allows on a store that cannot: %v, want ErrUnsupported", err)
	}
	if err := counter.Reset(ctx, only, nil); !errors.Is(err, counter.ErrUnsupported) {
		t.Errorf("Reset on a store that cannot: %v, want ErrUnsupported", err)
	}
	if n := counter.Len(only); n != -1 {
		t.Errorf("Len on a store that cannot say: %d, want -1", n)
	}
	if got := testutil.ToFloat64(m.storeOps.WithLabelValues("redis", "allows")); got != 0 {
		t.Errorf("an unsupported call was counted %v times as a store call", got)
	}
}

// The panics guard recovered are exported by place, read at each scrape.
func TestPanicsExported(t *testing.T) {
	m := New("test")
	func() {
		defer guard.Recover(nil, "metrics test")
		panic("boom")
	}()
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "sluice_panics_total" {
			continue
		}
		for _, mt := range f.GetMetric() {
			if l := mt.GetLabel(); len(l) == 1 && l[0].GetValue() == "metrics test" && mt.GetCounter().GetValue() >= 1 {
				return
			}
		}
	}
	t.Error(`no sluice_panics_total{where="metrics test"} of at least 1`)
}
