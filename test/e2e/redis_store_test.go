package e2e

// The shared store with real Postfix and real redis-server: several MX
// hosts, each a Postfix with its own sluice, share counters in one Redis
// or a 3-node Redis Cluster. Sessions pose as outside clients with
// XCLIENT (loopback is on the default trusted list).

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"sluice/limits/redisstore/redistest"
	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// redisHost is one MX host: a Postfix with its own sluice attached.
type redisHost struct {
	sl *sluicetest.Sluice
	pf *mta.Postfix
}

// redisStore is the [store] table of a host using Redis at addrs.
func redisStore(addrs []string, cluster bool, extra string) string {
	q := make([]string, len(addrs))
	for i, a := range addrs {
		q[i] = fmt.Sprintf("%q", a)
	}
	return fmt.Sprintf(`
[store]
backend = "redis"
addrs = [%s]
cluster = %v
prefix = "e2e:"
timeout = "250ms"
retry_backoff = "200ms"
retry_backoff_max = "1s"
%s
`, strings.Join(q, ", "), cluster, extra)
}

// startRedisHost starts sluice with config (top-level keys, then tables)
// and a Postfix in front of it.
func startRedisHost(t *testing.T, config string) redisHost {
	t.Helper()
	sl := sluicetest.StartSluice(t, config)
	return redisHost{sl: sl, pf: mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})}
}

// redisSession opens an SMTP session to addr posing as client ip.
func redisSession(t *testing.T, addr, ip string) *mta.Client {
	t.Helper()
	c, err := mta.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for _, step := range []func() (mta.Reply, error){
		func() (mta.Reply, error) { return c.Greeting, nil },
		func() (mta.Reply, error) { return c.XClient("ADDR=" + ip + " NAME=[UNAVAILABLE]") },
		func() (mta.Reply, error) { return c.Ehlo("client.example.net") },
	} {
		if r, err := step(); err != nil || !r.OK() {
			t.Fatalf("session to %s as %s: %v %v", addr, ip, r, err)
		}
	}
	return c
}

// redisSend sends one message from sender on c.
func redisSend(t *testing.T, c *mta.Client, sender, subject string) mta.Transaction {
	t.Helper()
	tr, err := c.Send(sender, []string{rcpt}, mta.NewMessage(sender, rcpt, subject))
	if err != nil {
		t.Fatalf("%s: %v (%v)", subject, err, tr)
	}
	return tr
}

const senderRule = `
[[limit]]
name = "msgs-per-sender"
count = "messages"
per = "sender"
rate = "10/1h"
action = "tempfail"
`

// Messages from one client are also counted per IP, on another slot: under
// Cluster every MAIL FROM then touches two slots, usually on two nodes.
const ipRule = `
[[limit]]
name = "msgs-per-ip"
count = "messages"
per = "client_ip"
rate = "1000/1h"
action = "tempfail"
`

// sharedLimit sends 15 messages from one sender, alternately through two
// hosts sharing store, and checks that exactly 10 are accepted and the
// others refused at MAIL FROM with the limit's 451 4.7.1.
func sharedLimit(t *testing.T, store string, rules string) {
	cfg := "mode = \"enforce\"\n" + store + rules
	hosts := []redisHost{startRedisHost(t, cfg), startRedisHost(t, cfg)}
	sender := "fleet@example.test"
	clients := []*mta.Client{redisSession(t, hosts[0].pf.Addr, "192.0.2.21"), redisSession(t, hosts[1].pf.Addr, "192.0.2.22")}
	accepted := 0
	perHost := [2]int{}
	for i := range 15 {
		h := i % 2
		tr := redisSend(t, clients[h], sender, fmt.Sprintf("fleet %d via host %d", i+1, h+1))
		t.Logf("message %2d via host %d: %v", i+1, h+1, tr)
		if tr.Accepted() {
			accepted++
			perHost[h]++
			continue
		}
		stage, r := tr.Refused()
		if stage != "MAIL" || r.Code != 451 || !strings.HasPrefix(r.Text, "4.7.1") {
			t.Errorf("message %d: %v; want accepted or 451 4.7.1 at MAIL FROM", i+1, tr)
		}
	}
	if accepted != 10 {
		t.Errorf("%d of 15 messages accepted across two hosts (%d and %d), want exactly 10", accepted, perHost[0], perHost[1])
	}
	if perHost[0] == 0 || perHost[1] == 0 {
		t.Errorf("accepted per host %v: both hosts should have admitted some", perHost)
	}
	for i, h := range hosts {
		if n := len(h.sl.Find(func(l sluicetest.LogLine) bool { return l.Str("rule") == "msgs-per-sender" })); n == 0 {
			t.Errorf("host %d logged no refusal", i+1)
		}
	}
}

func TestRedisSharedSenderLimit(t *testing.T) {
	testenv.Require(t)
	srv := redistest.Start(t)
	sharedLimit(t, redisStore([]string{srv.Addr}, false, ""), senderRule)
	// The counter is in Redis, under the prefix, and expires by itself.
	keys, err := srv.Client().Keys(context.Background(), "e2e:r:msgs-per-sender:*").Result()
	if err != nil || len(keys) != 1 || !strings.Contains(keys[0], "{sender:fleet@example.test}") {
		t.Fatalf("Redis keys %v %v, want one msgs-per-sender key tagged with the sender", keys, err)
	}
	if ttl := srv.Client().PTTL(context.Background(), keys[0]).Val(); ttl <= 0 || ttl > time.Hour {
		t.Errorf("TTL of %s: %v, want a positive TTL within the hour", keys[0], ttl)
	}
}

func TestRedisClusterSenderLimit(t *testing.T) {
	testenv.Require(t)
	cl := redistest.StartCluster(t, 3)
	sharedLimit(t, redisStore(cl.Addrs(), true, ""), senderRule+ipRule)
	// Every node has some of the slots; the sender's key is on the node
	// that owns its slot, and the IP keys elsewhere or there.
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	defer c.Close()
	ctx := context.Background()
	var found []string
	err := c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		keys, err := n.Keys(ctx, "e2e:r:*").Result()
		for _, k := range keys {
			found = append(found, n.Options().Addr+" "+k)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("keys in the cluster:\n%s", strings.Join(found, "\n"))
	if len(found) != 3 { // one sender key, two IP keys
		t.Errorf("%d counter keys in the cluster, want 3 (1 sender, 2 client IPs)", len(found))
	}
}

// Concurrency across hosts: max 3 sessions per client IP holds across two
// sluice instances; when one is killed (SIGKILL, no clean release), its
// slots come back within the lease time.
func TestRedisConcurrentAcrossHosts(t *testing.T) {
	testenv.Require(t)
	srv := redistest.Start(t)
	const lease = 2 * time.Second
	cfg := "mode = \"enforce\"\n" + redisStore([]string{srv.Addr}, false, fmt.Sprintf("lease_time = %q", lease.String())) + `
[[limit]]
name = "conns-per-ip"
count = "concurrent"
per = "client_ip"
max = 3
action = "tempfail"
`
	a, b := startRedisHost(t, cfg), startRedisHost(t, cfg)
	const ip = "192.0.2.50"
	// open tries a session as ip on h and reports whether it was admitted:
	// MAIL FROM accepted. sluice turns a tempfail at connect into 421,
	// which Postfix gives at the next command (EHLO). An admitted session
	// is left open, holding its slot.
	open := func(h redisHost, what string) bool {
		t.Helper()
		c, err := mta.Dial(h.pf.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		var r mta.Reply
		for _, step := range []func() (mta.Reply, error){
			func() (mta.Reply, error) { return c.XClient("ADDR=" + ip + " NAME=[UNAVAILABLE]") },
			func() (mta.Reply, error) { return c.Ehlo("client.example.net") },
			func() (mta.Reply, error) { return c.Mail("holder@example.test") },
		} {
			if r, err = step(); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if !r.OK() {
				break
			}
		}
		t.Logf("%s: %v", what, r)
		if r.OK() {
			return true
		}
		if r.Code != 421 && (r.Code != 451 || !strings.HasPrefix(r.Text, "4.7.1")) {
			t.Fatalf("%s: %v, want 250, 421 or 451 4.7.1", what, r)
		}
		c.Close()
		return false
	}
	for i, h := range []redisHost{a, a, b} {
		if !open(h, fmt.Sprintf("session %d", i+1)) {
			t.Fatalf("session %d of 3 refused", i+1)
		}
	}
	if open(b, "session 4 on host B") {
		t.Fatal("a 4th session from one IP was accepted across two hosts with max 3")
	}
	if open(a, "session 5 on host A") {
		t.Fatal("a 5th session from one IP was accepted with max 3")
	}
	for _, h := range []redisHost{a, b} {
		if n := len(h.sl.Find(func(l sluicetest.LogLine) bool { return l.Str("rule") == "conns-per-ip" })); n != 1 {
			t.Errorf("a host logged %d refusals by conns-per-ip, want 1", n)
		}
	}

	a.sl.Kill()
	killed := time.Now()
	deadline := killed.Add(5 * lease)
	for !open(b, "after the kill") {
		if time.Now().After(deadline) {
			t.Fatalf("host A's slots not freed %v after SIGKILL with lease_time %v", time.Since(killed), lease)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("host A's slots came back %v after SIGKILL (lease_time %v)", time.Since(killed).Round(time.Millisecond), lease)
	// B holds 2 now (session 3 and the one just opened): one more fits.
	if !open(b, "second after the kill") {
		t.Error("only one of host A's two slots came back")
	}
	if open(b, "third after the kill") {
		t.Error("the limit no longer holds after the kill")
	}
	keys := srv.Client().Keys(context.Background(), "e2e:c:*").Val()
	if len(keys) != 1 {
		t.Fatalf("concurrency keys %v", keys)
	}
	if n := srv.Client().ZCard(context.Background(), keys[0]).Val(); n != 3 {
		t.Errorf("%d leases in %s, want 3 (all of host B)", n, keys[0])
	}
}
