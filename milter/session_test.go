package milter

import (
	"strings"
	"testing"
	"time"

	"github.com/d--j/go-milter"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"sluice/limits"
	"sluice/policy"
	"sluice/smtp"
)

// harness runs a Server on a unix socket with the given rules.
type harness struct {
	t    *testing.T
	srv  *Server
	sock string
	logs *observer.ObservedLogs
}

func newHarness(t *testing.T, mode smtp.Mode, rules ...limits.Rule) *harness {
	t.Helper()
	return newPolicyHarness(t, setup{Mode: mode, Rules: rules})
}

// session opens an MTA connection and sends CONNECT (and HELO) as Postfix does.
func (h *harness) session(ip string) (*mta, *milter.Action) {
	h.t.Helper()
	return h.sessionAs(ip, "smtpd", "client.example")
}

// message sends one transaction and returns the answer that ended it — a
// refusal, or the end of message's accept — and, if accepted, the
// end-of-message modifications.
func (h *harness) message(s *mta, from string, rcpts ...string) (*milter.Action, []milter.ModifyAction) {
	h.t.Helper()
	act, err := s.Mail(from)
	if err != nil {
		h.t.Fatal(err)
	}
	if act.Type != milter.ActionContinue {
		s.Abort()
		return act, nil
	}
	for _, r := range rcpts {
		if act, err = s.Rcpt(r); err != nil {
			h.t.Fatal(err)
		}
		if act.Type != milter.ActionContinue {
			s.Abort()
			return act, nil
		}
	}
	if _, err := s.HeaderField("Subject", "hello"); err != nil {
		h.t.Fatal(err)
	}
	if _, err := s.HeaderField("X-Sluice-Limit", "forged; key=sender:x"); err != nil {
		h.t.Fatal(err)
	}
	if _, err := s.HeaderEnd(); err != nil {
		h.t.Fatal(err)
	}
	if _, err := s.BodyChunk([]byte("body\r\n")); err != nil {
		h.t.Fatal(err)
	}
	mods, act, err := s.End()
	if err != nil {
		h.t.Fatal(err)
	}
	s.Abort() // Postfix ends every transaction with an abort
	return act, mods
}

func msgsPerSender(rate string, action string) limits.Rule {
	return limits.Rule{Name: "msgs-per-sender", Count: "messages", Per: "sender", Rate: rate, Action: policy.MustAction(action)}
}

func TestSenderLimitRefusesAtMailFrom(t *testing.T) {
	h := newHarness(t, smtp.ModeEnforce, msgsPerSender("10/1h", "tempfail"))
	s, act := h.session("192.0.2.10")
	defer s.Close()
	if act.Type != milter.ActionContinue {
		t.Fatalf("connect: %+v", act)
	}
	accepted, refused := 0, 0
	for i := 0; i < 15; i++ {
		act, _ := h.message(s, "Alice@Example.ORG", "bob@example.net")
		switch act.Type {
		case milter.ActionAccept:
			accepted++
		case milter.ActionRejectWithCode:
			refused++
			if act.SMTPCode != 451 || !strings.Contains(replyText(act), "4.7.1") || !strings.Contains(replyText(act), "msgs-per-sender") {
				t.Errorf("refusal = %d %q, want 451 4.7.1 naming the rule", act.SMTPCode, replyText(act))
			}
		default:
			t.Fatalf("message %d: unexpected action %+v", i, act)
		}
	}
	if accepted != 10 || refused != 5 {
		t.Errorf("accepted %d, refused %d; want 10 and 5", accepted, refused)
	}
	// Another sender on the same connection is not affected, and the
	// session survived five refusals.
	if act, _ := h.message(s, "carol@example.org", "bob@example.net"); act.Type != milter.ActionAccept {
		t.Errorf("second sender refused: %+v", act)
	}
	if n := h.logs.FilterMessage("refused").FilterField(zap.String("rule", "msgs-per-sender")).Len(); n != 5 {
		t.Errorf("%d refusal log lines, want 5", n)
	}
}

func TestTagModeTagsAndRemovesForgedHeaders(t *testing.T) {
	h := newHarness(t, smtp.ModeTag, msgsPerSender("10/1h", "tempfail"))
	s, _ := h.session("192.0.2.11")
	defer s.Close()
	tagged := 0
	for i := 0; i < 15; i++ {
		act, mods := h.message(s, "alice@example.org", "bob@example.net")
		if act.Type != milter.ActionAccept {
			t.Fatalf("message %d refused in tag mode: %+v", i, act)
		}
		removed := false
		for _, m := range mods {
			switch {
			case m.Type == milter.ActionAddHeader && m.HeaderName == "X-Sluice-Limit":
				tagged++
				if !strings.HasPrefix(m.HeaderValue, "msgs-per-sender; key=sender:alice@example.org") {
					t.Errorf("tag header = %q", m.HeaderValue)
				}
			case m.Type == milter.ActionChangeHeader && m.HeaderName == "X-Sluice-Limit" && m.HeaderValue == "" && m.HeaderIndex == 1:
				removed = true
			}
		}
		if !removed {
			t.Errorf("message %d: forged X-Sluice-Limit not removed: %+v", i, mods)
		}
	}
	if tagged != 5 {
		t.Errorf("%d messages tagged, want 5", tagged)
	}
}

func TestConcurrentSlotsFreedAtDisconnect(t *testing.T) {
	h := newHarness(t, smtp.ModeEnforce, limits.Rule{Name: "conn-per-ip", Count: "concurrent", Per: "client_ip", Max: 3})
	var open []*mta
	for i := 0; i < 3; i++ {
		s, act := h.session("198.51.100.7")
		if act.Type != milter.ActionContinue {
			t.Fatalf("session %d refused: %+v", i+1, act)
		}
		open = append(open, s)
	}
	s4, act := h.session("198.51.100.7")
	if act.Type != milter.ActionRejectWithCode || act.SMTPCode != 421 {
		t.Fatalf("4th session: %+v, want 421", act)
	}
	s4.Close()
	// Another client is not affected.
	other, act := h.session("198.51.100.8")
	if act.Type != milter.ActionContinue {
		t.Fatalf("other client refused: %+v", act)
	}
	other.Close()
	open[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, act := h.session("198.51.100.7")
		s.Close()
		if act.Type == milter.ActionContinue {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not freed after a session closed: %+v", act)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, s := range open[1:] {
		s.Close()
	}
}

func TestRefusedRecipientKeepsSession(t *testing.T) {
	h := newHarness(t, smtp.ModeEnforce,
		limits.Rule{Name: "rcpt-cap", Count: "recipients", MaxRcptPerMessage: 2},
		msgsPerSender("100/1h", "reject"))
	s, _ := h.session("192.0.2.12")
	defer s.Close()
	if act, err := s.Mail("alice@example.org"); err != nil || act.Type != milter.ActionContinue {
		t.Fatalf("mail: %+v %v", act, err)
	}
	codes := []int{}
	for _, r := range []string{"a@x.test", "b@x.test", "c@x.test", "d@x.test"} {
		act, err := s.Rcpt(r)
		if err != nil {
			t.Fatal(err)
		}
		code := 0
		if refused(act) {
			code = int(act.SMTPCode)
		}
		codes = append(codes, code)
	}
	if codes[0] != 0 || codes[1] != 0 || codes[2] != 452 || codes[3] != 452 {
		t.Errorf("rcpt codes %v, want two accepted then 452", codes)
	}
	// The session still knows the client: a second message works.
	if _, _, err := s.End(); err != nil {
		t.Fatal(err)
	}
	s.Abort()
	if act, _ := h.message(s, "alice@example.org", "a@x.test"); act.Type != milter.ActionAccept {
		t.Errorf("next message: %+v", act)
	}
}

func TestClientWithoutAddress(t *testing.T) {
	h := newHarness(t, smtp.ModeEnforce, limits.Rule{Name: "conn-per-ip", Count: "concurrent", Per: "client_ip", Max: 1})
	for i := 0; i < 3; i++ {
		s := dialMTA(t, h.sock, milter.WithActions(milter.OptAddHeader))
		act, err := s.Conn("localhost", milter.FamilyUnknown, 0, "")
		if err != nil || act.Type != milter.ActionContinue {
			t.Fatalf("unknown client: %+v %v", act, err)
		}
	}
}
