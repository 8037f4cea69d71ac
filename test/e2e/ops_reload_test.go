package e2e

// Reload (SIGHUP) with real Postfix. New sessions get the new
// policy, sessions in flight finish on theirs, counters are kept, no
// message fails because of a reload, and a bad config leaves the running
// one in force.

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// background sends messages in a loop on its own SMTP connections, each
// from a sender of its own (so no limit binds), until stopped; every
// message must be accepted whatever sluice is doing.
type background struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	accepted atomic.Int64
	mu       sync.Mutex
	failures []string
}

func startBackground(addr string, workers int) *background {
	b := &background{stop: make(chan struct{})}
	for w := range workers {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.run(addr, w)
		}()
	}
	return b
}

func (b *background) fail(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failures = append(b.failures, fmt.Sprintf(format, args...))
}

func (b *background) run(addr string, w int) {
	ip := fmt.Sprintf("198.51.100.%d", 10+w)
	c, err := mta.Dial(addr)
	if err != nil {
		b.fail("worker %d: %v", w, err)
		return
	}
	defer c.Close()
	for _, cmd := range []string{"XCLIENT ADDR=" + ip, "EHLO load.example.net"} {
		if r, err := c.Cmd("%s", cmd); err != nil || !r.OK() {
			b.fail("worker %d: %s: %v %v", w, cmd, r, err)
			return
		}
	}
	// Bounded: a loop against a local server must stop by itself.
	for i := 1; i <= 2000; i++ {
		select {
		case <-b.stop:
			c.Quit()
			return
		default:
		}
		sender := fmt.Sprintf("bg%d-%d@example.test", w, i)
		tr, err := c.Send(sender, []string{rcpt}, mta.NewMessage(sender, rcpt, "background"))
		if err != nil || !tr.Accepted() {
			b.fail("worker %d message %d: %v %v", w, i, tr, err)
			return
		}
		b.accepted.Add(1)
	}
}

func (b *background) finish(t *testing.T) int {
	t.Helper()
	close(b.stop)
	b.wg.Wait()
	for _, f := range b.failures {
		t.Errorf("background: %s", f)
	}
	return int(b.accepted.Load())
}

// TestOpsReloadUnderLoad raises msgs-per-sender from 10/1h to 20/1h with
// SIGHUP while messages flow.
//
// What "counters are kept" means with GCRA: a key's state is how much of
// its window is used, not a count. bulk@ used 5 of 10/1h (half the hour);
// under 20/1h half the hour is 10, so 10 more are admitted: 15 in all. A
// reset would admit 20 more (25), a reload that did not apply would admit
// 5 more (10).
func TestOpsReloadUnderLoad(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, opsLimit("10/1h", ""))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})

	bg := startBackground(pf.Addr, 3)
	t.Cleanup(func() {
		select {
		case <-bg.stop:
		default:
			close(bg.stop)
			bg.wg.Wait()
		}
	})

	bulk1 := session(t, pf.Addr, "192.0.2.1")
	trs := sendN(t, bulk1, "bulk@example.test", 5)
	wantTempfailAtMail(t, trs, 0, 0)
	accepted := countAccepted(trs)
	// A session opened before the reload, with nothing sent yet.
	inflight := session(t, pf.Addr, "192.0.2.2")

	before := bg.accepted.Load()
	sl.WriteConfig(opsLimit("20/1h", ""))
	sl.Signal(syscall.SIGHUP)
	waitLogCount(t, sl, "reloaded", 1, 20*time.Second)
	bulk1.Quit()

	// The session in flight finishes on the old policy: 10 for a fresh sender.
	trs = sendN(t, inflight, "inflight@example.test", 11)
	wantTempfailAtMail(t, trs, 11, 11)
	accepted += countAccepted(trs)
	inflight.Quit()

	// A new session gets the new policy, on the kept counter: 10 more.
	bulk2 := session(t, pf.Addr, "192.0.2.1")
	trs = sendN(t, bulk2, "bulk@example.test", 11)
	wantTempfailAtMail(t, trs, 11, 11)
	accepted += countAccepted(trs)
	bulk2.Quit()

	// And a fresh sender in a new session gets all of the new 20.
	fresh := session(t, pf.Addr, "192.0.2.3")
	trs = sendN(t, fresh, "fresh@example.test", 21)
	wantTempfailAtMail(t, trs, 21, 21)
	accepted += countAccepted(trs)
	fresh.Quit()

	// Two more reloads while the background load runs.
	for i := 2; i <= 3; i++ {
		sl.Signal(syscall.SIGHUP)
		waitLogCount(t, sl, "reloaded", i, 20*time.Second)
		time.Sleep(200 * time.Millisecond)
	}
	after := bg.accepted.Load()
	// Let the load run past the last reload.
	if err := pollFor(30*time.Second, func() bool { return bg.accepted.Load() > after+5 }); err != nil {
		t.Errorf("background load stalled after the reloads: %v", err)
	}
	n := bg.finish(t)
	t.Logf("background: %d messages accepted (%d before the first reload, %d by the last), none refused", n, before, after)
	if after <= before {
		t.Errorf("background load did not run across the reloads (%d before, %d after)", before, after)
	}
	if got := 5 + 10 + 10 + 20; accepted != got {
		t.Errorf("accepted %d messages from the limited senders, want %d", accepted, got)
	}
	msgs := pf.WaitDelivered(accepted+n, 2*time.Minute)
	if len(msgs) != accepted+n {
		t.Errorf("sink holds %d messages, want %d accepted", len(msgs), accepted+n)
	}
	if fails := sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "reload failed" }); len(fails) > 0 {
		t.Errorf("unexpected reload failure: %v", fails)
	}
}

// TestOpsReloadBadConfig: a config with an error, loaded by SIGHUP, is
// logged with its file and line and the running config stays in force,
// counters and all; `sluice check` says the same; the next good config
// loads. The metrics show both reloads.
func TestOpsReloadBadConfig(t *testing.T) {
	testenv.Require(t)
	maddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	metricsConf := fmt.Sprintf("\n[metrics]\nlisten = %q\n", maddr)
	sl := sluicetest.StartSluice(t, opsLimit("3/1h", metricsConf))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})

	c := session(t, pf.Addr, "192.0.2.1")
	trs := sendN(t, c, "alice@example.test", 2)
	wantTempfailAtMail(t, trs, 0, 0)

	bad := strings.Replace(opsLimit("3/1h", metricsConf), `rate = "3/1h"`, `rate = "lots/1h"`, 1)
	path := sl.WriteConfig(bad)
	sl.Signal(syscall.SIGHUP)
	fail := sl.WaitLog(20*time.Second, "the failed reload", func(l sluicetest.LogLine) bool {
		return strings.HasPrefix(l.Msg(), "reload failed")
	})
	reason := fail.Str("error")
	t.Logf("sluice: %v", fail)
	if !strings.Contains(reason, path+":") || !strings.Contains(reason, "lots") {
		t.Errorf("reload failure %q does not name the file, line and the bad value", reason)
	}
	check := sluicetest.RunSluice(t, "check", "-config", path)
	if check.Code != 1 || !strings.Contains(check.Stderr, reason) {
		t.Errorf("sluice check: exit %d, %q; want exit 1 and the reload's reason %q", check.Code, check.Stderr, reason)
	}
	m := scrape(t, maddr)
	if got := m.value("sluice_config_reloads_total", "result=failure"); got != 1 {
		t.Errorf("sluice_config_reloads_total{result=failure} = %v, want 1", got)
	}
	if got := m.value("sluice_config_last_reload_successful"); got != 0 {
		t.Errorf("sluice_config_last_reload_successful = %v after a failed reload, want 0", got)
	}

	// The old config is in force and kept its counter: one more (3 of
	// 3/1h) on the session in flight and on a new one alike, then refused.
	trs = sendN(t, c, "alice@example.test", 2)
	wantTempfailAtMail(t, trs, 2, 2)
	c.Quit()
	c2 := session(t, pf.Addr, "192.0.2.2")
	trs = sendN(t, c2, "alice@example.test", 1)
	wantTempfailAtMail(t, trs, 1, 1)
	trs = sendN(t, c2, "bob@example.test", 4)
	wantTempfailAtMail(t, trs, 4, 4)
	c2.Quit()

	// A good config loads again.
	sl.WriteConfig(opsLimit("5/1h", metricsConf))
	sl.Signal(syscall.SIGHUP)
	waitLogCount(t, sl, "reloaded", 1, 20*time.Second)
	c3 := session(t, pf.Addr, "192.0.2.3")
	trs = sendN(t, c3, "carol@example.test", 6)
	wantTempfailAtMail(t, trs, 6, 6)
	c3.Quit()
	m = scrape(t, maddr)
	if got := m.value("sluice_config_reloads_total", "result=success"); got != 1 {
		t.Errorf("sluice_config_reloads_total{result=success} = %v, want 1", got)
	}
	if got := m.value("sluice_config_last_reload_successful"); got != 1 {
		t.Errorf("sluice_config_last_reload_successful = %v after a good reload, want 1", got)
	}
	if code, body := httpGet(t, "http://"+maddr+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz: %d %s", code, body)
	}
	pf.WaitDelivered(2+1+3+5, time.Minute)
}
