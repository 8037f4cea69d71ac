package engine_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"sluice/alert"
	"sluice/limits"
	"sluice/smtp"
)

// notes keeps the alerts an engine hands out.
type notes struct {
	mu sync.Mutex
	ev []alert.Event
}

func (n *notes) Notify(ev alert.Event) {
	n.mu.Lock()
	n.ev = append(n.ev, ev)
	n.mu.Unlock()
}

func (n *notes) kinds() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, e := range n.ev {
		out = append(out, e.Event+":"+e.Mode)
	}
	return strings.Join(out, " ")
}

// A crossing that restricts is told to the alert targets with the
// session's facts and the release command; later held messages are told
// as holds, and their queue ids kept with the restriction for release.
func TestRestrictionAlertsAndHeldIDs(t *testing.T) {
	n := &notes{}
	v := newEnv(t, setup{Alerts: n, Rules: []limits.Rule{{Name: "rcpts", Count: "recipients", Per: "sasl_user", Rate: "2/1h", RestrictFor: "24h"}}})
	s, _ := v.open("192.0.2.7")
	s.Helo("client.example")
	m := v.send(s, "alice@example.com", "alice@example.com", []string{"a@one.example", "b@two.example", "c@three.example"})
	if !m.delivered || !m.rcpts[2].Refused() {
		t.Fatalf("the third recipient: %+v", m.rcpts)
	}
	if got := n.kinds(); got != "restrict:enforce refuse:enforce" {
		t.Fatalf("alerts %q, want the restriction and the refusal", got)
	}
	r := n.ev[0]
	if r.Rule != "rcpts" || r.Key != "sasl_user:alice@example.com" || !r.Restricted || r.Action != "hold" ||
		!r.Until.Equal(time.Date(2030, 1, 2, 0, 0, 0, 0, time.UTC)) || r.ClientIP != "192.0.2.7" || r.Helo != "client.example" ||
		r.SASLUser != "alice@example.com" || r.Detail != "count=3" || r.Limit != "2/1h" ||
		fmt.Sprint(r.RcptDomains) != "[one.example two.example three.example]" ||
		r.Release != "sluice counters release 'sasl_user:alice@example.com' -rule 'rcpts'" {
		t.Errorf("restrict alert %+v", r)
	}
	v.clock.ns.Add(int64(2 * time.Hour))
	ctx := context.Background()
	s.Mail("alice@example.com", "alice@example.com")
	s.Stage(ctx, smtp.Mail)
	s.Rcpt("d@four.example")
	if d := s.Stage(ctx, smtp.Rcpt); d.Refused() {
		t.Fatalf("restricted with hold: refused %+v", d)
	}
	s.SetMacros(smtp.Macros{QueueID: "4XHELD1"})
	s.Header("Subject", "x")
	d := s.Stage(ctx, smtp.Data)
	if len(editsOf(s.Edits(), smtp.Quarantine)) != 1 || d.Refused() {
		t.Fatalf("a message of a restricted key is not held: %+v", d)
	}
	s.EndMessage(ctx, true)
	if got := n.kinds(); got != "restrict:enforce refuse:enforce hold:enforce" {
		t.Errorf("alerts %q, want a hold after the restriction", got)
	}
	rel, err := v.eng.Limits().Release(ctx, "sasl_user:alice@example.com", "")
	if err != nil || len(rel) != 1 || strings.Join(rel[0].Held, ",") != "4XHELD1" {
		t.Errorf("release: %+v %v; want the held queue id", rel, err)
	}
	if v.lines("restricted", "rcpts") != 1 {
		t.Errorf("want one 'restricted' log line")
	}
}

// In dry-run mode a crossing restricts nothing, but the alert says what
// would have happened, in mode dry-run.
func TestDryRunAlerts(t *testing.T) {
	n := &notes{}
	v := newEnv(t, setup{Mode: smtp.ModeDryRun, Alerts: n, Rules: []limits.Rule{{Name: "rcpts", Count: "recipients", Per: "sasl_user", Rate: "1/1h", RestrictFor: "today"}}})
	s, _ := v.open("192.0.2.7")
	m := v.send(s, "alice@example.com", "alice@example.com", []string{"a@one.example", "b@two.example"})
	if !m.delivered || m.rcpts[1].Refused() {
		t.Fatalf("dry-run refused: %+v", m.rcpts)
	}
	if got := n.kinds(); got != "restrict:dry-run refuse:dry-run" {
		t.Errorf("alerts %q", got)
	}
	if n.ev[0].Restricted || n.ev[0].Release != "" {
		t.Errorf("a dry-run alert says restricted: %+v", n.ev[0])
	}
	if v.lines("would restrict", "rcpts") != 1 {
		t.Errorf("want one 'would restrict' log line")
	}
}
