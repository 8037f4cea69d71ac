package e2e

// /metrics, scraped after sending known traffic through real
// Postfix, counts exactly the decisions sluice took — refusals in enforce
// mode and the refusals that would have happened in tag and dry-run mode.

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

func TestOpsMetrics(t *testing.T) {
	testenv.Require(t)
	maddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	// Three rules, each for its own senders, each crossed twice.
	sl := sluicetest.StartSluice(t, fmt.Sprintf(`trusted = []

[metrics]
listen = %q

[[limit]]
name = "enforced"
count = "messages"
per = "sender"
rate = "2/1h"
action = "tempfail"
match.sender = "^e@"

[[limit]]
name = "tagged"
count = "messages"
per = "sender"
rate = "1/1h"
action = "reject"
mode = "tag"
match.sender = "^t@"

[[limit]]
name = "dry"
count = "messages"
per = "sender"
rate = "1/1h"
action = "tempfail"
mode = "dry-run"
match.sender = "^d@"
`, maddr))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})

	base := scrape(t, maddr)
	if got := base.value("sluice_decisions_total"); got != 0 {
		t.Errorf("decisions before any mail: %v", got)
	}
	code, body := httpGet(t, "http://"+maddr+"/healthz")
	if code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	code, body = httpGet(t, "http://"+maddr+"/readyz")
	if code != http.StatusOK || strings.TrimSpace(body) != "ready" {
		t.Errorf("/readyz: %d %q", code, body)
	}

	sessions := 0
	sent := map[string]int{"e@example.test": 4, "t@example.test": 3, "d@example.test": 3}
	accepted := 0
	for _, from := range []string{"e@example.test", "t@example.test", "d@example.test"} {
		c := session(t, pf.Addr, "192.0.2.1")
		sessions++
		trs := sendN(t, c, from, sent[from])
		if from == "e@example.test" {
			wantTempfailAtMail(t, trs, 3, 4)
		} else {
			wantTempfailAtMail(t, trs, 0, 0)
		}
		accepted += countAccepted(trs)
		c.Quit()
	}
	msgs := pf.WaitDelivered(accepted, time.Minute)
	if n := len(mta.WithHeader(msgs, "X-Sluice-Limit")); n != 2 {
		t.Errorf("%d messages tagged, want 2 (tagged's messages 2 and 3)", n)
	}

	// Postfix closes its milter connections when the SMTP sessions end;
	// wait until sluice has seen them go.
	var m metricsSnapshot
	if err := pollFor(10*time.Second, func() bool {
		m = scrape(t, maddr)
		return m.value("sluice_sessions_open") == 0
	}); err != nil {
		t.Errorf("sluice_sessions_open = %v, want 0 once every session ended", m.value("sluice_sessions_open"))
	}
	want := []struct {
		name   string
		labels []string
		value  float64
	}{
		{"sluice_decisions_total", []string{"rule=enforced", "action=tempfail", "mode=enforce"}, 2},
		{"sluice_decisions_total", []string{"rule=tagged", "action=reject", "mode=tag"}, 2},
		{"sluice_decisions_total", []string{"rule=dry", "action=tempfail", "mode=dry-run"}, 2},
		{"sluice_decisions_total", nil, 6},
		{"sluice_replies_total", []string{"stage=mail", "action=tempfail"}, 2},
		{"sluice_replies_total", []string{"stage=mail", "action=none"}, 8},
		{"sluice_replies_total", []string{"stage=mail"}, 10},
		// XCLIENT makes Postfix start over with a new milter connection:
		// two milter sessions per SMTP session.
		{"sluice_sessions_total", nil, float64(2 * sessions)},
		{"sluice_stage_duration_seconds", []string{"stage=mail"}, 10},
		{"sluice_store_errors_total", nil, 0},
		{"sluice_store_keys", nil, 3},
		{"sluice_config_rules", nil, 3},
		{"sluice_config_last_reload_successful", nil, 1},
	}
	for _, w := range want {
		if got := m.value(w.name, w.labels...); got != w.value {
			t.Errorf("%s{%s} = %v, want %v", w.name, strings.Join(w.labels, ","), got, w.value)
		} else {
			t.Logf("%s{%s} = %v", w.name, strings.Join(w.labels, ","), got)
		}
	}
	// At least one store round trip per MAIL FROM.
	if got := m.value("sluice_store_operations_total", "store=memory", "op=do"); got < 10 {
		t.Errorf("sluice_store_operations_total{store=memory,op=do} = %v, want at least 10", got)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes",
		"sluice_store_duration_seconds", "sluice_snapshot_write_failing"} {
		if _, ok := m[name]; !ok {
			t.Errorf("/metrics has no %s", name)
		}
	}
	if b := m["sluice_build_info"]; b == nil || len(b.GetMetric()) != 1 || b.GetMetric()[0].GetGauge().GetValue() != 1 {
		t.Errorf("sluice_build_info: %v", b)
	}
}
