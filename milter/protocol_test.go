package milter

import (
	"testing"

	"github.com/d--j/go-milter"

	"sluice/limits"
	"sluice/policy"
	"sluice/smtp"
)

// An MTA that offers an older protocol than 6 — Postfix before 2.6,
// Sendmail before 8.14 — and only the actions of protocol 2 is served in
// full: it cannot skip answers, so it gets one to every event it sends
// (a missing one would leave the client waiting, an extra one out of
// step), and refusals, removals of forged fields and tags reach it as
// they reach a protocol 6 MTA, which is spared the answers to header
// fields and body chunks.
func TestOlderProtocolVersions(t *testing.T) {
	// What a protocol 2 MTA offers (libmilter's SMFI_V2_ACTS, SMFI_V2_PROT),
	// and protocol 4 adds to the events it can skip.
	v2Actions := milter.OptAddHeader | milter.OptChangeBody | milter.OptAddRcpt | milter.OptRemoveRcpt |
		milter.OptChangeHeader | milter.OptQuarantine
	v2Protocol := milter.OptNoConnect | milter.OptNoHelo | milter.OptNoMailFrom | milter.OptNoRcptTo |
		milter.OptNoBody | milter.OptNoHeaders | milter.OptNoEOH
	v4Protocol := v2Protocol | milter.OptNoUnknown | milter.OptNoData
	for _, tc := range []struct {
		name      string
		opts      []milter.Option
		noReplies bool // the MTA is spared the answers to header fields and body chunks
	}{
		{"protocol 2", []milter.Option{milter.WithMaximumVersion(2), milter.WithActions(v2Actions), milter.WithProtocols(v2Protocol)}, false},
		{"protocol 4", []milter.Option{milter.WithMaximumVersion(4), milter.WithActions(v2Actions), milter.WithProtocols(v4Protocol)}, false},
		{"protocol 6", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, smtp.ModeEnforce,
				limits.Rule{Name: "per-sender", Count: "messages", Per: "sender", Rate: "1/1h"},
				limits.Rule{Name: "per-ip", Count: "messages", Per: "client_ip", Rate: "1/1h", Action: policy.MustAction("tag")},
				limits.Rule{Name: "bytes", Count: "bytes", Per: "client_ip", Rate: "1MB/1h"})
			s := dialMTA(t, h.sock, tc.opts...)
			if got := s.ProtocolOption(milter.OptNoHeaderReply) && s.ProtocolOption(milter.OptNoBodyReply); got != tc.noReplies {
				t.Errorf("no replies to header fields and body chunks negotiated: %v, want %v", got, tc.noReplies)
			}
			if s.ProtocolOption(milter.OptNoHeaders) || s.ProtocolOption(milter.OptNoBody) {
				t.Fatal("header fields or body not negotiated, but a bytes rule counts them")
			}
			s.set("{daemon_name}", "smtpd")
			if act, err := s.Conn("client.example", milter.FamilyInet, 4321, "192.0.2.50"); err != nil || act.Type != milter.ActionContinue {
				t.Fatalf("connect: %v %v", act, err)
			}
			if act, err := s.Helo("client.example"); err != nil || act.Type != milter.ActionContinue {
				t.Fatalf("helo: %v %v", act, err)
			}

			// The first message: its forged field is removed.
			ms := deliver(t, s, "alice@example.org", [][2]string{{"X-Sluice-Limit", "forged"}, {"Subject", "one"}})
			if rm := mods(ms, milter.ActionChangeHeader); len(rm) != 1 || rm[0].HeaderName != "X-Sluice-Limit" || rm[0].HeaderValue != "" {
				t.Errorf("first message: modifications %v, want the forged field removed", ms)
			}
			// The second from the same sender is refused at MAIL FROM.
			act, err := s.Mail("alice@example.org")
			if err != nil || !refused(act) || act.SMTPCode != 451 {
				t.Fatalf("second message: MAIL FROM answered %v %v, want 451", act, err)
			}
			s.Abort()
			// The third, from another sender, is tagged for the client.
			ms = deliver(t, s, "bob@example.org", [][2]string{{"Subject", "three"}})
			if tags := mods(ms, milter.ActionAddHeader); len(tags) != 1 || tags[0].HeaderName != "X-Sluice-Limit" {
				t.Errorf("third message: modifications %v, want a tag", ms)
			}
		})
	}
}

// deliver sends one message that must be let through at every step, and
// returns the modifications of its end.
func deliver(t *testing.T, s *mta, from string, header [][2]string) []milter.ModifyAction {
	t.Helper()
	step := func(what string, act *milter.Action, err error) {
		t.Helper()
		if err != nil || act.Type != milter.ActionContinue {
			t.Fatalf("%s from %s: %v %v", what, from, act, err)
		}
	}
	act, err := s.Mail(from)
	step("MAIL FROM", act, err)
	act, err = s.Rcpt("rcpt@example.net")
	step("RCPT TO", act, err)
	for _, f := range header {
		act, err = s.HeaderField(f[0], f[1])
		step("header field "+f[0], act, err)
	}
	act, err = s.HeaderEnd()
	step("end of header", act, err)
	act, err = s.BodyChunk([]byte("body\r\n"))
	step("body", act, err)
	ms, act, err := s.End()
	if err != nil || act.Type != milter.ActionAccept {
		t.Fatalf("end of message from %s: %v %v", from, act, err)
	}
	s.Abort()
	return ms
}
