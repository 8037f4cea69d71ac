package e2e

// Faults with real Postfix: sluice killed with SIGKILL in the
// middle of a run loses no mail and duplicates none.

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// TestFaultKillSluiceMidRun: an upstream Postfix relays 2,000 messages to
// an edge Postfix with sluice attached (milter_default_action =
// tempfail). sluice is killed with SIGKILL while mail flows. Every message
// must then be either at the sink or still in the upstream's deferred
// queue; after sluice is back and the queue is flushed, the sink must hold
// every message exactly once (counted by Message-ID).
func TestFaultKillSluiceMidRun(t *testing.T) {
	testenv.Require(t)
	const total = 2000
	const killAt = 300 // messages at the sink when sluice is killed

	sl := sluicetest.StartSluice(t, sluicetest.CountEverything)
	sink := mta.StartSink(t)
	// smtpd sleeps a second before each error reply by default, which
	// would make the upstream take many minutes to try every message.
	edge := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen, DefaultAction: "tempfail", Sink: sink,
		Main: map[string]string{"smtpd_error_sleep_time": "0", "smtpd_soft_error_limit": "1000", "smtpd_hard_error_limit": "1000"}})
	// The upstream has no milter and relays everything to the edge. It
	// needs a name of its own: Postfix refuses to relay to a server that
	// greets with its own name (a mail loop). It opens a new SMTP session
	// per delivery: an edge smtpd whose milter failed tempfails every
	// later MAIL of that SMTP session, even once sluice is back, so a
	// cached connection would keep deferring until the cache let go of it
	// (smtp_connection_reuse_time_limit, 300s) — no mail lost, only late.
	upstream := mta.StartPostfix(t, mta.PostfixOptions{
		Sink: &mta.Sink{Addr: edge.Addr},
		Main: map[string]string{"myhostname": "upstream.example.test", "smtp_connection_cache_on_demand": "no"},
	})

	// Inject into the upstream from several connections at once.
	const conns = 8
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for c := 0; c < conns; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl, err := mta.Dial(upstream.Addr)
			if err != nil {
				errs <- err
				return
			}
			defer cl.Quit()
			if r, err := cl.Ehlo("client.example.net"); err != nil || !r.OK() {
				errs <- fmt.Errorf("EHLO: %v %v", r, err)
				return
			}
			for i := c; i < total; i += conns {
				from := fmt.Sprintf("sender%d@example.test", i%50)
				tr, err := cl.Send(from, []string{rcpt}, mta.NewMessage(from, rcpt, fmt.Sprintf("fault %d", i)))
				if err != nil || !tr.Accepted() {
					errs <- fmt.Errorf("message %d into the upstream: %v %v", i, tr, err)
					return
				}
			}
		}()
	}

	// Kill sluice once mail is flowing through it.
	deadline := time.Now().Add(2 * time.Minute)
	for sink.Count() < killAt {
		if time.Now().After(deadline) {
			t.Fatalf("only %d messages at the sink after 2 minutes\nedge log:\n%s", sink.Count(), edge.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
	sl.Kill()
	atKill := sink.Count()
	t.Logf("sluice killed with SIGKILL with %d messages at the sink", atKill)

	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// With sluice down, the edge answers 451 and the upstream defers.
	// Wait until nothing moves any more, then account for every message.
	var deferred int
	err := pollFor(3*time.Minute, func() bool {
		up, edgeQ := upstream.Queue(), edge.Queue()
		deferred = 0
		for _, e := range up {
			if e.QueueName != "deferred" {
				return false
			}
			deferred++
		}
		return len(edgeQ) == 0 && sink.Count()+deferred == total
	})
	delivered := uniqueAtSink(t, sink, total)
	if err != nil {
		t.Fatalf("with sluice down: %d messages at the sink, upstream queue %v, edge queue %v; want %d in all",
			delivered, queueSummary(upstream), queueSummary(edge), total)
	}
	if deferred == 0 {
		t.Fatalf("no message was deferred: sluice was killed too late to test anything (%d at the sink)", delivered)
	}
	reasons := map[string]int{}
	for _, e := range upstream.Queue() {
		for _, r := range e.Recipients {
			reasons[firstWords(r.DelayReason, 12)]++
		}
	}
	t.Logf("with sluice down: %d delivered + %d deferred upstream = %d; deferral reasons: %v", delivered, deferred, total, reasons)
	if !strings.Contains(fmt.Sprint(reasons), "4.7.1") && !strings.Contains(fmt.Sprint(reasons), "451") {
		t.Errorf("deferrals do not come from the edge's tempfail: %v", reasons)
	}

	// sluice comes back; the queue is flushed; everything arrives once.
	sl.Start(sluicetest.CountEverything)
	upstream.Flush()
	err = pollFor(5*time.Minute, func() bool {
		return len(upstream.Queue()) == 0 && len(edge.Queue()) == 0 && sink.Count() >= total
	})
	if err != nil {
		t.Fatalf("after restart and flush: %d at the sink, upstream queue %d, edge queue %d",
			sink.Count(), len(upstream.Queue()), len(edge.Queue()))
	}
	if n := uniqueAtSink(t, sink, total); n != total || sink.Count() != total {
		t.Fatalf("after the flush the sink holds %d files, %d distinct messages; want exactly %d", sink.Count(), n, total)
	}
	t.Logf("after restart and flush: all %d messages delivered exactly once", total)
}

// uniqueAtSink checks the sink for lost and duplicated messages: each
// Message-ID at most once, each subject "fault N" at most once. It returns
// the number of distinct messages.
func uniqueAtSink(t *testing.T, sink *mta.Sink, total int) int {
	t.Helper()
	ids := map[string]int{}
	subjects := map[string]int{}
	for _, m := range sink.Messages(t) {
		ids[m.Header.Get("Message-Id")]++
		subjects[m.Header.Get("Subject")]++
	}
	for id, n := range ids {
		if n > 1 || id == "" {
			t.Errorf("Message-ID %q arrived %d times", id, n)
		}
	}
	for s, n := range subjects {
		var i int
		if _, err := fmt.Sscanf(s, "fault %d", &i); err != nil || i < 0 || i >= total {
			t.Errorf("a message the test did not send arrived: subject %q", s)
		}
		if n > 1 {
			t.Errorf("subject %q arrived %d times", s, n)
		}
	}
	return len(ids)
}

// queueSummary counts a Postfix queue's messages by queue name.
func queueSummary(p *mta.Postfix) map[string]int {
	n := map[string]int{}
	for _, e := range p.Queue() {
		n[e.QueueName]++
	}
	return n
}

func firstWords(s string, n int) string {
	f := strings.Fields(s)
	if len(f) > n {
		f = f[:n]
	}
	return strings.Join(f, " ")
}
