package milter

import (
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-milter"
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
func (h *harness) session(ip string) (*milter.ClientSession, *milter.Action) {
	h.t.Helper()
	return h.sessionAs(ip, "smtpd", "client.example")
}

// message sends one transaction and returns the MAIL FROM action and, if
// accepted, the end-of-message modifications.
func (h *harness) message(s *milter.ClientSession, from string, rcpts ...string) (*milter.Action, []milter.ModifyAction) {
	h.t.Helper()
	act, err := s.Mail(from, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	if act.Code != milter.ActContinue {
		s.Abort()
		return act, nil
	}
	for _, r := range rcpts {
		if act, err = s.Rcpt(r, nil); err != nil {
			h.t.Fatal(err)
		}
		if act.Code != milter.ActContinue {
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
	if act.Code != milter.ActContinue {
		t.Fatalf("connect: %+v", act)
	}
	accepted, refused := 0, 0
	for i := 0; i < 15; i++ {
		act, _ := h.message(s, "Alice@Example.ORG", "bob@example.net")
		switch act.Code {
		case milter.ActContinue:
			accepted++
		case milter.ActReplyCode:
			refused++
			if act.SMTPCode != 451 || !strings.Contains(act.SMTPText, "4.7.1") || !strings.Contains(act.SMTPText, "msgs-per-sender") {
				t.Errorf("refusal = %d %q, want 451 4.7.1 naming the rule", act.SMTPCode, act.SMTPText)
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
	if act, _ := h.message(s, "carol@example.org", "bob@example.net"); act.Code != milter.ActContinue {
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
		if act.Code != milter.ActContinue {
			t.Fatalf("message %d refused in tag mode: %+v", i, act)
		}
		removed := false
		for _, m := range mods {
			switch {
			case m.Code == milter.ActAddHeader && m.HeaderName == "X-Sluice-Limit":
				tagged++
				if !strings.HasPrefix(m.HeaderValue, "msgs-per-sender; key=sender:alice@example.org") {
					t.Errorf("tag header = %q", m.HeaderValue)
				}
			case m.Code == milter.ActChangeHeader && m.HeaderName == "X-Sluice-Limit" && m.HeaderValue == "" && m.HeaderIndex == 1:
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
	var open []*milter.ClientSession
	for i := 0; i < 3; i++ {
		s, act := h.session("198.51.100.7")
		if act.Code != milter.ActContinue {
			t.Fatalf("session %d refused: %+v", i+1, act)
		}
		open = append(open, s)
	}
	s4, act := h.session("198.51.100.7")
	if act.Code != milter.ActReplyCode || act.SMTPCode != 421 {
		t.Fatalf("4th session: %+v, want 421", act)
	}
	s4.Close()
	// Another client is not affected.
	other, act := h.session("198.51.100.8")
	if act.Code != milter.ActContinue {
		t.Fatalf("other client refused: %+v", act)
	}
	other.Close()
	open[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, act := h.session("198.51.100.7")
		s.Close()
		if act.Code == milter.ActContinue {
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
	if act, err := s.Mail("alice@example.org", nil); err != nil || act.Code != milter.ActContinue {
		t.Fatalf("mail: %+v %v", act, err)
	}
	codes := []int{}
	for _, r := range []string{"a@x.test", "b@x.test", "c@x.test", "d@x.test"} {
		act, err := s.Rcpt(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		codes = append(codes, act.SMTPCode)
	}
	if codes[0] != 0 || codes[1] != 0 || codes[2] != 452 || codes[3] != 452 {
		t.Errorf("rcpt codes %v, want two accepted then 452", codes)
	}
	// The session still knows the client: a second message works.
	if _, mods, err := s.End(); err != nil {
		t.Fatal(err)
	} else if mods == nil {
		s.Abort()
	}
	if act, _ := h.message(s, "alice@example.org", "a@x.test"); act.Code != milter.ActContinue {
		t.Errorf("next message: %+v", act)
	}
}

func TestClientWithoutAddress(t *testing.T) {
	h := newHarness(t, smtp.ModeEnforce, limits.Rule{Name: "conn-per-ip", Count: "concurrent", Per: "client_ip", Max: 1})
	c := milter.NewClientWithOptions("unix", h.sock, milter.ClientOptions{ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, ActionMask: milter.OptAddHeader})
	for i := 0; i < 3; i++ {
		s, err := c.Session()
		if err != nil {
			t.Fatal(err)
		}
		act, err := s.Conn("localhost", milter.FamilyUnknown, 0, "")
		if err != nil || act.Code != milter.ActContinue {
			t.Fatalf("unknown client: %+v %v", act, err)
		}
		defer s.Close()
	}
}
