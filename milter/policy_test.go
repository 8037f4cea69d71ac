package milter

// What only the milter protocol can show of the engine's decisions, driven
// by go-milter's client: refusals as SMTP replies that keep the session,
// a pause taken before the reply, quarantine and header changes at end of
// message with the MTA's own indexes, macros turned into facts, and the
// events negotiated from what the engine needs. What the decisions are —
// every stage, action, mode and match — is the engine's table tests'.

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-milter"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"sluice/conf"
	"sluice/limits"
	"sluice/policy"
	"sluice/smtp"
)

func newPolicyHarness(t *testing.T, su setup) *harness {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	srv, sock := serve(t, testEngine(t, su, log), log)
	return &harness{t: t, srv: srv, sock: sock, logs: logs}
}

// sessionAs opens an MTA connection for a client on a listener
// ({daemon_name}) and sends CONNECT and HELO.
func (h *harness) sessionAs(ip, daemon, helo string) (*milter.ClientSession, *milter.Action) {
	h.t.Helper()
	c := milter.NewClientWithOptions("unix", h.sock, milter.ClientOptions{
		Dialer:       &net.Dialer{Timeout: time.Second},
		ReadTimeout:  30 * time.Second,
		WriteTimeout: 5 * time.Second,
		ActionMask:   milter.OptAddHeader | milter.OptChangeHeader | milter.OptQuarantine,
	})
	s, err := c.Session()
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { s.Close() })
	if err := s.Macros(milter.CodeConn, "{daemon_name}", daemon, "j", "mx.example.test"); err != nil {
		h.t.Fatal(err)
	}
	act, err := s.Conn("unknown", milter.FamilyInet, 4321, ip)
	if err != nil {
		h.t.Fatal(err)
	}
	if act.Code == milter.ActContinue {
		if act, err = s.Helo(helo); err != nil {
			h.t.Fatal(err)
		}
	}
	return s, act
}

// mail sends MAIL FROM with the macros Postfix sends at that stage.
func mail(t *testing.T, s *milter.ClientSession, from, user string) *milter.Action {
	t.Helper()
	if err := s.Macros(milter.CodeMail, "{auth_authen}", user, "i", ""); err != nil {
		t.Fatal(err)
	}
	act, err := s.Mail(from, nil)
	if err != nil {
		t.Fatal(err)
	}
	return act
}

func mods(ms []milter.ModifyAction, code milter.ModifyActCode) []milter.ModifyAction {
	var out []milter.ModifyAction
	for _, m := range ms {
		if m.Code == code {
			out = append(out, m)
		}
	}
	return out
}

func senderRule(rate, action string) limits.Rule {
	return limits.Rule{Name: "per-sender", Count: "messages", Per: "sender", Rate: rate, Action: policy.MustAction(action)}
}

// hold: over-limit messages are accepted and quarantined with the reason;
// the others are not.
func TestHold(t *testing.T) {
	h := newPolicyHarness(t, setup{Rules: []limits.Rule{senderRule("2/1h", "hold")}})
	s, _ := h.session("192.0.2.20")
	for i := 1; i <= 4; i++ {
		act, ms := h.message(s, "script@example.org", "ops@example.net")
		if act.Code != milter.ActContinue {
			t.Fatalf("message %d: %+v; hold accepts", i, act)
		}
		q := mods(ms, milter.ActQuarantine)
		if i <= 2 && len(q) != 0 {
			t.Errorf("message %d within the limit held: %+v", i, q)
		}
		if i > 2 {
			if len(q) != 1 || q[0].Reason != "sluice: per-sender crossed by sender:script@example.org" {
				t.Errorf("message %d: quarantine %+v", i, q)
			}
			// Postfix drops the quarantine reason: the header keeps it.
			tags := mods(ms, milter.ActAddHeader)
			if len(tags) != 1 || !strings.HasPrefix(tags[0].HeaderValue, "per-sender; key=sender:script@example.org; count=") ||
				!strings.HasSuffix(tags[0].HeaderValue, "; action=hold") {
				t.Errorf("message %d: headers %+v, want one saying why it is held", i, tags)
			}
		}
	}
	if n := h.logs.FilterMessage("held").Len(); n != 2 {
		t.Errorf("%d 'held' log lines, want 2", n)
	}
}

// delay: the reply comes after the pause; the message goes on.
func TestDelay(t *testing.T) {
	const pause = 300 * time.Millisecond
	h := newPolicyHarness(t, setup{Rules: []limits.Rule{{Name: "tarpit", Count: "messages", Per: "client_ip", Rate: "1/1h", Action: policy.MustAction("delay"), Delay: conf.Duration(pause)}}})
	s, _ := h.session("192.0.2.21")
	var took [3]time.Duration
	for i := range took {
		start := time.Now()
		act := mail(t, s, "fast@example.org", "")
		took[i] = time.Since(start)
		if act.Code != milter.ActContinue {
			t.Fatalf("message %d: %+v; delay continues", i+1, act)
		}
		s.Abort()
	}
	t.Logf("MAIL FROM replies took %v", took)
	if took[1] < pause || took[2] < pause {
		t.Errorf("replies over the limit took %v and %v, want at least %v", took[1], took[2], pause)
	}
	if n := h.logs.FilterMessage("delayed").Len(); n != 2 {
		t.Errorf("%d 'delayed' log lines, want 2", n)
	}
}

// disconnect: 421 4.7.0, the reply that makes the MTA hang up.
func TestDisconnect(t *testing.T) {
	h := newPolicyHarness(t, setup{Rules: []limits.Rule{
		senderRule("1/1h", "disconnect"),
		{Name: "custom", Count: "messages", Per: "client_ip", Rate: "5/1h", Action: policy.MustAction("disconnect"), Reply: policy.MustReply("421 4.7.0 Go away, {client_ip}")},
	}})
	s, _ := h.session("192.0.2.23")
	mail(t, s, "a@example.org", "")
	s.Abort()
	act := mail(t, s, "a@example.org", "")
	if act.Code != milter.ActReplyCode || act.SMTPCode != 421 || !strings.HasPrefix(act.SMTPText, "4.7.0 ") {
		t.Fatalf("over the limit: %+v, want 421 4.7.0", act)
	}
	t.Logf("reply: %s", act.SMTPText)
	for i := 0; i < 5; i++ {
		s.Abort()
		act = mail(t, s, fmt.Sprintf("b%d@example.org", i), "")
	}
	if act.SMTPCode != 421 || act.SMTPText != "4.7.0 Go away, 192.0.2.23" {
		t.Errorf("custom disconnect reply %q", act.SMTPText)
	}
}

// The header name is configurable and only headers of ours are removed,
// whatever their case and however many there are.
func TestForgedHeadersRemoved(t *testing.T) {
	h := newPolicyHarness(t, setup{Mode: smtp.ModeTag, Rules: []limits.Rule{senderRule("1/1h", "")}, Tag: "X-Sluice-Rate"})
	s, _ := h.session("192.0.2.28")
	if act := mail(t, s, "a@example.org", ""); act.Code != milter.ActContinue {
		t.Fatal(act)
	}
	if _, err := s.Rcpt("b@example.net", nil); err != nil {
		t.Fatal(err)
	}
	for _, hd := range [][2]string{
		{"Subject", "hi"},
		{"x-sluice-limit", "forged 1"},
		{"Received", "from somewhere"},
		{"X-SLUICE-LIMIT", "forged 2"},
		{"X-Sluice-Spam", "forged 3"},
		{"X-Sluicey", "not ours"},
		{"X-Sluice-Limit", "forged 4"},
	} {
		if _, err := s.HeaderField(hd[0], hd[1]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.HeaderEnd(); err != nil {
		t.Fatal(err)
	}
	ms, act, err := s.End()
	if err != nil || act.Code != milter.ActContinue {
		t.Fatal(act, err)
	}
	var removed []string
	for _, m := range mods(ms, milter.ActChangeHeader) {
		if m.HeaderValue != "" {
			t.Errorf("a change that is not a removal: %+v", m)
		}
		removed = append(removed, fmt.Sprintf("%s#%d", strings.ToLower(m.HeaderName), m.HeaderIndex))
	}
	// Last first, indexes per name without regard to case.
	if got := strings.Join(removed, " "); got != "x-sluice-limit#3 x-sluice-spam#1 x-sluice-limit#2 x-sluice-limit#1" {
		t.Errorf("removed %s", got)
	}
	if n := len(mods(ms, milter.ActAddHeader)); n != 0 {
		t.Errorf("the first message got %d tags", n)
	}
	s.Abort()
	// The second message crosses the limit: its tag has the configured name.
	_, ms = h.message(s, "a@example.org", "b@example.net")
	if tags := mods(ms, milter.ActAddHeader); len(tags) != 1 || tags[0].HeaderName != "X-Sluice-Rate" {
		t.Errorf("tags %+v, want one X-Sluice-Rate", tags)
	}
}

// The {daemon_name} macro at CONNECT is the listener, and {auth_authen} at
// MAIL FROM the login: together they pick a rule that only the submission
// port's authenticated users meet.
func TestListenerAndLoginFromMacros(t *testing.T) {
	auth := true
	h := newPolicyHarness(t, setup{Rules: []limits.Rule{
		{Name: "submission-user", Count: "messages", Per: "sasl_user", Rate: "1/1h", Match: limits.Match{Listener: []string{"submission"}, Authenticated: &auth}},
	}})
	second := func(daemon, user string) *milter.Action {
		s, _ := h.sessionAs("192.0.2.30", daemon, "client.example")
		mail(t, s, "alice@example.org", user)
		s.Abort()
		return mail(t, s, "alice@example.org", user)
	}
	if act := second("submission", "alice"); act.SMTPCode != 451 || !strings.Contains(act.SMTPText, "sasl_user:alice") {
		t.Errorf("submission, alice: %+v, want 451 for sasl_user:alice", act)
	}
	for _, c := range [][2]string{{"smtpd", "bob"}, {"submission", ""}} {
		if act := second(c[0], c[1]); act.Code != milter.ActContinue {
			t.Errorf("listener %q, login %q: %+v, want continue", c[0], c[1], act)
		}
	}
}

// negotiate leaves out every event the engine does not need and asks for
// the macros of the facts it reads: each need turns exactly its own flag.
func TestNegotiation(t *testing.T) {
	needs := []struct {
		name string
		set  func(*smtp.Needs)
		flag milter.OptProtocol // cleared when needed
	}{
		{"helo", func(n *smtp.Needs) { n.Helo = true }, milter.OptNoHelo},
		{"rcpt", func(n *smtp.Needs) { n.Rcpt = true }, milter.OptNoRcptTo},
		{"header", func(n *smtp.Needs) { n.Header = true }, milter.OptNoHeaders},
		{"body", func(n *smtp.Needs) { n.Body = true }, milter.OptNoBody},
		{"edits", func(n *smtp.Needs) { n.Edits = true }, milter.OptNoEOH},
	}
	var all milter.OptProtocol
	for _, n := range needs {
		all |= n.flag
	}
	for _, tc := range needs {
		t.Run(tc.name, func(t *testing.T) {
			var n smtp.Needs
			tc.set(&n)
			actions, protocol, _ := negotiate(n)
			if protocol&all != all&^tc.flag {
				t.Errorf("protocol %#x, want only %#x cleared of %#x", protocol, tc.flag, all)
			}
			if protocol&(milter.OptNoMailFrom|milter.OptNoConnect) != 0 || protocol&(milter.OptNoUnknown|milter.OptNoData) != milter.OptNoUnknown|milter.OptNoData {
				t.Errorf("protocol %#x: connect and MAIL FROM are always wanted, DATA and unknown commands never", protocol)
			}
			if want := milter.OptAddHeader | milter.OptChangeHeader | milter.OptQuarantine | milter.OptSetSymList; actions&want != want {
				t.Errorf("actions %#x", actions)
			}
		})
	}
	for _, tc := range []struct {
		needs smtp.Needs
		mail  string
	}{
		{smtp.Needs{}, "{daemon_name}"},
		{smtp.Needs{QueueID: true}, "{daemon_name} i"},
		{smtp.Needs{QueueID: true, SASLUser: true}, "{daemon_name} i {auth_authen}"},
	} {
		_, _, syms := negotiate(tc.needs)
		if got := strings.Join(syms[milter.StageMailFrom], " "); got != tc.mail {
			t.Errorf("needs %+v: MAIL FROM macros %q, want %q", tc.needs, got, tc.mail)
		}
		if got := strings.Join(syms[milter.StageConnect], " "); got != "j {daemon_name} {client_addr}" {
			t.Errorf("connect macros %q", got)
		}
	}
}

// A refusal at MAIL FROM never names the queue id of the message before
// it (Postfix sends {i} only from RCPT or end of message on).
func TestQueueIDPerTransaction(t *testing.T) {
	h := newPolicyHarness(t, setup{Rules: []limits.Rule{senderRule("1/1h", "")}})
	s, _ := h.session("192.0.2.35")
	mail(t, s, "a@example.org", "")
	if _, err := s.Rcpt("b@example.net", nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Macros(milter.CodeEOB, "i", "4ABC123"); err != nil {
		t.Fatal(err)
	}
	if _, act, err := s.End(); err != nil || act.Code != milter.ActContinue {
		t.Fatal(act, err)
	}
	s.Abort()
	if act := mail(t, s, "a@example.org", ""); act.SMTPCode != 451 {
		t.Fatalf("second message: %+v", act)
	}
	lines := h.logs.FilterMessage("refused").All()
	if len(lines) != 1 || lines[0].ContextMap()["queue_id"] != "" {
		t.Errorf("refusal log %v: want one line without the last message's queue id", lines)
	}
}

// A message a local program handed Postfix (cleanup's connect: port 0)
// or Sendmail -bs (family unknown) is refused at its end, never at a
// recipient, which Postfix cannot refuse for it; an SMTP client on port
// 4321 is refused at the recipient.
func TestLocalSubmissionRefusedAtEndOfMessage(t *testing.T) {
	h := newPolicyHarness(t, setup{Rules: []limits.Rule{{Name: "one-rcpt", Count: "recipients", Per: "sender", Rate: "1/1h"}}})
	for _, tc := range []struct {
		name   string
		family milter.ProtoFamily
		port   uint16
		addr   string
		local  bool
	}{
		{"postfix sendmail(1)", milter.FamilyInet, 0, "127.0.0.1", true},
		{"sendmail -bs", milter.FamilyUnknown, 0, "", true},
		{"smtp", milter.FamilyInet, 4321, "127.0.0.1", false},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			c := milter.NewClientWithOptions("unix", h.sock, milter.ClientOptions{
				Dialer: &net.Dialer{Timeout: time.Second}, ReadTimeout: 30 * time.Second, WriteTimeout: 5 * time.Second,
				ActionMask: milter.OptAddHeader | milter.OptChangeHeader | milter.OptQuarantine,
			})
			s, err := c.Session()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, err := s.Conn("localhost", tc.family, tc.port, tc.addr); err != nil {
				t.Fatal(err)
			}
			from := "cron-" + strings.ReplaceAll(tc.name, " ", "") + "@example.org"
			if act := mail(t, s, from, ""); act.Code != milter.ActContinue {
				t.Fatalf("MAIL FROM: %+v", act)
			}
			var rcpt *milter.Action
			for _, r := range []string{"a@example.net", "b@example.net"} {
				if rcpt, err = s.Rcpt(r, nil); err != nil {
					t.Fatal(err)
				}
			}
			if got := rcpt.Code == milter.ActContinue; got != tc.local {
				t.Fatalf("second RCPT: %+v; local %v", rcpt, tc.local)
			}
			if !tc.local {
				return
			}
			if _, err := s.HeaderField("Subject", "cron"); err != nil {
				t.Fatal(err)
			}
			if _, err := s.HeaderEnd(); err != nil {
				t.Fatal(err)
			}
			_, act, err := s.BodyReadFrom(strings.NewReader("output\r\n"))
			if err != nil {
				t.Fatal(err)
			}
			if act.SMTPCode != 451 || !strings.Contains(act.SMTPText, "one-rcpt") {
				t.Errorf("end of message: %+v; want the rule's 451", act)
			}
		})
	}
}
