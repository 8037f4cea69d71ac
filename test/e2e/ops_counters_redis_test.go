package e2e

// `sluice counters` on the Redis store: two sluice
// daemons, each behind its own Postfix and with its own admin socket,
// share one real redis-server. What one host counts, the other shows;
// an exemption set on one host lets mail through on the other; a reset
// on one resets for both. And the Redis store's own statistics on
// /metrics: round trips grow with mail, "down" follows redis-server.

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"sluice/admin"
	"sluice/limits/redisstore/redistest"
	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// fleetHost is one MX host of the fleet: Postfix, its sluice, and
// sluice's admin socket and metrics address.
type fleetHost struct {
	redisHost
	name    string
	sock    string
	metrics string
}

// startFleetHost starts a sluice on the Redis at addr with msgs-per-sender
// at 3/1h, a concurrency rule (so that the host holds leases), an admin
// socket and metrics, and a Postfix in front of it.
func startFleetHost(t *testing.T, name, addr string) *fleetHost {
	t.Helper()
	sl := sluicetest.NewSluice(t)
	h := &fleetHost{name: name, sock: filepath.Join(sl.Dir, "admin.sock"),
		metrics: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}
	// lease_time 3s: leases are refreshed every second.
	sl.Start(opsLimit("3/1h", fmt.Sprintf(`
[[limit]]
name = "conns-per-ip"
count = "concurrent"
per = "client_ip"
max = 50

[admin]
socket = %q

[metrics]
listen = %q
%s`, h.sock, h.metrics, redisStore([]string{addr}, false, `lease_time = "3s"`))))
	h.redisHost = redisHost{sl: sl, pf: mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})}
	return h
}

// cli runs `sluice counters ARGS -socket SOCK` and checks its exit code.
func (h *fleetHost) cli(t *testing.T, want int, args ...string) string {
	t.Helper()
	r := sluicetest.RunSluice(t, append(append([]string{"counters"}, args...), "-socket", h.sock)...)
	t.Logf("%s$ sluice counters %s  (exit %d)\n%s%s", h.name, strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	if r.Code != want {
		t.Fatalf("%s: sluice counters %s: exit %d, want %d\n%s%s", h.name, strings.Join(args, " "), r.Code, want, r.Stdout, r.Stderr)
	}
	return r.Stdout + r.Stderr
}

// counters runs a counters command with -json and decodes its answer.
func (h *fleetHost) counters(t *testing.T, args ...string) []admin.Counter {
	t.Helper()
	var cs []admin.Counter
	out := h.cli(t, 0, append(args, "-json")...)
	if err := json.Unmarshal([]byte(out), &cs); err != nil {
		t.Fatalf("%s: counters %s -json: %v\n%s", h.name, strings.Join(args, " "), err, out)
	}
	return cs
}

// waitMetrics scrapes the host's /metrics until cond holds, for at most
// 15s, and returns that scrape; it fails t with the last values of the
// sluice_redis_* series when cond never holds.
func (h *fleetHost) waitMetrics(t *testing.T, what string, cond func(metricsSnapshot) bool) metricsSnapshot {
	t.Helper()
	var m metricsSnapshot
	if err := pollFor(15*time.Second, func() bool {
		m = scrape(t, h.metrics)
		return cond(m)
	}); err != nil {
		var last []string
		for name, f := range m {
			if strings.HasPrefix(name, "sluice_redis_") {
				last = append(last, fmt.Sprintf("%s %v", name, m.value(f.GetName())))
			}
		}
		slices.Sort(last)
		t.Fatalf("%s: waiting for %s: %v; last scrape:\n%s", h.name, what, err, strings.Join(last, "\n"))
	}
	return m
}

// atLimit checks that cs is alice's one msgs-per-sender counter, full (3
// of 3) with a retry-after of at most one emission interval (20m).
func atLimit(t *testing.T, what string, cs []admin.Counter, key string) {
	t.Helper()
	if len(cs) != 1 || cs[0].Rule != "msgs-per-sender" || cs[0].Key != key || cs[0].Limit != "3/1h" ||
		cs[0].Count != 3 || cs[0].Max != 3 || cs[0].Retry() <= 0 || cs[0].Retry() > 20*time.Minute {
		t.Errorf("%s: %+v; want %s of msgs-per-sender at 3/3 with a retry-after within 20m", what, cs, key)
	}
}

// wantTextRow checks the table the CLI prints: a row for key's
// msgs-per-sender counter at 3/3 with a retry-after.
func wantTextRow(t *testing.T, what, out, key string) {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 5 && f[0] == "msgs-per-sender" && f[1] == "3/1h" && f[2] == key && f[3] == "3/3" && f[4] != "-" {
			return
		}
	}
	t.Errorf("%s: no row for %s at 3/3 with a retry-after:\n%s", what, key, out)
}

// sendOne sends one message from sender on c and returns whether it was
// accepted; a refusal must be the limit's 451 4.7.1 at MAIL FROM.
func sendOne(t *testing.T, c *mta.Client, sender, subject string) bool {
	t.Helper()
	tr := redisSend(t, c, sender, subject)
	t.Logf("%-28s %v", subject+":", tr)
	if tr.Accepted() {
		return true
	}
	if stage, r := tr.Refused(); stage != "MAIL" || r.Code != 451 || !strings.HasPrefix(r.Text, "4.7.1") {
		t.Fatalf("%s: %v; want accepted or 451 4.7.1 at MAIL FROM", subject, tr)
	}
	return false
}

// sendUntil sends from sender on c, one message every 200ms, until one is
// accepted (want true) or refused (want false), for at most 15s: the
// engines read exemptions from the store every 2 seconds. It returns how
// many messages it sent and how many of them were accepted.
func sendUntil(t *testing.T, c *mta.Client, sender, what string, want bool) (sent, accepted int) {
	t.Helper()
	start := time.Now()
	for {
		sent++
		ok := sendOne(t, c, sender, fmt.Sprintf("%s %d", what, sent))
		if ok {
			accepted++
		}
		if ok == want {
			t.Logf("%s: after %v and %d messages", what, time.Since(start).Round(time.Millisecond), sent)
			return sent, accepted
		}
		if time.Since(start) > 15*time.Second {
			t.Fatalf("%s: not after %d messages in %v", what, sent, time.Since(start))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestOpsCountersRedis(t *testing.T) {
	testenv.Require(t)
	rd := redistest.Start(t)
	h1, h2 := startFleetHost(t, "host1", rd.Addr), startFleetHost(t, "host2", rd.Addr)
	const alice, key = "alice@example.test", "sender:alice@example.test"

	m0 := scrape(t, h1.metrics)
	for _, name := range []string{"sluice_redis_round_trips_total", "sluice_redis_down", "sluice_redis_breaker_opens_total",
		"sluice_redis_fast_failures_total", "sluice_redis_script_reloads_total", "sluice_redis_cross_slot_undos_total",
		"sluice_redis_lease_refresh_errors_total", "sluice_redis_leases_lost_total", "sluice_redis_leases"} {
		if !m0.has(name) {
			t.Errorf("/metrics of a Redis-backed sluice has no %s", name)
		}
	}
	if v := m0.value("sluice_redis_down"); v != 0 {
		t.Errorf("sluice_redis_down = %v with redis-server up", v)
	}

	// Host 1 counts alice to her limit.
	c1 := session(t, h1.pf.Addr, "192.0.2.7")
	wantTempfailAtMail(t, sendN(t, c1, alice, 4), 4, 4)
	m1 := scrape(t, h1.metrics)
	if d := m1.value("sluice_redis_round_trips_total") - m0.value("sluice_redis_round_trips_total"); d < 4 {
		t.Errorf("sluice_redis_round_trips_total grew by %v over 4 MAIL FROMs, want at least 4", d)
	}
	// One SMTP session open on host 1: one lease (Postfix's first milter
	// connection, before XCLIENT, has gone by now or soon).
	h1.waitMetrics(t, "one lease held with one session open", func(m metricsSnapshot) bool { return m.value("sluice_redis_leases") == 1 })

	// Host 2 shows it. Hosts write the keys they saw refused to Redis every
	// second, so top may need a moment.
	var top []admin.Counter
	if err := pollFor(10*time.Second, func() bool {
		top = h2.counters(t, "top")
		return len(top) > 0
	}); err != nil {
		t.Fatalf("host 2's top lists nothing after host 1 refused alice: %v", err)
	}
	atLimit(t, "host 2's top", top, key)
	wantTextRow(t, "host 2's top", h2.cli(t, 0, "top"), key)
	atLimit(t, "host 2's show", h2.counters(t, "show", "sender:Alice@Example.TEST"), key)
	wantTextRow(t, "host 2's show", h2.cli(t, 0, "show", key), key)
	// And enforces it.
	c2 := session(t, h2.pf.Addr, "192.0.2.8")
	wantTempfailAtMail(t, sendN(t, c2, alice, 1), 1, 1)

	// An exemption set on host 2 lets alice through on host 1 once host 1
	// has read the store's exemptions again.
	if out := h2.cli(t, 0, "allow", key, "-for", "1h"); !strings.Contains(out, key+" is exempt from every rule until") {
		t.Errorf("allow on host 2: %s", out)
	}
	for _, h := range []*fleetHost{h1, h2} {
		if out := h.cli(t, 0, "allows"); !strings.Contains(out, key) || !strings.Contains(out, "59m") && !strings.Contains(out, "1h0m0s") {
			t.Errorf("%s's allows: want %s for about 1h:\n%s", h.name, key, out)
		}
	}
	sendUntil(t, c1, alice, "exempt via host 1", true)
	if !sendOne(t, c1, alice, "exempt via host 1, again") {
		t.Error("host 1 refused an exempt sender")
	}
	// Exempt mail is not counted.
	atLimit(t, "host 2's show while exempt", h2.counters(t, "show", key), key)

	// A reset on host 1 resets for host 2.
	if out := h1.cli(t, 0, "reset", key); !strings.Contains(out, "reset 1 counters") || !strings.Contains(out, "3/3") {
		t.Errorf("reset on host 1: %s", out)
	}
	if cs := h2.counters(t, "show", key); len(cs) != 1 || cs[0].Count != 0 || cs[0].RetryAfter != 0 {
		t.Errorf("host 2's show after the reset on host 1: %+v, want 0/3", cs)
	}
	for _, c := range h2.counters(t, "top") {
		if c.Key == key {
			t.Errorf("host 2's top still lists %s after the reset: %+v", key, c)
		}
	}

	// Lifting the exemption on host 1 reaches host 2: once host 2 has read
	// it, alice counts from zero there and the 4th message after the lift
	// is refused.
	if out := h1.cli(t, 0, "allow", key, "-for", "0"); !strings.Contains(out, "exemption lifted") {
		t.Errorf("allow -for 0 on host 1: %s", out)
	}
	for _, h := range []*fleetHost{h1, h2} {
		if out := h.cli(t, 0, "allows"); !strings.Contains(out, "no exemptions in force") {
			t.Errorf("%s's allows after the lift: %s", h.name, out)
		}
	}
	sendUntil(t, c2, alice, "lifted via host 2", false)
	atLimit(t, "host 1's show after host 2 counted alice again", h1.counters(t, "show", key), key)
	if n := len(h1.sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "counters reset by admin" })); n != 1 {
		t.Errorf("host 1 logged %d resets, want 1", n)
	}
	if n := len(h2.sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "exemption set by admin" })); n != 1 {
		t.Errorf("host 2 logged %d exemptions, want 1", n)
	}
	if n := len(h1.sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "exemption lifted by admin" })); n != 1 {
		t.Errorf("host 1 logged %d lifted exemptions, want 1", n)
	}

	// redis-server stops: the next event fails, and "down" says so.
	rd.Stop()
	if !sendOne(t, c1, "bob@example.test", "redis stopped") {
		t.Error("a message was refused while Redis was down (on_store_error is allow)")
	}
	m2 := h1.waitMetrics(t, "sluice_redis_down 1 after redis-server stopped and a message went through",
		func(m metricsSnapshot) bool { return m.value("sluice_redis_down") == 1 })
	for _, name := range []string{"sluice_redis_breaker_opens_total", "sluice_redis_errors_total"} {
		if d := m2.value(name) - m1.value(name); d < 1 {
			t.Errorf("%s grew by %v over the outage, want at least 1", name, d)
		}
	}
	sendOne(t, c1, "bob@example.test", "redis still stopped")
	// The CLI says why it cannot answer.
	if out := h2.cli(t, 1, "show", key); !strings.Contains(out, "read counters of "+key) || !strings.Contains(out, "redis store") {
		t.Errorf("show on host 2 with Redis stopped: want the reason, naming the Redis store:\n%s", out)
	}
	// While the breaker waits before its next try, calls (this message,
	// lease refreshes) fail at once.
	h1.waitMetrics(t, "calls failing at once while Redis is down", func(m metricsSnapshot) bool {
		return m.value("sluice_redis_fast_failures_total") >= 1
	})

	// A new, empty redis-server: "down" goes back to 0, the scripts are
	// sent again, and the lease of the open session is found lost.
	rd.Start()
	h1.waitMetrics(t, "sluice_redis_down 0 after redis-server was back", func(m metricsSnapshot) bool { return m.value("sluice_redis_down") == 0 })
	if !sendOne(t, c1, "bob@example.test", "redis back") {
		t.Error("bob refused after Redis came back empty")
	}
	m3 := scrape(t, h1.metrics)
	if v := m3.value("sluice_redis_script_reloads_total"); v < 1 {
		t.Errorf("sluice_redis_script_reloads_total = %v after Redis restarted empty", v)
	}
	if m3.value("sluice_redis_round_trips_total") <= m2.value("sluice_redis_round_trips_total") {
		t.Errorf("sluice_redis_round_trips_total did not grow after Redis came back")
	}
	// The open session's lease went with the old Redis: the next refresh
	// (every second) finds it lost, counts it once and stops holding it.
	m3 = h1.waitMetrics(t, "the lease gone with the old Redis counted lost and no longer held", func(m metricsSnapshot) bool {
		return m.value("sluice_redis_leases_lost_total") >= 1 && m.value("sluice_redis_leases") == 0
	})
	if v := m3.value("sluice_redis_leases_lost_total"); v != 1 {
		t.Errorf("sluice_redis_leases_lost_total = %v, want 1: one lease was lost", v)
	}
	c1.Quit()
	c2.Quit()
}
