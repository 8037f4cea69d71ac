package redisstore

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"sluice/conf"
	"sluice/guard"
	"sluice/limits/counter"
	"sluice/limits/counter/countertest"
	"sluice/limits/redisstore/redistest"
)

// hostileReplies are replies no Redis sends; the fake answers every
// command but the handshake with one of them. refused says whether the
// store must refuse it as breaking its bounds (the others are errors of
// another kind: a read that times out). split runs it byte by byte too:
// for short replies whose first line is the one refused (with the others,
// go-redis may give up on its own before the rest arrives). timeout is
// the store's: short where it is waited for, long for the deep nesting,
// which takes a while to overflow go-redis's stack.
var hostileReplies = []struct {
	name           string
	reply          string
	refused, split bool
	timeout        time.Duration
}{
	{"bulk length of 2^62", "$4611686018427387904\r\n", true, true, 2 * time.Second},
	{"array length of 2^62", "*4611686018427387904\r\n", true, true, 2 * time.Second},
	{"map length of 2^62", "%4611686018427387904\r\n", true, true, 2 * time.Second},
	{"set length of 2^62", "~4611686018427387904\r\n", true, true, 2 * time.Second},
	{"bulk just above the 64 MiB cap", "$67108863\r\n", true, true, 2 * time.Second},
	{"nested arrays that multiply", strings.Repeat("*1000000\r\n", 64), true, false, 2 * time.Second},
	{"nesting deeper than any stack", strings.Repeat("*1\r\n", 10_000_000), true, false, 10 * time.Second},
	{"endless length digits", "$" + strings.Repeat("9", 100_000), true, false, 2 * time.Second},
	{"line without an end", "+" + strings.Repeat("a", 200_000), true, false, 2 * time.Second},
	{"negative length", "$-5\r\n", true, true, 2 * time.Second},
	{"garbage type byte", "\x00\x01garbage\r\n", true, true, 2 * time.Second},
	{"truncated bulk", "$10\r\nabc", false, true, 200 * time.Millisecond},
	{"truncated array", "*4\r\n:1\r\n:2\r\n", false, true, 200 * time.Millisecond},
}

// hostileConfig is a config for a server at addr that tries again at
// once. A refused reply fails a call without waiting: the timeout is
// waited for only where no refusal comes (truncated replies), and is long
// enough that a busy machine does not turn a refusal into a timeout.
func hostileConfig(t *testing.T, addr string, timeout time.Duration) Config {
	cfg := testConfig(t, false, addr)
	cfg.Timeout, cfg.LeaseTime = conf.Duration(timeout), conf.Duration(max(3*timeout, time.Second))
	cfg.DialTimeout = conf.Duration(time.Second)
	cfg.RetryBackoff = conf.Duration(10 * time.Millisecond)
	cfg.RetryBackoffMax = conf.Duration(10 * time.Millisecond)
	return cfg
}

// withoutBackoff lets every call reach the server after a failure, so
// that a test sees what each call makes of the server's reply.
func withoutBackoff() Option { return func(s *Store) { s.brk = newBreaker(0, 0) } }

// through calls f until the breaker lets it reach the server (the
// background probe may hold it for a moment).
func through(f func() error) error {
	for range 500 {
		if err := f(); !errors.Is(err, ErrUnavailable) {
			return err
		}
		time.Sleep(time.Millisecond)
	}
	return ErrUnavailable
}

// storeCalls are the store's public calls that reach Redis.
func storeCalls(s *Store) map[string]func() error {
	ctx := context.Background()
	return map[string]func() error{
		"Do": func() error {
			return s.Do(ctx, []counter.Request{countertest.Rate("r:0:sender:a@example.org", 10, time.Hour, 10)})
		},
		"Allows":   func() error { _, err := s.Allows(ctx); return err },
		"SetAllow": func() error { return s.SetAllow(ctx, "sender:a@example.org", time.Now().Add(time.Hour)) },
		"Hot":      func() error { _, err := s.Hot(ctx, 10); return err },
		"Reset":    func() error { return s.Reset(ctx, [][]byte{[]byte("r:0:sender:a@example.org")}) },
		"Ping":     func() error { return s.Ping(ctx) },
	}
}

// panicsAt is the number of panics recovered so far at places of the
// Redis store.
func panicsAt() uint64 {
	var n uint64
	for _, c := range guard.Counts() {
		if strings.HasPrefix(c.Where, "redis store") {
			n += c.N
		}
	}
	return n
}

// waitWorks waits until s counts in Redis again, and checks that it does.
func waitWorks(t *testing.T, s *Store, key string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := []counter.Request{countertest.Rate(key, 10, time.Hour, 10)}
		err := s.Do(context.Background(), r)
		if err == nil {
			if !r[0].Allowed || r[0].Level != 1 {
				t.Fatalf("first event on a real server: %+v", r[0])
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the store does not work with a real server in the fake's place: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A server that answers with lengths no Redis sends, truncated replies or
// garbage — to the scripts' loading at open, to the background probe and
// to every call — gets errors back, never a panic: the store opens, each
// call fails (the bounded ones as refused replies, counted), nothing is
// recovered because nothing panicked, and once a real redis-server takes
// the address the store counts again.
func TestHostileReplies(t *testing.T) {
	redistest.Require(t)
	for _, hc := range hostileReplies {
		for _, trickle := range []bool{false, true} {
			if trickle && !hc.split {
				continue
			}
			name := hc.name
			if trickle {
				name += ", byte by byte"
			}
			t.Run(name, func(t *testing.T) {
				start := redistest.StartFake
				if trickle {
					start = redistest.StartTrickle
				}
				fake := start(t, redistest.Hostile(hc.reply))
				panics := panicsAt()
				s := openTest(t, hostileConfig(t, fake.Addr, hc.timeout), withoutBackoff())
				if !s.Stats().Down {
					t.Error("the store opened as if the scripts were loaded")
				}
				for name, call := range storeCalls(s) {
					err := through(call)
					switch {
					case err == nil:
						t.Errorf("%s: no error", name)
					case hc.refused && !errors.Is(err, ErrReplyRefused):
						t.Errorf("%s: %v, want a refused reply", name, err)
					case hc.refused && !strings.Contains(err.Error(), fake.Addr):
						t.Errorf("%s: %v does not name the server", name, err)
					}
				}
				if hc.refused && s.Stats().RepliesRefused == 0 {
					t.Error("no refused reply counted")
				}
				if n := panicsAt() - panics; n != 0 {
					t.Errorf("%d panics recovered: the reply got past the bounds", n)
				}
				fake.Stop()
				redistest.StartAt(t, fake.Addr)
				waitWorks(t, s, "r:0:sender:after@example.org")
			})
		}
	}
}

// A real server whose replies arrive one byte at a time serves every
// call: the bounds follow replies across reads of any size.
func TestRepliesSplitByteByByte(t *testing.T) {
	srv := redistest.Start(t)
	split := redistest.StartSplitter(t, srv.Addr)
	s := openTest(t, testConfig(t, false, split.Addr))
	ctx := context.Background()
	for i := range 3 {
		r := do(t, s, countertest.Rate("r:0:sender:split@example.org", 10, time.Hour, 10),
			countertest.Slots("c:0:client_ip:192.0.2.1", 5, "s1"))
		if !r[0].Allowed || r[0].Level != int64(i+1) || !r[1].Allowed || r[1].Level != 1 {
			t.Fatalf("event %d through the splitter: %+v", i+1, r)
		}
	}
	if err := s.SetAllow(ctx, "sender:vip@example.org", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if m, err := s.Allows(ctx); err != nil || len(m) != 1 {
		t.Fatalf("Allows through the splitter: %v %v", m, err)
	}
	s.flushHot(ctx)
	if _, err := s.Hot(ctx, 10); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.RepliesRefused != 0 || st.Errors != 0 {
		t.Errorf("stats: %+v", st)
	}
}

// panicHook makes every command panic while armed, as a bug in go-redis
// or in the store's own reading of a reply would.
type panicHook struct{ armed atomic.Bool }

func (h *panicHook) check() {
	if h.armed.Load() {
		panic("hook: boom")
	}
}

func (h *panicHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *panicHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.check(); return next(ctx, cmd) }
}
func (h *panicHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.check(); return next(ctx, cmds) }
}

// A panic under any call becomes that call's error: the breaker counts
// it as a failure (so rules follow on_store_error), it is counted by
// place and logged once however many there are, the background loop
// (probe, lease refresh) lives through its own, and the store works again
// when the panics stop.
func TestPanicBecomesError(t *testing.T) {
	srv := redistest.Start(t)
	core, logs := observer.New(zap.InfoLevel)
	cfg := hostileConfig(t, srv.Addr, 300*time.Millisecond)
	h := &panicHook{}
	start := time.Now()
	s, err := Open(cfg, zap.New(core), WithHook(h), withoutBackoff())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	do(t, s, countertest.Slots("c:0:client_ip:192.0.2.2", 5, "s1")) // a lease to refresh
	panics := panicsAt()
	h.armed.Store(true)
	for name, call := range storeCalls(s) {
		err := through(call)
		var pe *guard.PanicError
		if !errors.As(err, &pe) {
			t.Errorf("%s: %v, want a recovered panic", name, err)
		}
	}
	if !s.Stats().Down {
		t.Error("the breaker did not count the panics as failures")
	}
	// The background loop panics too (probe every 10ms, lease refresh
	// every 333ms), and lives on.
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().RefreshErrors == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no lease refresh failed within 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := panicsAt() - panics; n < uint64(len(storeCalls(s))) {
		t.Errorf("%d panics counted, want at least %d", n, len(storeCalls(s)))
	}
	if n, most := logs.FilterMessage("recovered from a panic").Len(), 1+int(time.Since(start)/(10*time.Second)); n < 1 || n > most {
		t.Errorf("%d log lines for %d panics, want 1 to %d (one per 10s)", n, panicsAt()-panics, most)
	}
	// Disarmed: the background probe (no call of ours) finds Redis again.
	h.armed.Store(false)
	deadline = time.Now().Add(5 * time.Second)
	for s.Stats().Down {
		if time.Now().After(deadline) {
			t.Fatal("the store did not recover: the background probe is gone or the breaker is stuck")
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitWorks(t, s, "r:0:sender:after-panic@example.org")
}

// A server that answers PING and breaks every other call opens and closes
// the breaker over and over: the log says so a few times, not each time.
func TestFlappingServerLogsSampled(t *testing.T) {
	redistest.Require(t)
	fake := redistest.StartFake(t, redistest.HostileButPing("$4611686018427387904\r\n"))
	core, logs := observer.New(zap.InfoLevel)
	s, err := Open(hostileConfig(t, fake.Addr, 2*time.Second), zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	failed := 0
	for range 100 {
		if err := s.Do(context.Background(), []counter.Request{countertest.Rate("r:0:k", 10, time.Hour, 10)}); errors.Is(err, ErrReplyRefused) {
			failed++
		}
		time.Sleep(15 * time.Millisecond)
	}
	opens := s.Stats().BreakerOpens
	if failed < 10 || opens < 10 {
		t.Fatalf("%d calls refused, breaker opened %d times: the server did not flap", failed, opens)
	}
	lines := logs.Filter(func(e observer.LoggedEntry) bool { return e.Level >= zap.WarnLevel }).All()
	for _, l := range lines {
		t.Logf("%s %s %v", l.Level, l.Message, l.ContextMap())
	}
	if len(lines) > 8 {
		t.Errorf("%d warning and error lines for %d breaker openings, want a sample", len(lines), opens)
	}
}
