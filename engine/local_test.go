package engine_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"sluice/engine"
	"sluice/limits"
	"sluice/policy"
	"sluice/smtp"
)

// openLocal starts a local submission's session, as Postfix's cleanup
// opens one for mail from sendmail(1): localhost, 127.0.0.1, Local.
func (v *env) openLocal() (*engine.Session, smtp.Decision) {
	v.t.Helper()
	s := v.eng.Open(smtp.Client{IP: netip.MustParseAddr("127.0.0.1"), Name: "localhost", Listener: "mx.example.test", Local: true}).(*engine.Session)
	v.t.Cleanup(func() { s.Close(context.Background()) })
	return s, s.Stage(context.Background(), smtp.Connect)
}

// A local submission is never refused before the end of its message —
// Postfix cannot refuse a recipient of mail from sendmail(1) — and at the
// end of the message it gets what the rule asked for. Over SMTP the same
// rule refuses the recipient.
func TestLocalSubmissionAnsweredAtEndOfMessage(t *testing.T) {
	v := newEnv(t, setup{Rules: []limits.Rule{{Name: "rcpts-per-sender", Count: "recipients", Per: "sender", Rate: "2/1h"}}})
	s, _ := v.openLocal()
	m := v.send(s, "cron@example.org", "", []string{"a@example.net", "b@example.net", "c@example.net", "d@example.net"})
	for i, r := range m.rcpts {
		if r.Refused() {
			t.Errorf("recipient %d refused at RCPT (%q); a local submission waits for the end of the message", i+1, r.Reply)
		}
	}
	if !m.data.Refused() || !strings.HasPrefix(m.data.Reply, "451 4.7.1 ") || !strings.Contains(m.data.Reply, "rcpts-per-sender") {
		t.Errorf("end of message: %+v; want the rule's 451 4.7.1", m.data)
	}
	if n := v.lines("refused", "rcpts-per-sender"); n != 1 {
		t.Errorf("%d refusal lines, want the one at end of message", n)
	}
	smtpSession, _ := v.open("192.0.2.7")
	m = v.send(smtpSession, "app@example.org", "", []string{"a@example.net", "b@example.net", "c@example.net"})
	if len(m.rcpts) != 3 || !m.rcpts[2].Refused() || m.rcpts[1].Refused() {
		t.Errorf("SMTP session: recipients %+v; want the third refused", m.rcpts)
	}
}

// Once a stage of a local submission is refused, nothing more of what it
// refused is counted: a refused MAIL FROM counts no recipients, and a
// refused connect nothing of the session. The end of each message answers.
func TestLocalSubmissionRefusedCountsNoMore(t *testing.T) {
	v := newEnv(t, setup{Rules: []limits.Rule{
		{Name: "conn-cap", Count: "connections", Per: "client_ip", Rate: "3/1h", Action: policy.MustAction("reject")},
		{Name: "msgs-per-ip", Count: "messages", Per: "client_ip", Rate: "1/1h"},
		{Name: "rcpts-per-sender", Count: "recipients", Per: "sender", Rate: "2/1h"},
	}})
	s, _ := v.openLocal()
	if m := v.send(s, "cron@example.org", "", []string{"a@example.net"}); !m.delivered {
		t.Fatalf("first message: %+v", m.last())
	}
	m := v.send(s, "cron@example.org", "", []string{"b@example.net", "c@example.net", "d@example.net"})
	if m.mail.Refused() || !m.data.Refused() || !strings.Contains(m.data.Reply, "msgs-per-ip") {
		t.Errorf("second message: MAIL %+v, end %+v; want msgs-per-ip at the end", m.mail, m.data)
	}
	// Its recipients were not counted: the sender has one left.
	other, _ := v.open("192.0.2.7")
	m = v.send(other, "cron@example.org", "", []string{"e@example.net", "f@example.net"})
	if len(m.rcpts) != 2 || m.rcpts[0].Refused() || !m.rcpts[1].Refused() {
		t.Errorf("the sender's recipients over SMTP: %+v; want one left after the refused local message", m.rcpts)
	}
	// A refusal at connect answers at the end of every message.
	for range 2 {
		v.openLocal()
	}
	s, d := v.openLocal()
	if d.Refused() {
		t.Fatalf("fourth local connect refused at connect: %+v", d)
	}
	m = v.send(s, "x@example.org", "", []string{"a@example.net"})
	if !m.data.Refused() || !strings.HasPrefix(m.data.Reply, "550 5.7.1 ") || !strings.Contains(m.data.Reply, "conn-cap") {
		t.Errorf("fourth local session's message: %+v; want conn-cap's 550 at end of message", m.data)
	}
}

// A hold at MAIL FROM holds a local submission's message as it holds any
// other: at its end.
func TestLocalSubmissionHeld(t *testing.T) {
	v := newEnv(t, setup{Rules: []limits.Rule{{Name: "runaway", Count: "messages", Per: "client_ip", Rate: "1/1h", Action: policy.MustAction("hold")}}})
	s, _ := v.openLocal()
	if m := v.send(s, "cron@example.org", "", []string{"a@example.net"}); !m.delivered || len(editsOf(m.edits, smtp.Quarantine)) != 0 {
		t.Fatalf("first message: %+v", m)
	}
	m := v.send(s, "cron@example.org", "", []string{"a@example.net"})
	if !m.delivered || m.mail.Refused() || len(editsOf(m.edits, smtp.Quarantine)) != 1 {
		t.Errorf("second message: delivered %v, edits %+v; want it held", m.delivered, m.edits)
	}
}
