package milter

import (
	"testing"

	"go.uber.org/zap"

	"sluice/engine"
	"sluice/limits"
	"sluice/limits/memstore"
	"sluice/lists"
	"sluice/policy"
	"sluice/smtp"
)

// setup is the policy of a test server.
type setup struct {
	mode    smtp.Mode
	decide  func(*policy.Config) // changes to the global policy keys
	lists   lists.Config
	rules   []limits.Rule
	trusted []string // the global trusted list; none when nil
	accept  bool     // AcceptAtMail, as the daemon sets it
	tag     string   // tag_header
}

// testEngine builds the engine a test server runs on, on a memory store of
// its own.
func testEngine(t testing.TB, su setup, log *zap.Logger) *engine.Engine {
	t.Helper()
	store, err := memstore.New(memstore.Config{MaxKeys: 10000}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	set, _, err := su.lists.Build(nil)
	if err != nil {
		t.Fatal(err)
	}
	trusted := su.trusted
	if trusted == nil {
		trusted = []string{}
	}
	pc := policy.Config{Mode: su.mode}
	if su.decide != nil {
		su.decide(&pc)
	}
	pc.Defaults()
	if err := pc.Validate(); err != nil {
		t.Fatal(err)
	}
	ec := engine.Config{TagHeader: su.tag}
	ec.Defaults()
	eng, err := engine.New(engine.Options{
		Config:       ec,
		Policy:       pc,
		Rules:        &limits.Config{Rules: su.rules, Trusted: trusted},
		Lists:        set,
		Counting:     limits.Options{Store: store},
		Log:          log,
		AcceptAtMail: su.accept,
	})
	if err != nil {
		t.Fatal(err)
	}
	return eng
}
