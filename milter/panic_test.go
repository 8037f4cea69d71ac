package milter

// No panic ends the daemon: one in a callback, in the close path or in a
// background loop (exemption refresh, DNS lookups of the sender checks,
// the admin and metrics servers) is recovered by guard, logged and
// counted; the session it hit gets a temporary failure, and the next
// session is served. Each case is driven by go-milter's client.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d--j/go-milter"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"sluice/admin"
	"sluice/auth"
	"sluice/engine"
	"sluice/guard"
	"sluice/limits"
	"sluice/limits/counter"
	"sluice/limits/memstore"
	"sluice/metrics"
	"sluice/policy"
	"sluice/smtp"
)

// panicky is an engine whose sessions panic once at one place, chosen by
// the test.
type panicky struct {
	smtp.Engine
	at atomic.Value // string; "" panics nowhere
}

func (p *panicky) maybe(where string) {
	if p.at.CompareAndSwap(where, "") {
		panic("test panic in " + where)
	}
}

func (p *panicky) Open(c smtp.Client) smtp.Session {
	p.maybe("open")
	return &panickySession{Session: p.Engine.Open(c), p: p}
}

type panickySession struct {
	smtp.Session
	p *panicky
}

func (s *panickySession) Helo(name string) { s.p.maybe("helo"); s.Session.Helo(name) }
func (s *panickySession) Mail(from, user string) {
	s.p.maybe("mail")
	s.Session.Mail(from, user)
}
func (s *panickySession) Rcpt(rcpt string)        { s.p.maybe("rcpt"); s.Session.Rcpt(rcpt) }
func (s *panickySession) Header(name, val string) { s.p.maybe("header"); s.Session.Header(name, val) }
func (s *panickySession) Body(b []byte)           { s.p.maybe("body"); s.Session.Body(b) }
func (s *panickySession) Stage(ctx context.Context, st smtp.Stage) smtp.Decision {
	if st == smtp.Data {
		s.p.maybe("end of message")
	}
	return s.Session.Stage(ctx, st)
}
func (s *panickySession) EndMessage(ctx context.Context, accepted bool) {
	if !accepted {
		s.p.maybe("abort")
	}
	s.Session.EndMessage(ctx, accepted)
}
func (s *panickySession) Close(ctx context.Context) { s.p.maybe("close"); s.Session.Close(ctx) }

func panics(where string) uint64 {
	for _, c := range guard.Counts() {
		if c.Where == where {
			return c.N
		}
	}
	return 0
}

// waitPanics waits, bounded, until guard has counted more than before at
// where.
func waitPanics(t *testing.T, where string, before uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for panics(where) <= before {
		if time.Now().After(deadline) {
			t.Fatalf("no panic recovered at %q", where)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// answers runs one whole session from ip and returns the answer to each
// step that gets one, by step name.
func answers(t *testing.T, sock, ip, sender string) map[string]*milter.Action {
	t.Helper()
	s := dialMTA(t, sock, milter.WithReadTimeout(10*time.Second))
	defer s.Close()
	got := map[string]*milter.Action{}
	step := func(name string, act *milter.Action, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got[name] = act
	}
	s.set("{daemon_name}", "smtpd")
	act, err := s.Conn("client.example", milter.FamilyInet, 25000, ip)
	step("open", act, err)
	act, err = s.Helo("client.example")
	step("helo", act, err)
	act, err = s.Mail(sender)
	step("mail", act, err)
	act, err = s.Rcpt("rcpt@example.net")
	step("rcpt", act, err)
	act, err = s.HeaderField("Subject", "hi")
	step("header", act, err)
	act, err = s.HeaderEnd()
	step("end of header", act, err)
	act, err = s.BodyChunk([]byte("body\r\n"))
	step("body", act, err)
	_, act, err = s.End()
	step("end of message", act, err)
	if err := s.Abort(); err != nil {
		t.Fatalf("abort: %v", err)
	}
	return got
}

// TestPanicInSessionIsTempfailed panics in each callback and in the close
// path in turn: the command that panicked gets 451 4.3.0 (a header field
// or body chunk, whose answer the MTA does not wait for, at the end of the
// message), the others of the session go on, the panic is counted, and the
// next session is served as if nothing had happened.
func TestPanicInSessionIsTempfailed(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	// Rules that need every event, so that the MTA sends them all.
	p := &panicky{Engine: testEngine(t, setup{Rules: []limits.Rule{
		{Name: "slots", Count: "concurrent", Per: "client_ip", Max: 1},
		{Name: "helos", Count: "messages", Per: "helo", Rate: "1000/1h"},
		{Name: "rcpts", Count: "recipients", Per: "rcpt_domain", Rate: "1000/1h"},
		{Name: "bytes", Count: "bytes", Per: "sender", Rate: "1000000/1h", Action: policy.MustAction("tag")},
	}}, log)}
	p.at.Store("")
	srv, sock := serve(t, p, log)
	for i, where := range []string{"open", "helo", "mail", "rcpt", "header", "body", "end of message", "abort", "close"} {
		t.Run(where, func(t *testing.T) {
			place := "milter session"
			if where == "close" {
				place = "milter close"
			}
			before := panics(place)
			ip := fmt.Sprintf("192.0.2.%d", 10+i)
			p.at.Store(where)
			got := answers(t, sock, ip, "a@example.org")
			answered := where
			if where == "header" || where == "body" {
				answered = "end of message"
			}
			if act, ok := got[answered]; ok {
				if act.Type != milter.ActionRejectWithCode || act.SMTPCode != 451 || replyText(act) != "4.3.0 Internal error; try again later" {
					t.Errorf("%s answered %+v, want 451 4.3.0", where, act)
				}
			}
			for step, act := range got {
				if step != answered && !passed(step, act) {
					t.Errorf("%s answered %+v after a panic in %s", step, act, where)
				}
			}
			waitPanics(t, place, before)
			waitSessions(t, srv, 0)
			// The next session: served in full. A panic before the close
			// path frees the client's slot; one in the close path keeps
			// it, so that client is not asked again.
			next := ip
			if where == "close" {
				next = "198.51.100.1"
			}
			for step, act := range answers(t, sock, next, "b@example.org") {
				if !passed(step, act) {
					t.Errorf("the next session: %s answered %+v", step, act)
				}
			}
			waitSessions(t, srv, 0)
		})
	}
	if n := logs.FilterMessage("recovered from a panic").Len(); n != 9 {
		t.Errorf("%d panics logged, want 9", n)
	}
}

func waitSessions(t *testing.T, srv *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for srv.Sessions() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions open, want %d", srv.Sessions(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// allowPanics is a memory store whose exemptions panic while armed.
type allowPanics struct {
	*memstore.Store
	armed atomic.Bool
}

func (s *allowPanics) Allows(ctx context.Context) (map[string]time.Time, error) {
	if s.armed.Load() {
		panic("test panic in Allows")
	}
	return s.Store.Allows(ctx)
}

// TestPanicInExemptionRefresh: the refresh of exemptions from the store
// runs in the background; a panic there is recovered, the session that
// started it is served, and the refresh goes on: an exemption set after
// it is read and honoured.
func TestPanicInExemptionRefresh(t *testing.T) {
	log := zap.NewNop()
	ms, err := memstore.New(memstore.Config{MaxKeys: 1000}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ms.Close() })
	st := &allowPanics{Store: ms}
	st.armed.Store(true)
	pc := policy.Config{}
	pc.Defaults()
	eng, err := engine.New(engine.Options{
		Policy:   pc,
		Rules:    &limits.Config{Trusted: []string{}, Rules: []limits.Rule{{Name: "once", Count: "messages", Per: "sender", Rate: "1/1h"}}},
		Counting: limits.Options{Store: st},
		Log:      log,
	})
	if err != nil {
		t.Fatal(err)
	}
	_, sock := serve(t, eng, log)
	before := panics("limits allows refresh")
	if act := answers(t, sock, "192.0.2.1", "x@example.org")["mail"]; act.Type != milter.ActionContinue {
		t.Fatalf("first message: %+v", act)
	}
	waitPanics(t, "limits allows refresh", before)
	st.armed.Store(false)
	if act := answers(t, sock, "192.0.2.1", "x@example.org")["mail"]; act.Type != milter.ActionRejectWithCode {
		t.Fatalf("second message over 1/1h: %+v", act)
	}
	if err := ms.SetAllow(context.Background(), "sender:x@example.org", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for answers(t, sock, "192.0.2.1", "x@example.org")["mail"].Type != milter.ActionContinue {
		if time.Now().After(deadline) {
			t.Fatal("the exemption set after the panic was never read: the refresh stopped")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// panicResolver panics on every reverse lookup.
type panicResolver struct{ auth.Resolver }

func (panicResolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	panic("test panic in LookupAddr")
}

func (panicResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// TestPanicInCheckLookups: the client checks' DNS lookups run in
// goroutines of their own, started at CONNECT and at MAIL FROM. A panic
// in them is recovered in both places, the check gives no result, MAIL
// FROM is answered, and the next session is served.
func TestPanicInCheckLookups(t *testing.T) {
	log := zap.NewNop()
	ac := auth.Config{AuthservID: "mx.example.test", Checks: auth.ChecksConfig{ClientRDNS: &auth.ClientRDNS{}}}
	ac.Defaults()
	if err := ac.Validate(); err != nil {
		t.Fatal(err)
	}
	checker, err := auth.New(&ac, log, auth.WithResolver(panicResolver{}))
	if err != nil {
		t.Fatal(err)
	}
	ms, err := memstore.New(memstore.Config{MaxKeys: 1000}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ms.Close() })
	pc := policy.Config{}
	pc.Defaults()
	eng, err := engine.New(engine.Options{Policy: pc, Rules: &limits.Config{Trusted: []string{}},
		Counting: limits.Options{Store: ms}, Auth: checker, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	_, sock := serve(t, eng, log)
	prefetch, check := panics("auth prefetch client_rdns"), panics("auth check client_rdns")
	for _, ip := range []string{"192.0.2.1", "192.0.2.2"} {
		for step, act := range answers(t, sock, ip, "x@example.org") {
			if !passed(step, act) {
				t.Errorf("session from %s: %s answered %+v", ip, step, act)
			}
		}
	}
	waitPanics(t, "auth prefetch client_rdns", prefetch)
	waitPanics(t, "auth check client_rdns", check)
}

// panicListener panics at its first Accept.
type panicListener struct {
	net.Listener
	done atomic.Bool
}

func (l *panicListener) Accept() (net.Conn, error) {
	if l.done.CompareAndSwap(false, true) {
		panic("test panic in Accept")
	}
	return nil, errors.New("closed")
}

// TestPanicInSideServers: a panic in the admin server's accept loop, and
// in a metrics handler, ends neither the process nor the milter; the
// metrics server answers the next request.
func TestPanicInSideServers(t *testing.T) {
	log := zap.NewNop()
	_, sock := serve(t, testEngine(t, setup{}, log), log)

	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	before := panics("admin server")
	as := admin.Serve(&panicListener{Listener: ln}, func() admin.Counters { return nil }, log)
	defer as.Close(context.Background())
	waitPanics(t, "admin server", before)

	m := metrics.New("test")
	ms, err := m.Listen("127.0.0.1:0", func(context.Context) error { panic("test panic in readyz") }, log)
	if err != nil {
		t.Fatal(err)
	}
	defer ms.Close(context.Background())
	if resp, err := http.Get("http://" + ms.Addr().String() + "/readyz"); err == nil {
		resp.Body.Close()
		t.Errorf("/readyz answered %s though its handler panicked", resp.Status)
	}
	resp, err := http.Get("http://" + ms.Addr().String() + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz after a panicking handler: %v %v", resp, err)
	}
	resp.Body.Close()

	for step, act := range answers(t, sock, "192.0.2.9", "x@example.org") {
		if !passed(step, act) {
			t.Errorf("milter session after the side servers' panics: %s answered %+v", step, act)
		}
	}
}

var _ counter.Allower = (*allowPanics)(nil)
