package engine_test

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"sluice/engine"
	"sluice/engine/enginetest"
	"sluice/limits/memstore"
	"sluice/smtp"
)

// testClock is the time the store reads, moved by hand.
type testClock struct{ ns atomic.Int64 }

func (c *testClock) now() int64 { return c.ns.Load() }

// env is an engine on a real memory store with a stopped clock, whose
// log lines are kept.
type env struct {
	t     *testing.T
	eng   *engine.Engine
	logs  *observer.ObservedLogs
	store *memstore.Store
	clock *testClock
	obs   *recordingObserver
}

// setup is what a test engine is built from; newEnv sets its clock, log
// and observer.
type setup = enginetest.Setup

func newEnv(t *testing.T, su setup) *env {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	clock := &testClock{}
	clock.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	obs := &recordingObserver{}
	su.Clock, su.Log, su.Observer = clock.now, zap.New(core), obs
	eng, store := enginetest.New(t, su)
	return &env{t: t, eng: eng, logs: logs, store: store, clock: clock, obs: obs}
}

// recordingObserver keeps what the engine reports.
type recordingObserver struct {
	stages []smtp.Stage
	checks []string
}

func (o *recordingObserver) Stage(st smtp.Stage, took time.Duration, d *smtp.Decision) {
	o.stages = append(o.stages, st)
}

func (o *recordingObserver) Check(check, result string, took time.Duration) {
	o.checks = append(o.checks, check+"="+result)
}

// open starts a session from ip on listener smtpd and asks CONNECT.
func (v *env) open(ip string) (*engine.Session, smtp.Decision) {
	v.t.Helper()
	return v.openOn(ip, "smtpd")
}

func (v *env) openOn(ip, listener string) (*engine.Session, smtp.Decision) {
	v.t.Helper()
	c := smtp.Client{Name: "client.example", Listener: listener}
	if ip != "" {
		c.IP = netip.MustParseAddr(ip)
	}
	s := v.eng.Open(c).(*engine.Session)
	v.t.Cleanup(func() { s.Close(context.Background()) })
	return s, s.Stage(context.Background(), smtp.Connect)
}

// message is what one transaction got: the decision of each stage it
// reached, and the edits when it was delivered.
type message struct {
	mail, data smtp.Decision
	rcpts      []smtp.Decision
	edits      []smtp.Edit
	delivered  bool
}

// last is the decision of the last stage the message reached.
func (m *message) last() smtp.Decision {
	switch {
	case m.data.Kind != smtp.Continue || m.delivered:
		return m.data
	case len(m.rcpts) > 0:
		return m.rcpts[len(m.rcpts)-1]
	}
	return m.mail
}

// send runs one transaction as a front end would: MAIL, each RCPT, a
// header of the given fields and a body, end of message; it stops where
// a stage refuses or accepts, as the MTA would.
func (v *env) send(s *engine.Session, from, user string, rcpts []string, header ...[2]string) message {
	v.t.Helper()
	ctx := context.Background()
	var m message
	s.Mail(from, user)
	m.mail = s.Stage(ctx, smtp.Mail)
	switch {
	case m.mail.Refused():
		s.EndMessage(ctx, false)
		return m
	case m.mail.Kind == smtp.Accept:
		return m
	}
	ok := 0
	for _, r := range rcpts {
		s.Rcpt(r)
		d := s.Stage(ctx, smtp.Rcpt)
		m.rcpts = append(m.rcpts, d)
		if !d.Refused() {
			ok++
		}
	}
	if len(rcpts) > 0 && ok == 0 {
		s.EndMessage(ctx, false)
		return m
	}
	if header == nil {
		header = [][2]string{{"Subject", "hello"}}
	}
	for _, h := range header {
		s.Header(h[0], h[1])
	}
	s.Body([]byte("body\r\n"))
	m.data = s.Stage(ctx, smtp.Data)
	if m.data.Refused() {
		s.EndMessage(ctx, false)
		return m
	}
	m.edits = s.Edits()
	m.delivered = true
	s.EndMessage(ctx, true)
	return m
}

// lines counts the log lines with message msg (and rule, when given).
func (v *env) lines(msg, rule string) int {
	l := v.logs.FilterMessage(msg)
	if rule != "" {
		l = l.FilterField(zap.String("rule", rule))
	}
	return l.Len()
}

// editsOf returns the edits of one kind.
func editsOf(es []smtp.Edit, k smtp.EditKind) []smtp.Edit {
	var out []smtp.Edit
	for _, e := range es {
		if e.Kind == k {
			out = append(out, e)
		}
	}
	return out
}
