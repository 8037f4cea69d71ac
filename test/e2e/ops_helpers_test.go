package e2e

// Helpers of the operations tests: metrics scraping, counting
// log lines, and a sender limit config that ignores the trusted list.

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"sluice/test/mta"
	"sluice/test/sluicetest"
)

// opsLimit is a config with one msgs-per-sender rule at rate, no trusted
// networks (Postfix talks to sluice from loopback), and extra appended.
func opsLimit(rate, extra string) string {
	return fmt.Sprintf(`trusted = []

[log]
level = "info"

[[limit]]
name = "msgs-per-sender"
count = "messages"
per = "sender"
rate = %q
action = "tempfail"
%s`, rate, extra)
}

// waitLogCount waits until sluice has logged msg n times.
func waitLogCount(t *testing.T, sl *sluicetest.Sluice, msg string, n int, timeout time.Duration) []sluicetest.LogLine {
	t.Helper()
	var got []sluicetest.LogLine
	deadline := time.Now().Add(timeout)
	for {
		got = sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == msg })
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("sluice logged %q %d times in %v, want %d", msg, len(got), timeout, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// httpGet returns the status code and body of a GET.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// metricsSnapshot is one scrape of /metrics.
type metricsSnapshot map[string]*dto.MetricFamily

func scrape(t *testing.T, addr string) metricsSnapshot {
	t.Helper()
	code, body := httpGet(t, "http://"+addr+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return fams
}

// value returns the value of the series of name whose labels include
// labels ("k=v" each); for a histogram, its sample count. It sums every
// matching series, and is 0 when none matches.
func (m metricsSnapshot) value(name string, labels ...string) float64 {
	f := m[name]
	if f == nil {
		return 0
	}
	sum := 0.0
	for _, s := range f.GetMetric() {
		if !hasLabels(s, labels) {
			continue
		}
		switch {
		case s.Counter != nil:
			sum += s.Counter.GetValue()
		case s.Gauge != nil:
			sum += s.Gauge.GetValue()
		case s.Histogram != nil:
			sum += float64(s.Histogram.GetSampleCount())
		case s.Untyped != nil:
			sum += s.Untyped.GetValue()
		}
	}
	return sum
}

// has reports whether a series of name with labels exists.
func (m metricsSnapshot) has(name string, labels ...string) bool {
	f := m[name]
	if f == nil {
		return false
	}
	for _, s := range f.GetMetric() {
		if hasLabels(s, labels) {
			return true
		}
	}
	return false
}

func hasLabels(s *dto.Metric, labels []string) bool {
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		found := false
		for _, lp := range s.GetLabel() {
			if lp.GetName() == k && lp.GetValue() == v {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// countAccepted is the number of transactions accepted with 250.
func countAccepted(trs []mta.Transaction) int {
	n := 0
	for _, tr := range trs {
		if tr.Accepted() {
			n++
		}
	}
	return n
}
