// Package replay drives sluice's engine over the sessions of a mail log,
// on the log's own clock, and reports what the policy would have done.
//
// It is a front end like the milter: each step of a session rebuilt by
// package maillog becomes the engine call the milter would have made —
// the same stages, facts and events, as the engine's Needs negotiate
// them — on a fresh memory store whose clock is the log's time. The
// policy runs in dry-run, so every crossing is a "would" outcome, counted
// exactly as the daemon logs "would refuse", "would hold", "would tag".
package replay

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"sluice/config"
	"sluice/limits/memstore"
	"sluice/maillog"
	"sluice/smtp"
)

// Options say how to replay.
type Options struct {
	// MaxKeys bounds the memory store's counters; 0: the config's [store]
	// max_keys.
	MaxKeys int
	// Log is given to the engine (it logs its "would" lines there); nil:
	// none.
	Log *zap.Logger
}

// Replayer drives one engine over the steps of a log.
type Replayer struct {
	eng      smtp.Engine
	store    *memstore.Store
	needs    smtp.Needs
	now      atomic.Int64 // the log's time: the engine's and the store's clock
	sessions map[*maillog.Session]*session
	report   *tally
}

// session is one engine session in flight.
type session struct {
	es   smtp.Session
	skip *maillog.Message // the message the engine accepted at MAIL FROM: no more of it
}

// New builds the engine of c, in dry-run, on a fresh memory store that
// reads the time from the log. Sender checks are left out: a log does not
// say what DNS answered then.
func New(c *config.Config, o Options) (*Replayer, error) {
	r := &Replayer{sessions: make(map[*maillog.Session]*session)}
	max := o.MaxKeys
	if max <= 0 {
		max = c.Store.MaxKeys
	}
	clock := func() int64 { return r.now.Load() }
	store, err := memstore.New(memstore.Config{MaxKeys: max}, nil, memstore.WithClock(clock))
	if err != nil {
		return nil, fmt.Errorf("replay: counters: %w", err)
	}
	// The file's own mode stays in the report; the engine decides in
	// dry-run, so that every crossing is told and none changes the
	// session.
	cfg := *c
	cfg.PolicyConfig.Mode = smtp.ModeDryRun
	log := o.Log
	if log == nil {
		log = zap.NewNop()
	}
	b, err := cfg.Build(config.Runtime{
		Store:    store,
		Log:      log,
		NoChecks: true,
		Now:      func() time.Time { return time.Unix(0, r.now.Load()) },
	})
	if err != nil {
		store.Close()
		return nil, err
	}
	r.eng, r.store, r.needs = b.Engine, store, b.Engine.Needs()
	r.report = newTally(c, max)
	return r, nil
}

// Close frees the counters.
func (r *Replayer) Close() error { return r.store.Close() }

// Step makes the engine call of one step, at the step's time. Steps come
// in time order; a step that goes back in time (lines of several hosts
// whose clocks disagree) is taken at the latest time seen, so that the
// counters' clock never runs backwards.
func (r *Replayer) Step(ctx context.Context, st *maillog.Step) {
	if st.Time > r.now.Load() {
		r.now.Store(st.Time)
	}
	now := r.now.Load()
	s := r.sessions[st.Session]
	if s == nil && st.Kind != maillog.StepOpen {
		return
	}
	m := st.Message
	switch st.Kind {
	case maillog.StepOpen:
		ss := st.Session
		s = &session{es: r.eng.Open(smtp.Client{IP: ss.ClientIP, Name: ss.ClientName, Listener: ss.Listener})}
		r.sessions[ss] = s
		r.decided(smtp.Connect, now, s.es.Stage(ctx, smtp.Connect))
	case maillog.StepHelo:
		if r.needs.Helo {
			s.es.Helo(st.Session.Helo)
			r.decided(smtp.Helo, now, s.es.Stage(ctx, smtp.Helo))
		}
	case maillog.StepMail:
		sasl := ""
		if r.needs.SASLUser {
			sasl = st.Session.SASLUser
		}
		s.es.Mail(m.Sender, sasl)
		s.es.SetMacros(smtp.Macros{QueueID: m.QueueID})
		d := s.es.Stage(ctx, smtp.Mail)
		r.decided(smtp.Mail, now, d)
		s.skip = nil
		if d.Kind == smtp.Accept {
			// The milter answers Accept: the MTA tells it nothing more
			// of this message.
			s.skip = m
		}
	case maillog.StepRcpt:
		if r.needs.Rcpt && s.skip != m {
			s.es.Rcpt(m.Rcpts[st.Rcpt].Addr)
			r.decided(smtp.Rcpt, now, s.es.Stage(ctx, smtp.Rcpt))
		}
	case maillog.StepData:
		if s.skip != m {
			// The engine adds the empty line between header and body to
			// what it is shown.
			bodySize(s.es, max(m.Size-2, 0))
			r.decided(smtp.Data, now, s.es.Stage(ctx, smtp.Data))
			s.es.Edits()
		}
	case maillog.StepEnd:
		if s.skip != m {
			// The milter ends a message accepted once its end passed the
			// engine (dry-run refuses nothing), aborted otherwise.
			s.es.EndMessage(ctx, m.Data)
		}
	case maillog.StepClose:
		s.es.Close(ctx)
		delete(r.sessions, st.Session)
	}
}

// decided counts a stage's decision into the report.
func (r *Replayer) decided(st smtp.Stage, now int64, d smtp.Decision) {
	r.report.stage(st, now, d.Outcomes)
}

// Open is how many engine sessions are in flight.
func (r *Replayer) Open() int { return len(r.sessions) }

// Report is what the replay found, with the log's own statistics.
func (r *Replayer) Report(st *maillog.Stats, since, until int64) *Report {
	return r.report.build(st, since, until)
}

// zeros stand for a body a session cannot count without being shown.
var zeros = make([]byte, 64<<10)

// bodySize tells the session of n bytes of body: the log has its size,
// never its bytes.
func bodySize(s smtp.Session, n int64) {
	if bs, ok := s.(smtp.BodySizer); ok {
		bs.BodySize(n)
		return
	}
	for ; n > 0; n -= int64(len(zeros)) {
		s.Body(zeros[:min(n, int64(len(zeros)))])
	}
}
