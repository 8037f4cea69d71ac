// Package enginetest builds engines for tests: a policy from rules and the
// global keys, on a memory store of the test's own.
package enginetest

import (
	"testing"
	"time"

	"go.uber.org/zap"

	"sluice/alert"
	"sluice/auth"
	"sluice/auth/dkim"
	"sluice/auth/dmarc"
	"sluice/engine"
	"sluice/limits"
	"sluice/limits/memstore"
	"sluice/lists"
	"sluice/policy"
	"sluice/smtp"
)

// Setup is what a test engine is built from.
type Setup struct {
	Mode     smtp.Mode
	Decide   func(*policy.Config) // changes to the global policy keys
	Rules    []limits.Rule
	Lists    lists.Config
	Trusted  []string // the global trusted list; none when nil
	Accept   bool     // AcceptAtMail, as the daemon sets it
	Tag      string   // tag_header
	Clock    func() int64
	Log      *zap.Logger
	Observer engine.Observer
	// Auth, DKIM and DMARC are the checks, when the test has any.
	Auth   *auth.Checker
	DKIM   *dkim.Verifier
	DMARC  *dmarc.Evaluator
	Alerts alert.Notifier
}

// New builds the engine, on a memory store (with s.Clock, when given)
// that is closed when the test ends.
func New(tb testing.TB, s Setup) (*engine.Engine, *memstore.Store) {
	tb.Helper()
	var opts []memstore.Option
	if s.Clock != nil {
		opts = append(opts, memstore.WithClock(s.Clock))
	}
	store, err := memstore.New(memstore.Config{MaxKeys: 10000}, nil, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { store.Close() })
	set, _, err := s.Lists.Build(nil)
	if err != nil {
		tb.Fatal(err)
	}
	trusted := s.Trusted
	if trusted == nil {
		trusted = []string{}
	}
	pc := policy.Config{Mode: s.Mode}
	if s.Decide != nil {
		s.Decide(&pc)
	}
	pc.Defaults()
	if err := pc.Validate(); err != nil {
		tb.Fatal(err)
	}
	var now func() time.Time
	if s.Clock != nil {
		now = func() time.Time { return time.Unix(0, s.Clock()) }
	}
	eng, err := engine.New(engine.Options{
		Config:       engine.Config{TagHeader: s.Tag},
		Policy:       pc,
		Rules:        &limits.Config{Rules: s.Rules, Trusted: trusted},
		Lists:        set,
		Counting:     limits.Options{Store: store},
		Log:          s.Log,
		Observer:     s.Observer,
		AcceptAtMail: s.Accept,
		Auth:         s.Auth,
		DKIM:         s.DKIM,
		DMARC:        s.DMARC,
		Now:          now,
		Alerts:       s.Alerts,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return eng, store
}
