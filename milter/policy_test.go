package milter

// What only the milter protocol can show of the engine's decisions, driven
// by go-milter's client: refusals as SMTP replies that keep the session,
// a pause taken before the reply, quarantine and header changes at end of
// message with the MTA's own indexes, macros turned into facts, and the
// events negotiated from what the engine needs. What the decisions are —
// every stage, action, mode and match — is the engine's table tests'.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/d--j/go-milter"
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
func (h *harness) sessionAs(ip, daemon, helo string) (*mta, *milter.Action) {
	h.t.Helper()
	s := dialMTA(h.t, h.sock)
	s.set("{daemon_name}", daemon, "j", "mx.example.test")
	act, err := s.Conn("unknown", milter.FamilyInet, 4321, ip)
	if err != nil {
		h.t.Fatal(err)
	}
	if act.Type == milter.ActionContinue {
		if act, err = s.Helo(helo); err != nil {
			h.t.Fatal(err)
		}
	}
	return s, act
}

// mail sends MAIL FROM with the macros Postfix sends at that stage.
func mail(t *testing.T, s *mta, from, user string) *milter.Action {
	t.Helper()
	s.set("{auth_authen}", user, "i", "")
	act, err := s.Mail(from)
	if err != nil {
		t.Fatal(err)
	}
	return act
}

func mods(ms []milter.ModifyAction, code milter.ModifyActionType) []milter.ModifyAction {
	var out []milter.ModifyAction
	for _, m := range ms {
		if m.Type == code {
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
		if act.Type != milter.ActionAccept {
			t.Fatalf("message %d: %+v; hold accepts", i, act)
		}
		q := mods(ms, milter.ActionQuarantine)
		if i <= 2 && len(q) != 0 {
			t.Errorf("message %d within the limit held: %+v", i, q)
		}
		if i > 2 {
			if len(q) != 1 || q[0].Reason != "sluice: per-sender crossed by sender:script@example.org" {
				t.Errorf("message %d: quarantine %+v", i, q)
			}
			// Postfix drops the quarantine reason: the header keeps it.
			tags := mods(ms, milter.ActionAddHeader)
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
		if act.Type != milter.ActionContinue {
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
	if act.Type != milter.ActionRejectWithCode || act.SMTPCode != 421 || !strings.HasPrefix(replyText(act), "4.7.0 ") {
		t.Fatalf("over the limit: %+v, want 421 4.7.0", act)
	}
	t.Logf("reply: %s", replyText(act))
	for i := 0; i < 5; i++ {
		s.Abort()
		act = mail(t, s, fmt.Sprintf("b%d@example.org", i), "")
	}
	if act.SMTPCode != 421 || replyText(act) != "4.7.0 Go away, 192.0.2.23" {
		t.Errorf("custom disconnect reply %q", replyText(act))
	}
}

// The header name is configurable and only headers of ours are removed,
// whatever their case and however many there are.
func TestForgedHeadersRemoved(t *testing.T) {
	h := newPolicyHarness(t, setup{Mode: smtp.ModeTag, Rules: []limits.Rule{senderRule("1/1h", "")}, Tag: "X-Sluice-Rate"})
	s, _ := h.session("192.0.2.28")
	if act := mail(t, s, "a@example.org", ""); act.Type != milter.ActionContinue {
		t.Fatal(act)
	}
	if _, err := s.Rcpt("b@example.net"); err != nil {
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
	if err != nil || act.Type != milter.ActionAccept {
		t.Fatal(act, err)
	}
	var removed []string
	for _, m := range mods(ms, milter.ActionChangeHeader) {
		if m.HeaderValue != "" {
			t.Errorf("a change that is not a removal: %+v", m)
		}
		removed = append(removed, fmt.Sprintf("%s#%d", strings.ToLower(m.HeaderName), m.HeaderIndex))
	}
	// Last first, indexes per name without regard to case.
	if got := strings.Join(removed, " "); got != "x-sluice-limit#3 x-sluice-spam#1 x-sluice-limit#2 x-sluice-limit#1" {
		t.Errorf("removed %s", got)
	}
	if n := len(mods(ms, milter.ActionAddHeader)); n != 0 {
		t.Errorf("the first message got %d tags", n)
	}
	s.Abort()
	// The second message crosses the limit: its tag has the configured name.
	_, ms = h.message(s, "a@example.org", "b@example.net")
	if tags := mods(ms, milter.ActionAddHeader); len(tags) != 1 || tags[0].HeaderName != "X-Sluice-Rate" {
		t.Errorf("tags %+v, want one X-Sluice-Rate", tags)
	}
}

// A forged field whose name go-milter will not write back (a hostile peer
// may send one; the MTAs do not) stays, with a log line, and the message
// and its other edits go through.
func TestForgedFieldWithUnwritableName(t *testing.T) {
	h := newPolicyHarness(t, setup{Mode: smtp.ModeTag, Rules: []limits.Rule{senderRule("1/1h", "")}})
	s, _ := h.session("192.0.2.29")
	mail(t, s, "a@example.org", "")
	if _, err := s.Rcpt("b@example.net"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"X-Sluice-Limit\x7f", "X-Sluice-Limit"} {
		if _, err := s.HeaderField(name, "forged"); err != nil {
			t.Fatal(err)
		}
	}
	ms, act, err := s.End()
	if err != nil || act.Type != milter.ActionAccept {
		t.Fatal(act, err)
	}
	if rm := mods(ms, milter.ActionChangeHeader); len(rm) != 1 || rm[0].HeaderName != "X-Sluice-Limit" || rm[0].HeaderIndex != 1 {
		t.Errorf("removals %v, want only X-Sluice-Limit #1", rm)
	}
	if n := h.logs.FilterMessage("forged header field not removed: its name cannot be written back to the MTA").Len(); n != 1 {
		t.Errorf("%d log lines of a field not removed, want 1", n)
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
	if act := second("submission", "alice"); act.SMTPCode != 451 || !strings.Contains(replyText(act), "sasl_user:alice") {
		t.Errorf("submission, alice: %+v, want 451 for sasl_user:alice", act)
	}
	for _, c := range [][2]string{{"smtpd", "bob"}, {"submission", ""}} {
		if act := second(c[0], c[1]); act.Type != milter.ActionContinue {
			t.Errorf("listener %q, login %q: %+v, want continue", c[0], c[1], act)
		}
	}
}

// negotiate leaves out every event the engine does not need, spares the
// MTA the wait for every answer that is always continue, and asks for the
// macros of the facts it reads: each need turns exactly its own flag.
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
		{"connect answered", func(n *smtp.Needs) { n.Answers.Connect = true }, milter.OptNoConnReply},
		{"helo answered", func(n *smtp.Needs) { n.Answers.Helo = true }, milter.OptNoHeloReply},
		{"mail answered", func(n *smtp.Needs) { n.Answers.Mail = true }, milter.OptNoMailReply},
		{"rcpt answered", func(n *smtp.Needs) { n.Answers.Rcpt = true }, milter.OptNoRcptReply},
	}
	var all milter.OptProtocol
	for _, n := range needs {
		all |= n.flag
	}
	// Never wanted: DATA, unknown commands, the end of the header, and
	// answers to header fields and body chunks.
	never := milter.OptNoData | milter.OptNoUnknown | milter.OptNoEOH | milter.OptNoHeaderReply | milter.OptNoBodyReply
	for _, tc := range needs {
		t.Run(tc.name, func(t *testing.T) {
			var n smtp.Needs
			tc.set(&n)
			o := negotiate(n)
			if o.protocol&all != all&^tc.flag {
				t.Errorf("protocol %v, want only %v cleared of %v", o.protocol, tc.flag, all)
			}
			if o.protocol&(milter.OptNoMailFrom|milter.OptNoConnect) != 0 || o.protocol&never != never {
				t.Errorf("protocol %v: connect and MAIL FROM are always wanted, %v never", o.protocol, never)
			}
			if want := milter.OptAddHeader | milter.OptChangeHeader | milter.OptQuarantine; o.actions != want {
				t.Errorf("actions %v, want %v", o.actions, want)
			}
		})
	}
	for _, tc := range []struct {
		needs           smtp.Needs
		mail, rcpt, eom string
	}{
		{smtp.Needs{}, "", "", ""},
		{smtp.Needs{QueueID: true}, "i", "i", "i"},
		{smtp.Needs{QueueID: true, SASLUser: true}, "i {auth_authen}", "i", "i"},
	} {
		m := negotiate(tc.needs).macros
		for _, st := range []struct {
			name  string
			stage milter.MacroStage
			want  string
		}{
			{"connect", milter.StageConnect, "{daemon_name}"},
			{"helo", milter.StageHelo, ""},
			{"mail", milter.StageMail, tc.mail},
			{"rcpt", milter.StageRcpt, tc.rcpt},
			{"end of message", milter.StageEOM, tc.eom},
		} {
			// An empty list, not none: the MTA would send its own.
			if m[st.stage] == nil {
				t.Errorf("needs %+v: no macro list at %s", tc.needs, st.name)
			}
			if got := strings.Join(m[st.stage], " "); got != st.want {
				t.Errorf("needs %+v: %s macros %q, want %q", tc.needs, st.name, got, st.want)
			}
		}
	}
}

// A refusal at MAIL FROM never names the queue id of the message before
// it (Postfix sends {i} only from RCPT or end of message on).
func TestQueueIDPerTransaction(t *testing.T) {
	h := newPolicyHarness(t, setup{Rules: []limits.Rule{senderRule("1/1h", "")}})
	s, _ := h.session("192.0.2.35")
	mail(t, s, "a@example.org", "")
	if _, err := s.Rcpt("b@example.net"); err != nil {
		t.Fatal(err)
	}
	s.set("i", "4ABC123")
	if _, act, err := s.End(); err != nil || act.Type != milter.ActionAccept {
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
			s := dialMTA(t, h.sock)
			if _, err := s.Conn("localhost", tc.family, tc.port, tc.addr); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Helo("localhost"); err != nil {
				t.Fatal(err)
			}
			from := "cron-" + strings.ReplaceAll(tc.name, " ", "") + "@example.org"
			if act := mail(t, s, from, ""); act.Type != milter.ActionContinue {
				t.Fatalf("MAIL FROM: %+v", act)
			}
			var rcpt *milter.Action
			var err error
			for _, r := range []string{"a@example.net", "b@example.net"} {
				if rcpt, err = s.Rcpt(r); err != nil {
					t.Fatal(err)
				}
			}
			if got := rcpt.Type == milter.ActionContinue; got != tc.local {
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
			if act.SMTPCode != 451 || !strings.Contains(replyText(act), "one-rcpt") {
				t.Errorf("end of message: %+v; want the rule's 451", act)
			}
		})
	}
}
