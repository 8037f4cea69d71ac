package e2e

// Redis fails over under real Postfix load: a master, a replica and three
// Sentinels; two sluice daemons find the master by master_name behind two
// edge Postfixes; mail comes through upstream Postfixes that retry what
// was deferred.

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"sluice/limits/redisstore/redistest"
	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

var chaosMessages = flag.Int("chaos-messages", 300, "messages per run of the Redis failover tests (-args -chaos-messages 2000 for the long run)")

// One generous rule per failure policy, told apart by the sender's domain,
// so that no message meets its limit and every refusal is the store's;
// and a tight one for the probe that shows counting goes on.
var failoverRules = `trusted = []
mode = "enforce"

[metrics]
listen = %q

[log]
level = "info"
` + senderDomainRule("open", "allow.test", "1000000/1h", "allow") +
	senderDomainRule("closed", "tempfail.test", "1000000/1h", "tempfail") +
	senderDomainRule("local", "local.test", "1000000/1h", "local") +
	senderDomainRule("probe", "probe.test", "3/1h", "tempfail")

func senderDomainRule(name, domain, rate, onStoreError string) string {
	return fmt.Sprintf(`
[[limit]]
name = %q
count = "messages"
per = "sender"
rate = %q
action = "tempfail"
on_store_error = %q
match = { sender_domain = [%q] }
`, name, rate, onStoreError, domain)
}

var failoverDomains = []string{"allow.test", "tempfail.test", "local.test"}

const masterName = "sluicemaster"

// failoverSite is the whole set-up: Redis with Sentinels, and two mail
// paths upstream -> edge (Postfix + sluice) -> one sink.
type failoverSite struct {
	master, replica *redistest.Server
	sentinels       *redistest.Sentinels
	sluices         []*sluicetest.Sluice
	metrics         []string
	edges           []*mta.Postfix
	upstreams       []*mta.Postfix
	sink            *mta.Sink
}

func startFailoverSite(t *testing.T) *failoverSite {
	t.Helper()
	s := &failoverSite{master: redistest.Start(t)}
	s.replica = redistest.StartReplica(t, s.master)
	s.sentinels = redistest.StartSentinels(t, masterName, s.master, 1, 3, 2)
	// A call times out after 1s, not the 250ms of the other Redis tests:
	// on a loaded 2-core machine Redis or sluice can stall for 250ms
	// with nothing killed, and these tests tell the faults they cause
	// from such noise.
	store := fmt.Sprintf(`
[store]
backend = "redis"
addrs = ["%s"]
master_name = %q
prefix = "e2e:"
timeout = "1s"
retry_backoff = "200ms"
retry_backoff_max = "1s"
`, strings.Join(s.sentinels.Addrs(), `", "`), masterName)
	s.sink = mta.StartSink(t)
	for range 2 {
		maddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		sl := sluicetest.StartSluice(t, fmt.Sprintf(failoverRules, maddr)+store)
		// As in TestFaultKillSluiceMidRun: no error sleep at the edge, and
		// a new SMTP session per delivery upstream.
		edge := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen, DefaultAction: "tempfail", Sink: s.sink,
			Main: map[string]string{"smtpd_error_sleep_time": "0", "smtpd_soft_error_limit": "1000", "smtpd_hard_error_limit": "1000"}})
		up := mta.StartPostfix(t, mta.PostfixOptions{
			Sink: &mta.Sink{Addr: edge.Addr},
			Main: map[string]string{"myhostname": fmt.Sprintf("upstream%d.example.test", len(s.edges)), "smtp_connection_cache_on_demand": "no"},
		})
		s.sluices = append(s.sluices, sl)
		s.metrics = append(s.metrics, maddr)
		s.edges = append(s.edges, edge)
		s.upstreams = append(s.upstreams, up)
	}
	return s
}

// inject sends total messages into the upstreams, alternately, at about
// rate a second, each "fault N" from a sender of one of failoverDomains.
func (s *failoverSite) inject(total int, rate float64) <-chan error {
	const conns = 4
	errs := make(chan error, conns)
	start := time.Now()
	var wg sync.WaitGroup
	for c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var cls [2]*mta.Client
			for i := range cls {
				cl, err := mta.Dial(s.upstreams[i].Addr)
				if err != nil {
					errs <- err
					return
				}
				defer cl.Quit()
				if r, err := cl.Ehlo("client.example.net"); err != nil || !r.OK() {
					errs <- fmt.Errorf("EHLO: %v %v", r, err)
					return
				}
				cls[i] = cl
			}
			for i := c; i < total; i += conns {
				time.Sleep(time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))))
				from := fmt.Sprintf("s%d@%s", i%20, failoverDomains[i%len(failoverDomains)])
				tr, err := cls[i%2].Send(from, []string{rcpt}, mta.NewMessage(from, rcpt, fmt.Sprintf("fault %d", i)))
				if err != nil || !tr.Accepted() {
					errs <- fmt.Errorf("message %d into upstream %d: %v %v", i, i%2, tr, err)
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); close(errs) }()
	return errs
}

// settle waits until the edges' queues are empty and each of the total
// messages is either at the sink or deferred upstream, and returns the
// deferred count.
func (s *failoverSite) settle(t *testing.T, total int, timeout time.Duration) int {
	t.Helper()
	var deferred int
	err := pollFor(timeout, func() bool {
		deferred = 0
		for _, p := range s.edges {
			if len(p.Queue()) > 0 {
				return false
			}
		}
		for _, p := range s.upstreams {
			for _, e := range p.Queue() {
				if e.QueueName != "deferred" {
					return false
				}
				deferred++
			}
		}
		return s.sink.Count()+deferred == total
	})
	if err != nil {
		t.Fatalf("mail did not settle: %d at the sink, upstream queues %v %v, edge queues %v %v; want %d in all",
			s.sink.Count(), queueSummary(s.upstreams[0]), queueSummary(s.upstreams[1]),
			queueSummary(s.edges[0]), queueSummary(s.edges[1]), total)
	}
	return deferred
}

// deliverAll flushes the upstreams until total messages are at the sink,
// and checks that each arrived exactly once: subjects "fault N", N below
// subjects.
func (s *failoverSite) deliverAll(t *testing.T, total, subjects int) {
	t.Helper()
	for _, p := range s.upstreams {
		p.Flush()
	}
	err := pollFor(5*time.Minute, func() bool {
		for _, p := range append(s.upstreams, s.edges...) {
			if len(p.Queue()) > 0 {
				return false
			}
		}
		return s.sink.Count() >= total
	})
	if err != nil {
		t.Fatalf("after the flush: %d at the sink, upstream queues %v %v", s.sink.Count(),
			queueSummary(s.upstreams[0]), queueSummary(s.upstreams[1]))
	}
	if n := uniqueAtSink(t, s.sink, subjects); n != total || s.sink.Count() != total {
		t.Fatalf("the sink holds %d files, %d distinct messages; want exactly %d", s.sink.Count(), n, total)
	}
}

// deferrals reads the upstreams' logs: each deferral's sender domain and
// the reply that caused it.
type deferral struct{ domain, reply string }

var (
	fromLine     = regexp.MustCompile(`: ([0-9A-F]+): from=<[^@>]*@([^>]*)>`)
	deferredLine = regexp.MustCompile(`: ([0-9A-F]+): to=<.*status=deferred \((.*)\)$`)
)

func (s *failoverSite) deferrals() []deferral {
	var out []deferral
	for _, p := range s.upstreams {
		domain := map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(p.Log()))
		for sc.Scan() {
			line := sc.Text()
			if m := fromLine.FindStringSubmatch(line); m != nil {
				domain[m[1]] = m[2]
			}
			if m := deferredLine.FindStringSubmatch(line); m != nil {
				out = append(out, deferral{domain[m[1]], m[2]})
			}
		}
	}
	return out
}

// metric sums a metric over both daemons.
func (s *failoverSite) metric(t *testing.T, name string, labels ...string) float64 {
	sum := 0.0
	for _, a := range s.metrics {
		sum += scrape(t, a).value(name, labels...)
	}
	return sum
}

// probeCounting sends four messages, "fault first" to "fault first+3",
// from one sender alternately through both edges straight (no upstream):
// three reach the sink and the fourth meets the limit of 3, so both
// daemons count in the same Redis. It checks that the key is in want, the
// master.
func (s *failoverSite) probeCounting(t *testing.T, sender string, first int, want *redistest.Server) {
	t.Helper()
	var trs []mta.Transaction
	for i := range 4 {
		c := redisSession(t, s.edges[i%2].Addr, "192.0.2.90")
		trs = append(trs, redisSend(t, c, sender, fmt.Sprintf("fault %d", first+i)))
		c.Quit()
	}
	wantTempfailAtMail(t, trs, 4, 4)
	keys := want.Client().Keys(context.Background(), "e2e:r:probe:*{sender:"+sender+"}").Val()
	if len(keys) != 1 {
		t.Errorf("the probe's key is not in the Redis at %s: keys %v", want.Addr, keys)
	}
}

// TestChaosRedisMasterKilled: with mail flowing through two sluice
// daemons on a Sentinel-managed Redis, the master is killed with SIGKILL.
// Sentinel promotes the replica; every message ends up at the sink exactly
// once (delivered, or deferred by the upstream and delivered on retry);
// the only refusals are the 451 4.3.0 of the rule whose on_store_error is
// tempfail, the other rules let mail through; and counting goes on in the
// promoted replica, shared by both daemons.
func TestChaosRedisMasterKilled(t *testing.T) {
	testenv.Require(t)
	total := *chaosMessages
	s := startFailoverSite(t)
	s.probeCounting(t, "before@probe.test", total, s.master)
	const probed = 3 // at the sink

	errs := s.inject(total, 40)
	if err := pollFor(2*time.Minute, func() bool { return s.sink.Count() >= probed+total/3 }); err != nil {
		t.Fatalf("only %d messages at the sink after 2 minutes", s.sink.Count())
	}
	marks := []int{len(s.sluices[0].Logs()), len(s.sluices[1].Logs())}
	killed := time.Now()
	s.master.Kill()
	t.Logf("master %s killed with SIGKILL with %d of %d messages at the sink", s.master.Addr, s.sink.Count(), total)

	// Sentinel promotes the replica.
	if err := pollFor(30*time.Second, func() bool { m, err := s.sentinels.Master(); return err == nil && m == s.replica.Addr }); err != nil {
		m, err := s.sentinels.Master()
		t.Fatalf("no failover to %s within 30s: master %q %v", s.replica.Addr, m, err)
	}
	promoted := time.Since(killed)
	t.Logf("Sentinel promoted %s %.1fs after the kill", s.replica.Addr, promoted.Seconds())

	for err := range errs {
		t.Fatal(err)
	}
	deferred := s.settle(t, probed+total, 3*time.Minute)

	// Each daemon that saw the outage says when it found Redis again.
	for i, sl := range s.sluices {
		logs := sl.Logs()[marks[i]:]
		down, back := time.Time{}, time.Time{}
		for _, l := range logs {
			switch {
			case down.IsZero() && strings.HasPrefix(l.Msg(), "REDIS STORE UNREACHABLE"):
				down = logTime(t, l)
			case !down.IsZero() && back.IsZero() && strings.HasPrefix(l.Msg(), "redis store answers again"):
				back = logTime(t, l)
			}
		}
		switch {
		case down.IsZero():
			t.Logf("sluice %d: no outage noticed", i)
		case back.IsZero():
			t.Errorf("sluice %d: Redis unreachable since %v and not found again", i, down.Sub(killed).Round(time.Millisecond))
		default:
			t.Logf("sluice %d: Redis unreachable %.1fs after the kill, counting again %.1fs after it (down for %.1fs)",
				i, down.Sub(killed).Seconds(), back.Sub(killed).Seconds(), back.Sub(down).Seconds())
		}
	}

	// The refusals were the store's and followed each rule's policy.
	byDomain := map[string]int{}
	for _, d := range s.deferrals() {
		byDomain[d.domain]++
		if d.domain != "tempfail.test" || !strings.Contains(d.reply, "451 4.3.0") {
			t.Errorf("deferred: a message from %s: %s; want only tempfail.test's with 451 4.3.0", d.domain, d.reply)
		}
	}
	fallbacks := map[string]float64{}
	for _, p := range []string{"allow", "tempfail", "local"} {
		fallbacks[p] = s.metric(t, "sluice_store_fallbacks_total", "policy="+p)
	}
	t.Logf("during the outage: %d messages deferred upstream (by sender domain %v); store fallbacks %v", deferred, byDomain, fallbacks)
	if fallbacks["tempfail"] == 0 || deferred == 0 {
		t.Fatalf("the outage met no mail of the tempfail rule (%d deferred, fallbacks %v): nothing was tested", deferred, fallbacks)
	}

	s.deliverAll(t, probed+total, total+8)
	t.Logf("after the upstreams' retry: all %d messages delivered exactly once", total)
	s.probeCounting(t, "after@probe.test", total+4, s.replica)
	s.deliverAll(t, 2*probed+total, total+8)
}

// TestChaosRedisReplicaKilled: with mail flowing, the replica and one of
// the three Sentinels are killed with SIGKILL. Nothing is noticed: the
// master stays, no store call fails, no message is deferred, and every
// message is delivered once on the first try.
func TestChaosRedisReplicaKilled(t *testing.T) {
	testenv.Require(t)
	total := *chaosMessages
	s := startFailoverSite(t)

	errs := s.inject(total, 40)
	if err := pollFor(2*time.Minute, func() bool { return s.sink.Count() >= total/3 }); err != nil {
		t.Fatalf("only %d messages at the sink after 2 minutes", s.sink.Count())
	}
	errors0, fallbacks0 := s.metric(t, "sluice_store_errors_total"), s.metric(t, "sluice_store_fallbacks_total")
	marks := []int{len(s.sluices[0].Logs()), len(s.sluices[1].Logs())}
	s.replica.Kill()
	s.sentinels.Nodes[0].Kill()
	t.Logf("replica %s and sentinel %s killed with SIGKILL with %d of %d messages at the sink",
		s.replica.Addr, s.sentinels.Nodes[0].Addr, s.sink.Count(), total)
	for err := range errs {
		t.Fatal(err)
	}
	if deferred := s.settle(t, total, 3*time.Minute); deferred != 0 {
		t.Errorf("%d messages deferred upstream: %v", deferred, s.deferrals())
	}
	s.deliverAll(t, total, total)
	if m, err := s.sentinels.Master(); err != nil || m != s.master.Addr {
		t.Errorf("master after the kills: %q %v; want %s still", m, err, s.master.Addr)
	}
	if v := s.metric(t, "sluice_store_errors_total") - errors0; v != 0 {
		t.Errorf("%v store errors after the kills, want 0", v)
	}
	if v := s.metric(t, "sluice_store_fallbacks_total") - fallbacks0; v != 0 {
		t.Errorf("%v requests answered by on_store_error after the kills, want 0", v)
	}
	for i, sl := range s.sluices {
		for _, l := range sl.Logs()[marks[i]:] {
			if strings.HasPrefix(l.Msg(), "REDIS STORE UNREACHABLE") {
				t.Errorf("sluice %d noticed an outage: %v", i, l)
			}
		}
	}
	t.Logf("all %d messages delivered once, none deferred, no store error", total)
	s.probeCounting(t, "after@probe.test", total, s.master)
	s.deliverAll(t, total+3, total+4)
}

// logTime is the time of a sluice log line.
func logTime(t *testing.T, l sluicetest.LogLine) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, l.Str("ts"))
	if err != nil {
		t.Fatalf("log line without a time: %v", l)
	}
	return ts
}
