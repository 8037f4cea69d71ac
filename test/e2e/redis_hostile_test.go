package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"sluice/limits/redisstore/redistest"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// hugeBulk is a bulk string length no Redis sends: go-redis allocated it
// (2^62 bytes) and panicked.
const hugeBulk = "$4611686018427387904\r\n"

// A server at the Redis address that answers PING and answers everything
// else with a bulk length of 2^62 — a local user who bound the port, a
// machine on the path — does not stop mail: sluice starts, stays up, and
// Postfix gets what on_store_error says (451 4.3.0 for tempfail, 250 for
// allow); the log says what happened a few times, not once per message.
// Once a real redis-server takes the address, counting in Redis resumes.
func TestRedisHostileReplies(t *testing.T) {
	testenv.Require(t)
	fake := redistest.StartFake(t, redistest.HostileButPing(hugeBulk))
	h := startRedisHost(t, "mode = \"enforce\"\n"+redisStore([]string{fake.Addr}, false, "")+outageRules)
	h.sl.WaitLog(5*time.Second, "the refusal at start", func(l sluicetest.LogLine) bool {
		return strings.HasPrefix(l.Msg(), "REDIS STORE REPLY REFUSED at start") && strings.Contains(l.Str("error"), fake.Addr)
	})
	o := &outage{t: t, c: redisSession(t, h.pf.Addr, "192.0.2.40")}
	before := fake.Commands()
	const rounds = 30
	for i := range rounds {
		o.send("hostile", fmt.Sprintf("a%d@allow.test", i), "ok")
		o.send("hostile", fmt.Sprintf("a%d@tempfail.test", i), "store")
		time.Sleep(100 * time.Millisecond) // a probe finds PING answered: a call hits the reply again
	}
	if !h.sl.Running() {
		t.Fatal("sluice is not running")
	}
	if fake.Commands() == before {
		t.Error("sluice stopped trying the server")
	}
	said := h.sl.Find(func(l sluicetest.LogLine) bool {
		return strings.Contains(l.Msg(), "REPLY REFUSED") || strings.Contains(l.Str("error"), "reply refused")
	})
	loud := h.sl.Find(func(l sluicetest.LogLine) bool { return l.Str("level") == "error" || l.Str("level") == "warn" })
	for _, l := range loud {
		t.Logf("logged: %v", l)
	}
	// Each kind of line is sampled (the first three, then one every 10
	// seconds): about a dozen in all, however many messages.
	if len(said) == 0 || len(loud) > 2*rounds/4 {
		t.Errorf("%d lines say a reply was refused, %d warnings and errors for %d messages: want a few", len(said), len(loud), 2*rounds)
	}
	for _, l := range h.sl.Logs() {
		if strings.Contains(l.Msg(), "panic") {
			t.Errorf("a panic was recovered: %v", l)
		}
	}

	fake.Stop()
	srv := redistest.StartAt(t, fake.Addr)
	deadline := time.Now().Add(20 * time.Second)
	for {
		tr := redisSend(t, o.c, "b@tempfail.test", "real redis")
		if tr.Accepted() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("with a real redis-server at the address: %v", tr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	keys := srv.Client().Keys(context.Background(), "e2e:r:closed:*").Val()
	if fmt.Sprint(keys) != "[e2e:r:closed:0:{sender:b@tempfail.test}]" {
		t.Errorf("keys in Redis: %v", keys)
	}
}
