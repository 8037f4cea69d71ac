package milter

import (
	"testing"

	"sluice/limits"
	"sluice/smtp"
)

// acceptAtMail gives the sessions opened from now on an engine that may
// accept at MAIL FROM, as the daemon's does (on fresh counters).
func (h *hostileServer) acceptAtMail() {
	su := h.su
	su.Accept = true
	h.srv.SetEngine(testEngine(h.t, su, h.log))
}

// mailCodes sends MAIL FROM for each sender on one session, finishing each
// transaction as Postfix would (end of message after a continue, Abort
// after anything), and returns the answer codes to MAIL, with 'y' replies
// written as their SMTP code.
func (r *rawConn) mailCodes(senders ...string) []string {
	r.t.Helper()
	var codes []string
	for _, from := range senders {
		r.send('M', cstr("<"+from+">"))
		code, data, _, err := r.answer()
		if err != nil {
			r.t.Fatalf("MAIL FROM %s: %v", from, err)
		}
		switch code {
		case 'y':
			codes = append(codes, string(data[:3]))
		case 'c':
			codes = append(codes, "c")
			r.send('R', cstr("<rcpt@example.net>"))
			if c, _, _, err := r.answer(); err != nil || c != 'c' {
				r.t.Fatalf("RCPT after MAIL FROM %s: %q %v", from, c, err)
			}
			r.send('E')
			// go-milter answers accept to sluice's continue at the end.
			if c, _, _, err := r.answer(); err != nil || c != 'a' {
				r.t.Fatalf("end of message from %s: %q %v", from, c, err)
			}
		default:
			codes = append(codes, string(code))
		}
		r.send('A')
	}
	return codes
}

func sessionCodes(t *testing.T, h *hostileServer, ip string, senders ...string) []string {
	t.Helper()
	r := h.connected(t, ip)
	codes := r.mailCodes(senders...)
	r.send('Q')
	return codes
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestAcceptAtMail: under a policy that only counts connections and
// messages and writes no header, a session accepts each message at MAIL
// FROM, and the counting goes on across accepted messages. A policy that
// needs the rest of the message (recipients, tags, count_on = "accepted")
// keeps the whole transaction.
func TestAcceptAtMail(t *testing.T) {
	builtin := []limits.Rule{
		{Name: "conn-per-ip", Count: "concurrent", Per: "client_ip", Max: 20},
		{Name: "msgs-per-ip", Count: "messages", Per: "client_ip", Rate: []any{"60/1m", "1000/1d"}},
		{Name: "msgs-per-sender", Count: "messages", Per: "sender", Rate: "2/1h"},
	}
	senders := []string{"a@example.org", "a@example.org", "a@example.org", "b@example.org"}
	for _, tc := range []struct {
		name  string
		mode  smtp.Mode
		rules []limits.Rule
		on    bool
		want  []string
	}{
		{"built-in rules", smtp.ModeEnforce, builtin, true, []string{"a", "a", "451", "a"}},
		{"without AcceptAtMail", smtp.ModeEnforce, builtin, false, []string{"c", "c", "451", "c"}},
		{"tag mode writes headers at the end", smtp.ModeTag, builtin, true, []string{"c", "c", "c", "c"}},
		{"a recipient rule needs RCPT", smtp.ModeEnforce,
			append([]limits.Rule{{Name: "rcpts", Count: "recipients", Per: "sender", Rate: "100/1h"}}, builtin...), true,
			[]string{"c", "c", "451", "c"}},
		{"count_on accepted needs the end of message", smtp.ModeEnforce,
			[]limits.Rule{{Name: "msgs-per-sender", Count: "messages", Per: "sender", Rate: "2/1h", CountOn: "accepted"}}, true,
			[]string{"c", "c", "451", "c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostileServer(t, tc.mode, 0, tc.rules...)
			if tc.on {
				h.acceptAtMail()
			}
			if got := sessionCodes(t, h, "192.0.2.40", senders...); !equal(got, tc.want) {
				t.Errorf("answers to MAIL FROM %v, want %v", got, tc.want)
			}
			h.waitSessions(0)
			h.checkNoPanics()
		})
	}
}

// TestAcceptAtMailKeepsCounting: a count_on = "accepted" rule whose
// reservation is not taken by this sender (the rule does not match it)
// does not stop the early accept, and messages accepted at MAIL FROM are
// counted: a second session from the same sender meets the limit.
func TestAcceptAtMailKeepsCounting(t *testing.T) {
	h := newHostileServer(t, smtp.ModeEnforce, 0,
		limits.Rule{Name: "per-sender", Count: "messages", Per: "sender", Rate: "3/1h"},
		limits.Rule{Name: "vip-accepted", Count: "messages", Per: "sender", Rate: "100/1h", CountOn: "accepted",
			Match: limits.Match{Sender: "^vip@"}})
	h.acceptAtMail()
	if got := sessionCodes(t, h, "192.0.2.41", "x@example.org", "x@example.org"); !equal(got, []string{"a", "a"}) {
		t.Fatalf("first session: %v, want [a a]", got)
	}
	if got := sessionCodes(t, h, "192.0.2.42", "x@example.org", "x@example.org", "vip@example.org"); !equal(got, []string{"a", "451", "c"}) {
		t.Fatalf("second session: %v, want [a 451 c] (the third message from x over the limit; vip's reservation needs the end of message)", got)
	}
	h.waitSessions(0)
}
