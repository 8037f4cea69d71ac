package e2e

// Redis goes away mid-run (hung, then dead) and comes back; and
// Redis down when sluice starts. Real Postfix, real redis-server.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"sluice/limits/redisstore/redistest"
	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// One rule per failure policy, told apart by the sender's domain. The
// tempfail rule's own action is reject: a store failure must still be a
// temporary 451 4.3.0, never a rejection.
const outageRules = `
[[limit]]
name = "open"
count = "messages"
per = "sender"
rate = "2/1h"
action = "tempfail"
match = { sender_domain = ["allow.test"] }

[[limit]]
name = "closed"
count = "messages"
per = "sender"
rate = "2/1h"
action = "reject"
on_store_error = "tempfail"
match = { sender_domain = ["tempfail.test"] }

[[limit]]
name = "local"
count = "messages"
per = "sender"
rate = "2/1h"
action = "tempfail"
on_store_error = "local"
match = { sender_domain = ["local.test"] }
`

// The slowest SMTP transaction the test accepts while Redis hangs: far
// above the store's 250ms timeout, far below Postfix's 30s milter timeout
// that a hanging milter would run into. A liveness bound, not a benchmark.
const noHang = 5 * time.Second

type outage struct {
	t       *testing.T
	c       *mta.Client
	slowest time.Duration
}

// send sends one message from sender and checks the outcome: want is
// "ok", "limit" (451 4.7.1 at MAIL FROM), "reject" (550 5.7.1 at MAIL
// FROM) or "store" (451 4.3.0 at MAIL FROM).
func (o *outage) send(phase, sender, want string) {
	o.t.Helper()
	start := time.Now()
	tr := redisSend(o.t, o.c, sender, phase+" "+sender)
	took := time.Since(start)
	o.slowest = max(o.slowest, took)
	o.t.Logf("%-12s %-20s %6v %v", phase, sender, took.Round(time.Millisecond), tr)
	if took > noHang {
		o.t.Errorf("%s: a transaction took %v with Redis away", phase, took)
	}
	stage, r := tr.Refused()
	var got string
	switch {
	case tr.Accepted():
		got = "ok"
	case stage == "MAIL" && r.Code == 451 && strings.HasPrefix(r.Text, "4.7.1"):
		got = "limit"
	case stage == "MAIL" && r.Code == 451 && strings.HasPrefix(r.Text, "4.3.0"):
		got = "store"
	case stage == "MAIL" && r.Code == 550 && strings.HasPrefix(r.Text, "5.7.1"):
		got = "reject"
	default:
		got = tr.String()
	}
	if got != want {
		o.t.Errorf("%s: message from %s: %s, want %s", phase, sender, got, want)
	}
}

func waitRedisBack(t *testing.T, sl *sluicetest.Sluice, after int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		logs := sl.Logs()
		for _, l := range logs[after:] {
			if strings.HasPrefix(l.Msg(), "redis store answers again") {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("sluice did not find Redis again within 20s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestRedisOutage(t *testing.T) {
	testenv.Require(t)
	srv := redistest.Start(t)
	h := startRedisHost(t, "mode = \"enforce\"\n"+redisStore([]string{srv.Addr}, false, "")+outageRules)
	o := &outage{t: t, c: redisSession(t, h.pf.Addr, "192.0.2.30")}
	allow, tempfail, local := "a@allow.test", "a@tempfail.test", "a@local.test"

	// Up: one each, counted in Redis.
	for _, s := range []string{allow, tempfail, local} {
		o.send("up", s, "ok")
	}

	// Hung (SIGSTOP: connections accepted, no answer).
	srv.Pause()
	// The first call waits for the timeout; Redis runs it when it wakes
	// up, so it is another sender's.
	o.send("hung", "first@allow.test", "ok")
	o.send("hung", allow, "ok")
	o.send("hung", allow, "ok") // not counted: would be the 3rd in the hour
	o.send("hung", tempfail, "store")
	o.send("hung", tempfail, "store")
	o.send("hung", local, "ok") // local counts from zero
	o.send("hung", local, "ok")
	o.send("hung", local, "limit")
	t.Logf("slowest transaction while Redis hung: %v", o.slowest)
	h.sl.WaitLog(5*time.Second, "the outage", func(l sluicetest.LogLine) bool { return strings.HasPrefix(l.Msg(), "REDIS STORE UNREACHABLE") })

	// Back: counting resumes in Redis where it was (1 of 2 each).
	mark := len(h.sl.Logs())
	srv.Resume()
	waitRedisBack(t, h.sl, mark)
	o.send("resumed", allow, "ok")
	o.send("resumed", allow, "limit")
	o.send("resumed", tempfail, "ok")
	o.send("resumed", tempfail, "reject") // the rule's own action
	o.send("resumed", local, "ok")
	o.send("resumed", local, "limit")

	// Dead (connection refused), then a new, empty Redis.
	srv.Kill()
	o.send("dead", tempfail, "store")
	o.send("dead", allow, "ok")
	mark = len(h.sl.Logs())
	srv.Start()
	waitRedisBack(t, h.sl, mark)
	o.send("restarted", allow, "ok")
	o.send("restarted", allow, "ok")
	o.send("restarted", allow, "limit")

	if !h.sl.Running() {
		t.Fatal("sluice is not running")
	}
	// 10 events failed; the log has a few lines about them, not 10.
	failed := h.sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "counter store failed" })
	for _, l := range failed {
		t.Logf("logged: %v", l)
	}
	if len(failed) == 0 || len(failed) >= 10 {
		t.Errorf("%d log lines for 10 failed events, want a sample (1 to 9)", len(failed))
	}
	if n := len(h.sl.Find(func(l sluicetest.LogLine) bool { return strings.HasPrefix(l.Msg(), "REDIS STORE UNREACHABLE") })); n != 2 {
		t.Errorf("%d outage lines, want 2 (one per outage)", n)
	}
}

func TestRedisDownAtStart(t *testing.T) {
	testenv.Require(t)
	srv := redistest.Start(t)
	srv.Stop()
	cfg := "mode = \"enforce\"\n" + redisStore([]string{srv.Addr}, false, `on_store_error = "tempfail"`) + senderRule
	h := startRedisHost(t, cfg)
	h.sl.WaitLog(time.Second, "the loud start", func(l sluicetest.LogLine) bool {
		return strings.HasPrefix(l.Msg(), "REDIS STORE UNREACHABLE at start") && l.Str("level") == "error"
	})
	o := &outage{t: t, c: redisSession(t, h.pf.Addr, "192.0.2.31")}
	o.send("down", "b@example.test", "store")
	mark := len(h.sl.Logs())
	srv.Start()
	waitRedisBack(t, h.sl, mark)
	o.send("up", "b@example.test", "ok")
	keys := srv.Client().Keys(context.Background(), "e2e:r:msgs-per-sender:*").Val()
	if fmt.Sprint(keys) != "[e2e:r:msgs-per-sender:0:{sender:b@example.test}]" {
		t.Errorf("keys in Redis: %v", keys)
	}
}
