package engine_test

import (
	"context"
	"net/netip"
	"testing"

	"sluice/engine"
	"sluice/limits"
	"sluice/limits/memstore"
	"sluice/smtp"
)

// benchEngine is the built-in policy's message rules on a memory store:
// two windows per client address and two per sender.
func benchEngine(b *testing.B) *engine.Engine {
	b.Helper()
	st, err := memstore.New(memstore.Config{MaxKeys: memstore.DefaultMaxKeys}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	eng, err := engine.New(engine.Options{
		Policy: policyOf(smtp.ModeEnforce),
		Rules: &limits.Config{Trusted: []string{}, Rules: []limits.Rule{
			{Name: "conn-per-ip", Count: "concurrent", Per: "client_ip", Max: 1 << 30},
			{Name: "msgs-per-ip", Count: "messages", Per: "client_ip", Rate: []any{"1000000000/1s", "1000000000/1d"}},
			{Name: "msgs-per-sender", Count: "messages", Per: "sender", Rate: []any{"1000000000/1s", "1000000000/1d"}},
		}},
		Counting:     limits.Options{Store: st},
		AcceptAtMail: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	return eng
}

// BenchmarkStage is one message's MAIL FROM through the engine: the facts,
// the stage (limits checked and settled, the decision, an accept), the
// end of the transaction. A rate it never crosses keeps every message on
// the common path.
func BenchmarkStage(b *testing.B) {
	eng := benchEngine(b)
	ctx := context.Background()
	s := eng.Open(smtp.Client{IP: netip.MustParseAddr("192.0.2.25"), Listener: "smtpd"})
	defer s.Close(ctx)
	b.ReportAllocs()
	for b.Loop() {
		s.Mail("Alice.Example+news@Example.ORG", "")
		if d := s.Stage(ctx, smtp.Mail); d.Kind != smtp.Accept {
			b.Fatalf("decision %+v", d)
		}
		s.EndMessage(ctx, false)
	}
}

// BenchmarkSession is a whole session under the same policy: open,
// CONNECT (a concurrency slot taken), MAIL FROM accepted, close (the slot
// given back).
func BenchmarkSession(b *testing.B) {
	eng := benchEngine(b)
	ctx := context.Background()
	c := smtp.Client{IP: netip.MustParseAddr("192.0.2.26"), Listener: "smtpd"}
	b.ReportAllocs()
	for b.Loop() {
		s := eng.Open(c)
		s.Stage(ctx, smtp.Connect)
		s.Mail("bob@example.org", "")
		if d := s.Stage(ctx, smtp.Mail); d.Kind != smtp.Accept {
			b.Fatalf("decision %+v", d)
		}
		s.Close(ctx)
	}
}
