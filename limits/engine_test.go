package limits

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"sluice/conf"
	"sluice/limits/counter"
	"sluice/limits/memstore"
	"sluice/policy"
)

// testClock is the time the store reads, moved by hand.
type testClock struct{ ns atomic.Int64 }

func newTestClock() *testClock {
	c := &testClock{}
	c.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *testClock) now() int64              { return c.ns.Load() }
func (c *testClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// testEnv is an engine on a real memory store with a hand-moved clock,
// and the decision step of the milter (policy.Config.Decide).
type testEnv struct {
	t      *testing.T
	e      *Engine
	st     *memstore.Store
	clock  *testClock
	decide policy.Config
}

func newTestEnv(t *testing.T, cfg Config, mode policy.Mode) *testEnv {
	t.Helper()
	clock := newTestClock()
	st, err := memstore.New(memstore.Config{MaxKeys: 10_000}, zaptest.NewLogger(t), memstore.WithClock(clock.now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return newTestEnvOn(t, cfg, mode, st, nil, clock)
}

func newTestEnvOn(t *testing.T, cfg Config, mode policy.Mode, st counter.Store, fallback counter.Store, clock *testClock) *testEnv {
	t.Helper()
	if cfg.Trusted == nil {
		cfg.Trusted = []string{}
	}
	var now func() time.Time
	if clock != nil {
		now = func() time.Time { return time.Unix(0, clock.now()) }
	}
	e, err := New(&cfg, nil, Options{Store: st, Fallback: fallback, Mode: global(mode), Log: zaptest.NewLogger(t), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	pc := policy.Config{Mode: mode}
	pc.Defaults()
	ms, _ := st.(*memstore.Store)
	return &testEnv{t: t, e: e, st: ms, clock: clock, decide: pc}
}

func rules(rs ...Rule) Config { return Config{Rules: rs} }

// global applies a server-wide mode to each rule's own, as the engine does.
func global(mode policy.Mode) func(policy.Mode) policy.Mode {
	return func(m policy.Mode) policy.Mode { return m.Soften(mode) }
}

// step runs one stage as the milter does: check, decide, settle. It
// returns the verdicts and whether the stage was refused.
func (v *testEnv) step(s *Session, st policy.Stage, f *policy.Facts) ([]policy.Verdict, bool) {
	v.t.Helper()
	ctx := context.Background()
	vs, err := v.e.Check(ctx, st, f, s)
	if err != nil {
		v.t.Logf("check: %v", err)
	}
	vs = append([]policy.Verdict(nil), vs...) // the session reuses its own
	d := v.decide.Decide(st, vs, &policy.Env{})
	v.e.Settle(ctx, s, d.Refused())
	return vs, d.Refused()
}

// mail runs MAIL FROM of a new transaction and returns whether it was refused.
func (v *testEnv) mail(s *Session, f *policy.Facts, from string) bool {
	v.t.Helper()
	f.Sender, f.RcptCount, f.Rcpt, f.Size = from, 0, "", 0
	_, refused := v.step(s, policy.StageMail, f)
	return refused
}

// rcpt runs RCPT TO and counts an accepted recipient into the transaction.
func (v *testEnv) rcpt(s *Session, f *policy.Facts, to string) bool {
	v.t.Helper()
	f.Rcpt = to
	_, refused := v.step(s, policy.StageRcpt, f)
	if !refused {
		f.RcptCount++
	}
	return refused
}

// level reads the units counted for rule's window w under dimension key dk.
func (v *testEnv) level(rule string, w int, dk string) int64 {
	v.t.Helper()
	r := v.e.rule(rule)
	if r == nil {
		v.t.Fatalf("no rule %s", rule)
	}
	var q counter.Request
	if r.count == countConcurrent {
		q = counter.Request{Key: []byte(rule + ":c:" + dk), Kind: counter.KindConcurrent, Op: counter.OpPeek, Burst: r.max, Cost: 1}
	} else {
		win := r.windows[w]
		q = counter.Request{Key: []byte(rule + ":" + string(rune('0'+w)) + ":" + dk), Kind: counter.KindRate, Op: counter.OpPeek, Interval: win.interval, Burst: win.burst, Cost: 1}
	}
	reqs := []counter.Request{q}
	if err := v.e.store.Do(context.Background(), reqs); err != nil {
		v.t.Fatal(err)
	}
	return reqs[0].Level
}

func refusals(t *testing.T, n int, f func(i int) bool) string {
	t.Helper()
	var b strings.Builder
	for i := range n {
		if f(i) {
			b.WriteByte('x')
		} else {
			b.WriteByte('.')
		}
	}
	return b.String()
}

var (
	ip1 = netip.MustParseAddr("192.0.2.1")
	ip2 = netip.MustParseAddr("192.0.2.2")
)

func TestCountConnections(t *testing.T) {
	v := newTestEnv(t, rules(Rule{Name: "conn", Count: "connections", Per: "client_ip", Rate: "3/1m"}), policy.ModeEnforce)
	connect := func(ip string) bool {
		s := v.e.NewSession()
		defer v.e.Close(context.Background(), s)
		_, refused := v.step(s, policy.StageConnect, &policy.Facts{ClientIP: netip.MustParseAddr(ip)})
		return refused
	}
	got := refusals(t, 5, func(int) bool { return connect("192.0.2.1") })
	if got != "...xx" {
		t.Errorf("5 connections at 3/1m: %s, want ...xx", got)
	}
	if connect("192.0.2.2") {
		t.Errorf("another client refused")
	}
	// One connection earned back per 20s; a refusal did not count (leaky).
	v.clock.advance(20 * time.Second)
	if got := refusals(t, 2, func(int) bool { return connect("192.0.2.1") }); got != ".x" {
		t.Errorf("after 20s: %s, want .x", got)
	}
}

func TestIPv6Aggregation(t *testing.T) {
	v := newTestEnv(t, rules(
		Rule{Name: "c64", Count: "connections", Per: "client_ip", Rate: "2/1h"},
		Rule{Name: "c48", Count: "connections", Per: "client_ip", Rate: "3/1h", IPv6Prefix: 48, IPv4Prefix: 24},
	), policy.ModeEnforce)
	try := func(ip string) []string {
		s := v.e.NewSession()
		vs, _ := v.step(s, policy.StageConnect, &policy.Facts{ClientIP: netip.MustParseAddr(ip)})
		var names []string
		for _, x := range vs {
			names = append(names, x.Source+" "+x.Key)
		}
		return names
	}
	// Rotating inside one /64 does not escape the /64 limit.
	if got := try("2001:db8:1:1::1"); got != nil {
		t.Fatalf("first: %v", got)
	}
	if got := try("2001:db8:1:1::2"); got != nil {
		t.Fatalf("second: %v", got)
	}
	if got := try("2001:db8:1:1:ffff:ffff:ffff:ffff"); len(got) != 1 || got[0] != "c64 client_ip:2001:db8:1:1::/64" {
		t.Fatalf("third address in the /64: %v, want c64 on the /64", got)
	}
	// Another /64 of the same /48 is counted apart by c64, together by c48.
	if got := try("2001:db8:1:2::1"); got != nil {
		t.Fatalf("another /64: %v", got)
	}
	if got := try("2001:db8:1:3::1"); len(got) != 1 || got[0] != "c48 client_ip:2001:db8:1::/48" {
		t.Fatalf("a 3rd /64 of the /48: %v, want c48", got)
	}
	// IPv4 by /24 for c48, /32 for c64.
	try("198.51.100.1")
	try("198.51.100.2")
	try("198.51.100.3")
	if got := try("198.51.100.4"); len(got) != 1 || got[0] != "c48 client_ip:198.51.100.0/24" {
		t.Fatalf("4th address of the /24: %v", got)
	}
}

func TestConcurrent(t *testing.T) {
	v := newTestEnv(t, rules(Rule{Name: "conc", Count: "concurrent", Per: "client_ip", Max: 2}), policy.ModeEnforce)
	ctx := context.Background()
	open := func(ip netip.Addr) (*Session, bool) {
		s := v.e.NewSession()
		_, refused := v.step(s, policy.StageConnect, &policy.Facts{ClientIP: ip})
		return s, refused
	}
	a, r1 := open(ip1)
	b, r2 := open(ip1)
	c, r3 := open(ip1)
	if r1 || r2 || !r3 {
		t.Fatalf("3 sessions at max 2: refused %v %v %v, want only the 3rd", r1, r2, r3)
	}
	if n := v.level("conc", 0, "client_ip:192.0.2.1"); n != 2 {
		t.Errorf("slots held %d, want 2 (a refused session holds none)", n)
	}
	v.e.Close(ctx, c) // the refused one: nothing to give back
	if n := v.level("conc", 0, "client_ip:192.0.2.1"); n != 2 {
		t.Errorf("slots held %d after the refused session closed, want 2", n)
	}
	if _, refused := open(ip2); refused {
		t.Errorf("another client refused")
	}
	v.e.Close(ctx, a)
	d, r4 := open(ip1)
	if r4 {
		t.Errorf("a session after one closed was refused")
	}
	v.e.Close(ctx, b)
	v.e.Close(ctx, d)
	if n := v.level("conc", 0, "client_ip:192.0.2.1"); n != 0 {
		t.Errorf("slots held %d after every session closed, want 0", n)
	}
	// Time does not free a slot; only Close does.
	e, _ := open(ip1)
	f, _ := open(ip1)
	v.clock.advance(24 * time.Hour)
	if _, refused := open(ip1); !refused {
		t.Errorf("a slot expired with time")
	}
	v.e.Close(ctx, e)
	v.e.Close(ctx, f)
}

func TestMessagesPerSender(t *testing.T) {
	v := newTestEnv(t, rules(Rule{Name: "m", Count: "messages", Per: "sender", Rate: "3/1h", StripExtension: true}), policy.ModeEnforce)
	s := v.e.NewSession()
	var f policy.Facts
	// Case and extension variants are one sender.
	senders := []string{"alice@example.org", "Alice@Example.org", "alice+x@example.org", "ALICE@EXAMPLE.ORG", "bob@example.org", ""}
	var got []bool
	for _, a := range senders {
		got = append(got, v.mail(s, &f, a))
	}
	want := []bool{false, false, false, true, false, false}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("MAIL FROM:<%s>: refused %v, want %v", senders[i], got[i], want[i])
		}
	}
	if n := v.level("m", 0, "sender:alice@example.org"); n != 3 {
		t.Errorf("alice's count %d, want 3", n)
	}
}

func TestNullSender(t *testing.T) {
	v := newTestEnv(t, rules(
		Rule{Name: "skip", Count: "messages", Per: "sender", Rate: "1/1h"},
		Rule{Name: "count", Count: "messages", Per: "sender_domain", Rate: "2/1h", NullSender: "count"},
		Rule{Name: "ip", Count: "messages", Per: "client_ip", Rate: "100/1h"},
	), policy.ModeEnforce)
	s := v.e.NewSession()
	f := policy.Facts{ClientIP: ip1}
	got := refusals(t, 4, func(int) bool { return v.mail(s, &f, "") })
	if got != "..xx" {
		t.Errorf("4 bounces: %s, want ..xx (skip ignores them, count stops at 2)", got)
	}
	if n := v.level("skip", 0, "sender:<>"); n != 0 {
		t.Errorf("the skip rule counted %d bounces", n)
	}
	if n := v.level("count", 0, "sender_domain:<>"); n != 2 {
		t.Errorf("the count rule counted %d bounces, want 2", n)
	}
	if n := v.level("ip", 0, "client_ip:192.0.2.1"); n != 2 {
		t.Errorf("the per-IP rule counted %d bounces, want 2 (the accepted ones)", n)
	}
}

func TestRecipients(t *testing.T) {
	v := newTestEnv(t, rules(
		Rule{Name: "per-user", Count: "recipients", Per: "sasl_user", Rate: "3/1h"},
		Rule{Name: "per-user-domain", Count: "recipients", Per: []any{"sasl_user", "rcpt_domain"}, Rate: "2/1h"},
	), policy.ModeEnforce)
	s := v.e.NewSession()
	f := policy.Facts{ClientIP: ip1, SASLUser: "bob"}
	v.mail(s, &f, "bob@example.org")
	rcpts := []string{"a@gmail.com", "b@GMAIL.com", "c@gmail.com", "d@example.net", "e@example.net"}
	got := refusals(t, len(rcpts), func(i int) bool { return v.rcpt(s, &f, rcpts[i]) })
	if got != "..x.x" {
		t.Errorf("recipients: %s, want ..x.x (2 per domain, 3 in all)", got)
	}
	// Unauthenticated mail is not counted per sasl_user.
	anon := policy.Facts{ClientIP: ip2}
	v.mail(s, &anon, "x@example.org")
	if got := refusals(t, 5, func(int) bool { return v.rcpt(s, &anon, "z@gmail.com") }); got != "....." {
		t.Errorf("unauthenticated: %s", got)
	}
}

func TestBytes(t *testing.T) {
	v := newTestEnv(t, rules(Rule{Name: "b", Count: "bytes", Per: "sender", Rate: "10KB/1h"}), policy.ModeEnforce)
	s := v.e.NewSession()
	f := policy.Facts{}
	data := func(size int64) bool {
		v.mail(s, &f, "alice@example.org")
		f.Size = size
		_, refused := v.step(s, policy.StageData, &f)
		return refused
	}
	for i, tc := range []struct {
		size    int64
		refused bool
		level   int64
	}{
		{4000, false, 4000},
		{4000, false, 8000},
		{4000, true, 8000},   // 12000 > 10000: refused, not added
		{2000, false, 10000}, // exactly the limit
		{1, true, 10000},
	} {
		if got := data(tc.size); got != tc.refused {
			t.Errorf("message %d of %d bytes: refused %v, want %v", i+1, tc.size, got, tc.refused)
		}
		if n := v.level("b", 0, "sender:alice@example.org"); n != tc.level {
			t.Errorf("after message %d: %d bytes counted, want %d", i+1, n, tc.level)
		}
	}
	// A message larger than the whole window takes the whole window: it
	// passes when the window is empty (else it could never pass, and its
	// client would retry it for days), and nothing else passes until the
	// window drains.
	f2 := policy.Facts{}
	v.mail(s, &f2, "big@example.org")
	f2.Size = 20000
	if vs, refused := v.step(s, policy.StageData, &f2); refused {
		t.Errorf("a 20000-byte message at 10KB/1h into an empty window: refused %+v", vs)
	}
	if n := v.level("b", 0, "sender:big@example.org"); n != 10000 {
		t.Errorf("the big message counted %d bytes, want the whole window (10000)", n)
	}
	v.mail(s, &f2, "big@example.org")
	f2.Size = 100
	if vs, refused := v.step(s, policy.StageData, &f2); !refused || len(vs) != 1 || vs[0].RetryAfter <= 0 {
		t.Errorf("after a window-sized message: %v %+v, want refused with a retry-after", refused, vs)
	}
	v.mail(s, &f, "alice@example.org")
	f.Size = 20000
	if vs, refused := v.step(s, policy.StageData, &f); !refused || len(vs) != 1 || !strings.Contains(vs[0].Detail, "count=") {
		t.Errorf("a 20000-byte message into a full window: %v %+v", refused, vs)
	}
	// Bytes are not counted before the end of the message.
	if v.e.Needs(policy.StageMail) || !v.e.Needs(policy.StageData) {
		t.Errorf("Needs: mail %v data %v, want false true", v.e.Needs(policy.StageMail), v.e.Needs(policy.StageData))
	}
}

func TestMaxRcptPerMessage(t *testing.T) {
	v := newTestEnv(t, rules(Rule{Name: "cap", MaxRcptPerMessage: 3}), policy.ModeEnforce)
	s := v.e.NewSession()
	f := policy.Facts{ClientIP: ip1}
	for msg := range 2 {
		v.mail(s, &f, "alice@example.org")
		got := refusals(t, 5, func(i int) bool { return v.rcpt(s, &f, "r@example.net") })
		if got != "...xx" {
			t.Errorf("message %d: %s, want ...xx", msg+1, got)
		}
	}
	f.RcptCount = 3
	vs, err := v.e.Check(context.Background(), policy.StageRcpt, &f, s)
	if err != nil || len(vs) != 1 {
		t.Fatalf("4th recipient: %v %v", vs, err)
	}
	d := v.decide.Decide(policy.StageRcpt, vs, &policy.Env{})
	if d.Reply != "452 4.5.3 Too many recipients (3 recipients a message)" {
		t.Errorf("reply %q", d.Reply)
	}
	if vs[0].Detail != "rcpt=4" || vs[0].Limit != "3 recipients a message" {
		t.Errorf("verdict %+v", vs[0])
	}
	v.e.Settle(context.Background(), s, true)
	if v.st.Len() != 0 {
		t.Errorf("a per-message cap put %d keys in the store", v.st.Len())
	}
	// With a rate too, the cap keeps its own reply and limit.
	w := newTestEnv(t, rules(Rule{Name: "both", Count: "recipients", Per: "sender", Rate: "100/1h", MaxRcptPerMessage: 2, Action: policy.MustAction("reject")}), policy.ModeEnforce)
	f = policy.Facts{Sender: "a@b", RcptCount: 2}
	vs, _ = w.e.Check(context.Background(), policy.StageRcpt, &f, w.e.NewSession())
	if len(vs) != 1 || vs[0].Limit != "2 recipients a message" || vs[0].Detail != "rcpt=3" {
		t.Errorf("cap with a rate: %+v", vs)
	}
}

func TestMultiWindow(t *testing.T) {
	v := newTestEnv(t, rules(Rule{Name: "mw", Count: "messages", Per: "sender", Rate: []any{"2/1m", "3/1h"}}), policy.ModeEnforce)
	s := v.e.NewSession()
	f := policy.Facts{}
	send := func() (bool, []policy.Verdict) {
		f.Sender = "alice@example.org"
		vs, refused := v.step(s, policy.StageMail, &f)
		return refused, vs
	}
	if r1, _ := send(); r1 {
		t.Fatal("1st refused")
	}
	if r2, _ := send(); r2 {
		t.Fatal("2nd refused")
	}
	r3, vs := send()
	if !r3 || len(vs) != 1 || vs[0].RetryAfter <= 0 || vs[0].RetryAfter > 30*time.Second {
		t.Fatalf("3rd within a minute: refused %v %+v, want the 1m window, retry within 30s", r3, vs)
	}
	v.clock.advance(time.Minute)
	if r, _ := send(); r {
		t.Fatal("3rd after a minute refused")
	}
	v.clock.advance(time.Minute)
	r4, vs := send()
	if !r4 || len(vs) != 1 || vs[0].RetryAfter < 15*time.Minute {
		t.Fatalf("4th within the hour: refused %v %+v, want the 1h window with a long retry", r4, vs)
	}
	// The refused event added to neither window.
	if a, b := v.level("mw", 0, "sender:alice@example.org"), v.level("mw", 1, "sender:alice@example.org"); a != 0 || b != 3 {
		t.Errorf("levels %d and %d, want 0 (drained) and 3", a, b)
	}
	if vs[0].Limit != "2/1m,3/1h" {
		t.Errorf("limit %q", vs[0].Limit)
	}
}

func TestLeakyAndStrict(t *testing.T) {
	for _, strict := range []bool{false, true} {
		v := newTestEnv(t, rules(Rule{Name: "m", Count: "messages", Per: "sender", Rate: "2/1m", Strict: strict}), policy.ModeEnforce)
		s := v.e.NewSession()
		f := policy.Facts{}
		// 2 admitted, then 5 refused attempts.
		got := refusals(t, 7, func(int) bool { return v.mail(s, &f, "a@b") })
		if got != "..xxxxx" {
			t.Errorf("strict=%v: %s", strict, got)
		}
		v.clock.advance(30 * time.Second) // one earned back
		next := v.mail(s, &f, "a@b")
		if next != strict {
			t.Errorf("strict=%v: after one interval refused %v, want %v (strict counts the refused attempts)", strict, next, strict)
		}
		want := int64(2)
		if strict {
			want = 2 + 5 + 1 - 1 // every attempt counted, one earned back
		}
		if n := v.level("m", 0, "sender:a@b"); n != want {
			t.Errorf("strict=%v: level %d, want %d", strict, n, want)
		}
	}
}

func TestCountOnAccepted(t *testing.T) {
	v := newTestEnv(t, rules(
		Rule{Name: "acc", Count: "recipients", Per: "sender", Rate: "3/1h", CountOn: "accepted"},
		Rule{Name: "att", Count: "recipients", Per: "sender", Rate: "100/1h"},
	), policy.ModeEnforce)
	ctx := context.Background()
	s := v.e.NewSession()
	f := policy.Facts{}
	level := func() (int64, int64) {
		return v.level("acc", 0, "sender:a@b"), v.level("att", 0, "sender:a@b")
	}
	// An aborted transaction gives its recipients back to the accepted
	// rule, not to the attempt rule.
	v.mail(s, &f, "a@b")
	v.rcpt(s, &f, "x@y")
	v.rcpt(s, &f, "x@z")
	if a, b := level(); a != 2 || b != 2 {
		t.Fatalf("during the transaction: %d %d, want 2 2 (reserved)", a, b)
	}
	v.e.EndMessage(ctx, s, false)
	if a, b := level(); a != 0 || b != 2 {
		t.Fatalf("after abort: %d %d, want 0 2", a, b)
	}
	// Reservations count against the limit while they are pending.
	v.mail(s, &f, "a@b")
	got := refusals(t, 4, func(int) bool { return v.rcpt(s, &f, "x@y") })
	if got != "...x" {
		t.Errorf("4 recipients at 3/1h: %s", got)
	}
	v.e.EndMessage(ctx, s, true)
	if a, _ := level(); a != 3 {
		t.Errorf("after an accepted message: %d, want 3", a)
	}
	v.e.EndMessage(ctx, s, false) // a later abort gives nothing back
	if a, _ := level(); a != 3 {
		t.Errorf("an abort after acceptance gave back: %d, want 3", a)
	}
	// Refused at a later stage (here the recipient by another rule)
	// gives back what the stage took.
	v.clock.advance(time.Hour)
	v.mail(s, &f, "a@b")
	v.rcpt(s, &f, "x@y")
	_, refused := v.step(s, policy.StageRcpt, &f)
	if refused {
		t.Fatal("refused")
	}
	// A session that ends in the middle gives its reservations back.
	v.e.Close(ctx, s)
	if a, _ := level(); a != 0 {
		t.Errorf("after Close mid-transaction: %d, want 0", a)
	}
}

func TestCountOnAcceptedMessagesRefusedAtData(t *testing.T) {
	v := newTestEnv(t, rules(
		Rule{Name: "acc", Count: "messages", Per: "sender", Rate: "2/1h", CountOn: "accepted"},
		Rule{Name: "size", Count: "bytes", Per: "sender", Rate: "1000/1h"},
	), policy.ModeEnforce)
	ctx := context.Background()
	s := v.e.NewSession()
	f := policy.Facts{}
	// One accepted message fills most of the bytes window.
	v.mail(s, &f, "a@b")
	f.Size = 900
	if _, refused := v.step(s, policy.StageData, &f); refused {
		t.Fatal("the first message was refused")
	}
	v.e.EndMessage(ctx, s, true)
	for range 5 {
		v.mail(s, &f, "a@b")
		f.Size = 500 // over what is left: refused at end of message
		_, refused := v.step(s, policy.StageData, &f)
		if !refused {
			t.Fatal("a message over the bytes limit was accepted")
		}
		v.e.EndMessage(ctx, s, false)
	}
	if n := v.level("acc", 0, "sender:a@b"); n != 1 {
		t.Errorf("1 accepted and 5 refused at end of message left %d counted, want 1", n)
	}
}

func TestModes(t *testing.T) {
	for _, tc := range []struct {
		name       string
		global     policy.Mode
		ruleMode   string
		wantRefuse bool
	}{
		{"enforce", policy.ModeEnforce, "", true},
		{"rule in tag mode", policy.ModeEnforce, "tag", false},
		{"rule in dry-run", policy.ModeEnforce, "dry-run", false},
		{"server in tag mode", policy.ModeTag, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newTestEnv(t, rules(
				Rule{Name: "m", Count: "messages", Per: "sender", Rate: "1/1h", Mode: policy.MustMode(tc.ruleMode)},
				Rule{Name: "other", Count: "messages", Per: "client_ip", Rate: "100/1h"},
			), tc.global)
			s := v.e.NewSession()
			f := policy.Facts{ClientIP: ip1}
			v.mail(s, &f, "a@b")
			f.Sender = "a@b"
			vs, refused := v.step(s, policy.StageMail, &f)
			if refused != tc.wantRefuse || len(vs) != 1 || vs[0].Source != "m" {
				t.Errorf("second message: refused %v, verdicts %+v", refused, vs)
			}
			// Not refused: the other rule counted the message; the rule
			// over its limit did not (leaky, as enforce would be).
			wantOther := int64(2)
			if tc.wantRefuse {
				wantOther = 1
			}
			if n := v.level("other", 0, "client_ip:192.0.2.1"); n != wantOther {
				t.Errorf("other rule's count %d, want %d", n, wantOther)
			}
			if n := v.level("m", 0, "sender:a@b"); n != 1 {
				t.Errorf("the crossed rule's count %d, want 1", n)
			}
		})
	}
}

func TestTrustedExceptMatchFinal(t *testing.T) {
	yes := true
	v := newTestEnv(t, Config{
		Trusted: []string{"10.0.0.0/8"},
		Rules: []Rule{
			{Name: "all", Count: "messages", Per: "client_ip", Rate: "1/1h"},
			{Name: "trusted-too", Count: "messages", Per: "client_ip", Rate: "1/1h", ApplyToTrusted: true},
			{Name: "except", Count: "messages", Per: "client_ip", Rate: "1/1h", Except: []string{"192.0.2.9", "lists.example.org", "bulk@example.net", "sasl_user:RelayUser"}},
			{Name: "submission", Count: "messages", Per: "client_ip", Rate: "1/1h", Match: Match{Listener: []string{"submission"}}},
			{Name: "authed", Count: "messages", Per: "client_ip", Rate: "1/1h", Match: Match{Authenticated: &yes}},
			{Name: "from-net", Count: "messages", Per: "client_ip", Rate: "1/1h", Match: Match{Client: []string{"198.51.100.0/24"}}},
			{Name: "from-dom", Count: "messages", Per: "client_ip", Rate: "1/1h", Match: Match{SenderDomain: []string{".example.com"}}},
			{Name: "helo-re", Count: "messages", Per: "client_ip", Rate: "1/1h", Match: Match{Helo: `^dyn-`}},
			{Name: "sender-re", Count: "messages", Per: "client_ip", Rate: "1/1h", Match: Match{Sender: `^noreply@`}},
			{Name: "to-dom", Count: "recipients", Per: "client_ip", Rate: "1/1h", Match: Match{RcptDomain: []string{"gmail.com"}}},
		},
	}, policy.ModeEnforce)
	// Which rules count the second identical event (the first fills each
	// rule's 1/1h).
	crossed := func(f policy.Facts, st policy.Stage) string {
		s := v.e.NewSession()
		f.Trusted = v.e.Trusted(f.ClientIP)
		v.e.Check(context.Background(), st, &f, s)
		v.e.Settle(context.Background(), s, false)
		vs, _ := v.e.Check(context.Background(), st, &f, s)
		v.e.Settle(context.Background(), s, true)
		var names []string
		for _, x := range vs {
			names = append(names, x.Source)
		}
		return strings.Join(names, " ")
	}
	n := 0
	ip := func() netip.Addr { n++; return netip.AddrFrom4([4]byte{203, 0, 113, byte(n)}) }
	for _, tc := range []struct {
		name string
		f    policy.Facts
		st   policy.Stage
		want string
	}{
		{"plain", policy.Facts{ClientIP: ip(), Sender: "a@b"}, policy.StageMail, "all trusted-too except"},
		{"trusted", policy.Facts{ClientIP: netip.MustParseAddr("10.1.2.3"), Sender: "a@b"}, policy.StageMail, "trusted-too"},
		{"except ip", policy.Facts{ClientIP: netip.MustParseAddr("192.0.2.9"), Sender: "a@b"}, policy.StageMail, "all trusted-too"},
		{"except sender domain", policy.Facts{ClientIP: ip(), Sender: "Owner@Lists.Example.ORG"}, policy.StageMail, "all trusted-too"},
		{"except sender", policy.Facts{ClientIP: ip(), Sender: "<bulk@example.net>"}, policy.StageMail, "all trusted-too"},
		{"except sasl user", policy.Facts{ClientIP: ip(), Sender: "a@b", SASLUser: "relayuser"}, policy.StageMail, "all trusted-too authed"},
		{"listener", policy.Facts{ClientIP: ip(), Sender: "a@b", Listener: "submission"}, policy.StageMail, "all trusted-too except submission"},
		{"authenticated", policy.Facts{ClientIP: ip(), Sender: "a@b", SASLUser: "u"}, policy.StageMail, "all trusted-too except authed"},
		{"client net", policy.Facts{ClientIP: netip.MustParseAddr("198.51.100.7"), Sender: "a@b"}, policy.StageMail, "all trusted-too except from-net"},
		{"sender domain", policy.Facts{ClientIP: ip(), Sender: "a@mail.example.com"}, policy.StageMail, "all trusted-too except from-dom"},
		{"helo", policy.Facts{ClientIP: ip(), Sender: "a@b", Helo: "dyn-1-2-3"}, policy.StageMail, "all trusted-too except helo-re"},
		{"sender regexp", policy.Facts{ClientIP: ip(), Sender: "noreply@x"}, policy.StageMail, "all trusted-too except sender-re"},
		{"rcpt domain", policy.Facts{ClientIP: ip(), Sender: "a@b", Rcpt: "x@gmail.com"}, policy.StageRcpt, "to-dom"},
		{"other rcpt domain", policy.Facts{ClientIP: ip(), Sender: "a@b", Rcpt: "x@example.net"}, policy.StageRcpt, ""},
	} {
		if got := crossed(tc.f, tc.st); got != tc.want {
			t.Errorf("%s: crossed %q, want %q", tc.name, got, tc.want)
		}
	}

	// final: a matching final rule stops the rules after it.
	w := newTestEnv(t, rules(
		Rule{Name: "vip", Count: "messages", Per: "sender", Rate: "100/1h", Final: true, Match: Match{SenderDomain: []string{"vip.example"}}},
		Rule{Name: "everyone", Count: "messages", Per: "sender", Rate: "1/1h"},
	), policy.ModeEnforce)
	s := w.e.NewSession()
	f := policy.Facts{}
	if got := refusals(t, 3, func(int) bool { return w.mail(s, &f, "boss@vip.example") }); got != "..." {
		t.Errorf("final rule: %s, want ...", got)
	}
	if got := refusals(t, 2, func(int) bool { return w.mail(s, &f, "joe@example.org") }); got != ".x" {
		t.Errorf("other senders: %s, want .x", got)
	}
}

func TestExemptions(t *testing.T) {
	v := newTestEnv(t, rules(
		Rule{Name: "m", Count: "messages", Per: "sender", Rate: "1/1h"},
		Rule{Name: "r", Count: "recipients", Per: []any{"sender", "rcpt_domain"}, Rate: "1/1h"},
	), policy.ModeEnforce)
	ctx := context.Background()
	until := time.Unix(0, v.clock.now()).Add(time.Hour)
	if err := v.st.SetAllow(ctx, "sender:alice@example.org", until); err != nil {
		t.Fatal(err)
	}
	// Exemptions are read from the store in the background; wait for them.
	deadline := time.Now().Add(5 * time.Second)
	for len(v.e.exemptions()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the engine never read the exemption")
		}
		time.Sleep(time.Millisecond)
	}
	s := v.e.NewSession()
	f := policy.Facts{}
	if got := refusals(t, 3, func(int) bool { return v.mail(s, &f, "Alice@Example.org") }); got != "..." {
		t.Errorf("exempt sender: %s", got)
	}
	// The composite rule's key has the exempted sender as one part.
	if got := refusals(t, 3, func(int) bool { return v.rcpt(s, &f, "x@gmail.com") }); got != "..." {
		t.Errorf("exempt sender in a composite key: %s", got)
	}
	if got := refusals(t, 2, func(int) bool { return v.mail(s, &f, "bob@example.org") }); got != ".x" {
		t.Errorf("another sender: %s", got)
	}
}

// failingStore fails every Do while fail is set, and counts the refunds
// it is sent.
type failingStore struct {
	counter.Store
	fail    atomic.Bool
	mu      sync.Mutex
	refunds int
}

func (f *failingStore) Do(ctx context.Context, reqs []counter.Request) error {
	f.mu.Lock()
	for _, q := range reqs {
		if q.Op == counter.OpRefund {
			f.refunds++
		}
	}
	f.mu.Unlock()
	if f.fail.Load() {
		return errors.New("store unreachable")
	}
	return f.Store.Do(ctx, reqs)
}

func TestStoreErrors(t *testing.T) {
	newStore := func(clock *testClock) *memstore.Store {
		st, err := memstore.New(memstore.Config{MaxKeys: 1000}, nil, memstore.WithClock(clock.now))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	clock := newTestClock()
	main := &failingStore{Store: newStore(clock)}
	local := newStore(clock)
	v := newTestEnvOn(t, Config{
		Rules: []Rule{
			{Name: "allow", Count: "concurrent", Per: "client_ip", Max: 1},
			{Name: "tempfail", Count: "messages", Per: "sender", Rate: "100/1h", OnStoreError: "tempfail", Match: Match{SenderDomain: []string{"t.example"}}},
			{Name: "local", Count: "messages", Per: "client_ip", Rate: "1/1h", OnStoreError: "local", CountOn: "accepted"},
		},
	}, policy.ModeEnforce, main, local, clock)
	ctx := context.Background()
	main.fail.Store(true)

	// allow: the slot is let through uncounted, and nothing is given back
	// at Close for it (that would free someone else's slot).
	s := v.e.NewSession()
	f := policy.Facts{ClientIP: ip1}
	if _, refused := v.step(s, policy.StageConnect, &f); refused {
		t.Fatal("connect refused with on_store_error = allow")
	}
	v.e.Close(ctx, s)
	if main.refunds != 0 {
		t.Errorf("%d refunds sent for a slot never taken", main.refunds)
	}

	// tempfail: refused, with a verdict, whatever the limit.
	s = v.e.NewSession()
	f = policy.Facts{ClientIP: ip2, Sender: "a@t.example"}
	vs, refused := v.step(s, policy.StageMail, &f)
	if !refused || len(vs) == 0 || vs[0].Source != "tempfail" {
		t.Errorf("on_store_error = tempfail: refused %v %+v", refused, vs)
	}

	// local: the fallback store counts (1/1h), and the reservation of an
	// aborted message goes back to it.
	for i := range 2 {
		f = policy.Facts{ClientIP: ip1}
		if v.mail(s, &f, "b@example.org") {
			t.Fatalf("message %d refused: the reservation was not given back to the fallback", i)
		}
		v.e.EndMessage(ctx, s, false)
	}
	v.mail(s, &f, "b@example.org")
	v.e.EndMessage(ctx, s, true)
	if !v.mail(s, &f, "b@example.org") {
		t.Errorf("the fallback store did not count: 2nd accepted message at 1/1h went through")
	}
	if main.refunds != 0 {
		t.Errorf("the failing store was sent %d refunds for counts it never took", main.refunds)
	}
}

// TestCheckAllocs: the common path allocates nothing, on every stage.
func TestCheckAllocs(t *testing.T) {
	v := newTestEnv(t, rules(
		Rule{Name: "conc", Count: "concurrent", Per: "client_ip", Max: 1000},
		Rule{Name: "m", Count: "messages", Per: []any{"client_ip", "sender"}, Rate: []any{"1000000/1s", "100000000/1d"}},
		Rule{Name: "r", Count: "recipients", Per: []any{"sasl_user", "rcpt_domain"}, Rate: "1000000/1s", MaxRcptPerMessage: 1000},
		Rule{Name: "b", Count: "bytes", Per: "sender_domain", Rate: "1GB/1s"},
	), policy.ModeEnforce)
	ctx := context.Background()
	s := v.e.NewSession()
	f := policy.Facts{ClientIP: ip1, Sender: "Alice@Example.org", SASLUser: "alice", Rcpt: "bob@example.net", Size: 1234}
	for _, st := range []policy.Stage{policy.StageMail, policy.StageRcpt, policy.StageData} {
		allocs := testing.AllocsPerRun(200, func() {
			if vs, _ := v.e.Check(ctx, st, &f, s); vs != nil {
				t.Fatalf("%s: %+v", st, vs)
			}
			v.e.Settle(ctx, s, false)
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per check", st, allocs)
		}
	}
}

// TestParallelSessions: sessions on many goroutines share counters
// exactly.
func TestParallelSessions(t *testing.T) {
	v := newTestEnv(t, rules(Rule{Name: "m", Count: "messages", Per: "sender", Rate: "1000/1h"}), policy.ModeEnforce)
	var wg sync.WaitGroup
	var admitted atomic.Int64
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := v.e.NewSession()
			f := policy.Facts{}
			for range 200 {
				f.Sender = "a@b"
				vs, err := v.e.Check(context.Background(), policy.StageMail, &f, s)
				if err != nil {
					t.Error(err)
				}
				if vs == nil {
					admitted.Add(1)
				}
				v.e.Settle(context.Background(), s, vs != nil)
			}
		}()
	}
	wg.Wait()
	if n := admitted.Load(); n != 1000 {
		t.Errorf("admitted %d of 1600 at 1000/1h, want 1000", n)
	}
}

// A rule that does not refuse (here in tag mode) still counts as crossed
// in all its windows: the event is not added to the window that had room,
// as it would not be had the rule refused it.
func TestMultiWindowCrossedInTagMode(t *testing.T) {
	for _, tc := range []struct {
		name, mode, action string
	}{{"tag mode", "tag", ""}, {"action tag", "", "tag"}, {"action hold", "", "hold"}, {"dry-run", "dry-run", ""}} {
		t.Run(tc.name, func(t *testing.T) {
			v := newTestEnv(t, rules(Rule{Name: "mw", Count: "messages", Per: "sender", Rate: []any{"2/1m", "10/1h"}, Mode: policy.MustMode(tc.mode), Action: policy.MustAction(tc.action)}), policy.ModeEnforce)
			s := v.e.NewSession()
			f := policy.Facts{}
			var crossed []bool
			for range 5 {
				f.Sender = "a@b"
				vs, refused := v.step(s, policy.StageMail, &f)
				if refused {
					t.Fatal("a rule that does not refuse refused")
				}
				crossed = append(crossed, vs != nil)
			}
			if crossed[1] || !crossed[2] || !crossed[4] {
				t.Errorf("crossed %v, want the 3rd to 5th", crossed)
			}
			if a, b := v.level("mw", 0, "sender:a@b"), v.level("mw", 1, "sender:a@b"); a != 2 || b != 2 {
				t.Errorf("levels %d and %d, want 2 and 2 (the crossing events counted in neither window)", a, b)
			}
		})
	}
}

// burst sets how many pass at once; the rate then refills one per
// period/N.
func TestBurst(t *testing.T) {
	v := newTestEnv(t, rules(Rule{Name: "b", Count: "messages", Per: "sender", Rate: "10/1h", Burst: 3}), policy.ModeEnforce)
	s := v.e.NewSession()
	f := policy.Facts{}
	if got := refusals(t, 5, func(int) bool { return v.mail(s, &f, "a@b") }); got != "...xx" {
		t.Errorf("burst 3: %s, want ...xx", got)
	}
	v.clock.advance(6 * time.Minute) // one unit of 10/1h
	if got := refusals(t, 2, func(int) bool { return v.mail(s, &f, "a@b") }); got != ".x" {
		t.Errorf("after 6m: %s, want .x", got)
	}
	v.clock.advance(time.Hour)
	if got := refusals(t, 4, func(int) bool { return v.mail(s, &f, "a@b") }); got != "...x" {
		t.Errorf("after an hour idle: %s, want ...x (never more than the burst at once)", got)
	}
}

// A crossing that was not counted says what the window holds and what
// the event would add — the same for every crossing while the window is
// full, as held messages are not counted — and a strict rule's crossing,
// which is counted, says the count with it.
func TestCrossingDetail(t *testing.T) {
	v := newTestEnv(t, rules(
		Rule{Name: "held", Count: "messages", Per: "sender", Rate: "2/1h", Action: policy.MustAction("hold")},
		Rule{Name: "strict", Count: "messages", Per: "client_ip", Rate: "2/1h", Action: policy.MustAction("tag"), Strict: true},
	), policy.ModeEnforce)
	s := v.e.NewSession()
	f := policy.Facts{ClientIP: ip1}
	var held, strict []string
	for range 5 {
		f.Sender = "script@example.org"
		vs, _ := v.step(s, policy.StageMail, &f)
		for _, x := range vs {
			switch x.Source {
			case "held":
				held = append(held, x.Detail)
			case "strict":
				strict = append(strict, x.Detail)
			}
		}
	}
	if got := strings.Join(held, " "); got != "count=2+1 count=2+1 count=2+1" {
		t.Errorf("held crossings: %q, want count=2+1 each time", got)
	}
	if got := strings.Join(strict, " "); got != "count=3 count=4 count=5" {
		t.Errorf("strict crossings: %q, want a count that rises", got)
	}
}

// action = "delay" with no limit is a tarpit: every event the rule
// applies to is delayed, and nothing is counted.
func TestTarpit(t *testing.T) {
	v := newTestEnv(t, rules(
		Rule{Name: "slow-class", Count: "connections", Action: policy.MustAction("delay"), Delay: conf.Duration(15 * time.Second),
			Match: Match{Client: []string{"203.0.113.0/24"}}},
		Rule{Name: "slow-senders", Count: "messages", Per: "sender", Action: policy.MustAction("delay"), Delay: conf.Duration(time.Second)},
	), policy.ModeEnforce)
	s := v.e.NewSession()
	for i, tc := range []struct {
		ip    string
		delay time.Duration
	}{{"203.0.113.7", 15 * time.Second}, {"203.0.113.7", 15 * time.Second}, {"198.51.100.7", 0}} {
		f := policy.Facts{ClientIP: netip.MustParseAddr(tc.ip)}
		vs, err := v.e.Check(context.Background(), policy.StageConnect, &f, s)
		d := v.decide.Decide(policy.StageConnect, vs, &policy.Env{})
		v.e.Settle(context.Background(), s, false)
		if err != nil || d.Refused() || d.Delay != tc.delay {
			t.Errorf("connection %d from %s: %+v %v; want a pause of %v", i+1, tc.ip, d, err, tc.delay)
		}
	}
	f := policy.Facts{ClientIP: ip1, Sender: "a@example.org"}
	vs, _ := v.e.Check(context.Background(), policy.StageMail, &f, s)
	if len(vs) != 1 || vs[0].Key != "sender:a@example.org" || vs[0].Limit != "every message" || vs[0].Detail != "tarpit" {
		t.Errorf("tarpit per sender: %+v", vs)
	}
	v.e.Settle(context.Background(), s, false)
	if v.st.Len() != 0 {
		t.Errorf("a tarpit put %d keys in the store", v.st.Len())
	}
	for _, r := range []Rule{
		{Name: "x", Count: "messages", Action: policy.MustAction("delay")},
		{Name: "x", Count: "messages", Action: policy.MustAction("delay"), Delay: conf.Duration(time.Second), Burst: 3},
		{Name: "x", Count: "messages", Action: policy.MustAction("tempfail")},
	} {
		if _, err := compileRule(&r, nil, nil); err == nil {
			t.Errorf("%+v compiled", r)
		}
	}
}
