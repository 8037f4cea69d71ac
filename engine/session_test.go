package engine_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"sluice/conf"
	"sluice/engine"
	"sluice/limits"
	"sluice/lists"
	"sluice/policy"
	"sluice/smtp"
)

func senderRule(rate, action string) limits.Rule {
	return limits.Rule{Name: "per-sender", Count: "messages", Per: "sender", Rate: rate, Action: policy.MustAction(action)}
}

// mailOnly sends MAIL FROM and ends the transaction there, as a client
// that gives up after MAIL FROM (Postfix aborts).
func (v *env) mailOnly(s *engine.Session, from string) smtp.Decision {
	v.t.Helper()
	s.Mail(from, "")
	d := s.Stage(context.Background(), smtp.Mail)
	s.EndMessage(context.Background(), false)
	return d
}

// Escalation: after soft_refusals every reply waits refusal_delay, good
// ones too; after hard_refusals the next command gets 421 whatever it
// is; a delivered message starts the count again.
func TestEscalation(t *testing.T) {
	const pause = 100 * time.Millisecond
	v := newEnv(t, setup{
		Decide: func(c *policy.Config) {
			c.SoftRefusals, c.HardRefusals, c.RefusalDelay = policy.Count(2), policy.Count(4), conf.Duration(pause)
		},
		Rules: []limits.Rule{{Name: "spammer", Count: "messages", Per: "sender", Rate: "1/1h", Match: limits.Match{Sender: "^spam@"}}},
	})
	s, _ := v.open("192.0.2.31")
	for i, st := range []struct {
		from  string
		kind  smtp.Kind
		pause time.Duration
		esc   smtp.Action
	}{
		{"spam@example.org", smtp.Continue, 0, smtp.ActionNone}, // counted
		{"spam@example.org", smtp.Reply, 0, smtp.ActionNone},    // refusal 1
		{"spam@example.org", smtp.Reply, 0, smtp.ActionNone},    // refusal 2
		{"ok@example.org", smtp.Continue, pause, smtp.ActionDelay},
		{"spam@example.org", smtp.Reply, pause, smtp.ActionDelay}, // refusal 3
		{"spam@example.org", smtp.Reply, pause, smtp.ActionDelay}, // refusal 4
		{"ok@example.org", smtp.Disconnect, 0, smtp.ActionDisconnect},
	} {
		d := v.mailOnly(s, st.from)
		if d.Kind != st.kind || d.Pause != st.pause || d.Escalation != st.esc {
			t.Errorf("step %d (%s): %s pause %v escalation %s; want %s %v %s", i+1, st.from, d.Kind, d.Pause, d.Escalation, st.kind, st.pause, st.esc)
		}
		if d.Kind == smtp.Disconnect && d.Reply != "421 4.7.0 Too many refused commands; closing connection" {
			t.Errorf("disconnect reply %q", d.Reply)
		}
	}
	if n := v.lines("escalated", ""); n != 4 {
		t.Errorf("%d 'escalated' lines, want 4", n)
	}

	// A delivered message resets the count: three refusals after it get
	// 451 again, neither paused nor 421.
	s, _ = v.open("192.0.2.32")
	v.mailOnly(s, "spam@example.net")
	for range 3 {
		v.mailOnly(s, "spam@example.net")
	}
	if m := v.send(s, "ok@example.org", "", []string{"b@example.net"}); !m.delivered {
		t.Fatalf("a good message after 3 refusals: %+v", m.last())
	}
	for range 2 {
		if d := v.mailOnly(s, "spam@example.net"); d.Kind != smtp.Reply || d.Pause != 0 {
			t.Errorf("after a delivered message: %s pause %v, want 451 at once", d.Kind, d.Pause)
		}
	}
}

// In tag mode and in dry-run nothing escalates, however often limits are
// crossed: the roll-out modes change nothing for the client.
func TestNoEscalationOutsideEnforce(t *testing.T) {
	for _, mode := range []smtp.Mode{smtp.ModeTag, smtp.ModeDryRun} {
		v := newEnv(t, setup{
			Mode:   mode,
			Decide: func(c *policy.Config) { c.SoftRefusals, c.HardRefusals = policy.Count(1), policy.Count(2) },
			Rules:  []limits.Rule{senderRule("1/1h", "")},
		})
		s, _ := v.open("192.0.2.33")
		for i := range 6 {
			if d := v.mailOnly(s, "a@example.org"); d.Kind != smtp.Continue || d.Pause != 0 {
				t.Fatalf("%s: message %d: %+v", mode, i+1, d)
			}
		}
		if n := v.lines("escalated", ""); n != 0 {
			t.Errorf("%s: %d escalations", mode, n)
		}
	}
}

// Accept at MAIL FROM: only when the option is on and nothing later can
// change the answer; a hold or a count_on = "accepted" reservation waits
// for the end of the message, and a policy that reads recipients, bytes
// or writes headers never accepts early. An accepted message counts as
// delivered: it clears the session's refusals.
func TestAcceptAtMail(t *testing.T) {
	builtin := []limits.Rule{
		{Name: "conn-per-ip", Count: "concurrent", Per: "client_ip", Max: 20},
		{Name: "msgs-per-sender", Count: "messages", Per: "sender", Rate: "2/1h"},
	}
	for _, tc := range []struct {
		name   string
		mode   smtp.Mode
		rules  []limits.Rule
		accept bool
		want   string // kinds at MAIL FROM for a, a, a, b
		needs  bool   // Needs().AcceptAtMail
	}{
		{"built-in rules", smtp.ModeEnforce, builtin, true, "accept accept reply accept", true},
		{"option off", smtp.ModeEnforce, builtin, false, "continue continue reply continue", false},
		{"tag mode writes headers", smtp.ModeTag, builtin, true, "continue continue continue continue", false},
		{"a recipient rule", smtp.ModeEnforce, append([]limits.Rule{{Name: "r", Count: "recipients", Per: "sender", Rate: "100/1h"}}, builtin...), true,
			"continue continue reply continue", false},
		{"a bytes rule", smtp.ModeEnforce, append([]limits.Rule{{Name: "b", Count: "bytes", Per: "sender", Rate: "1000000/1h"}}, builtin...), true,
			"continue continue reply continue", false},
		// The reservation waits for the end of the message, in each session.
		{"count_on accepted", smtp.ModeEnforce, []limits.Rule{{Name: "m", Count: "messages", Per: "sender", Rate: "2/1h", CountOn: "accepted"}}, true,
			"continue continue reply continue", true},
		{"a reservation not taken", smtp.ModeEnforce, append([]limits.Rule{{Name: "vip", Count: "messages", Per: "sender", Rate: "9/1h", CountOn: "accepted",
			Match: limits.Match{Sender: "^vip@"}}}, builtin...), true, "accept accept reply accept", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newEnv(t, setup{Mode: tc.mode, Rules: tc.rules, Accept: tc.accept})
			if got := v.eng.Needs().AcceptAtMail; got != tc.needs {
				t.Errorf("Needs().AcceptAtMail = %v", got)
			}
			s, _ := v.open("192.0.2.40")
			var kinds []string
			for _, from := range []string{"a@example.org", "a@example.org", "a@example.org", "b@example.org"} {
				kinds = append(kinds, v.send(s, from, "", []string{"r@example.net"}).mail.Kind.String())
			}
			if got := strings.Join(kinds, " "); got != tc.want {
				t.Errorf("MAIL FROM answered %s, want %s", got, tc.want)
			}
		})
	}
	// A hold waits for the end of the message, where it is applied.
	v := newEnv(t, setup{Rules: []limits.Rule{senderRule("1/1h", "hold")}, Accept: true})
	s, _ := v.open("192.0.2.41")
	v.send(s, "h@example.org", "", nil)
	m := v.send(s, "h@example.org", "", nil)
	if m.mail.Kind != smtp.Continue || len(editsOf(m.edits, smtp.Quarantine)) != 1 {
		t.Errorf("a held message: MAIL FROM %s, edits %+v", m.mail.Kind, m.edits)
	}
}

// Forged copies of sluice's fields are removed, last first, with their
// index counted per name without regard to case; a trusted client's stay.
func TestForgedHeadersRemoved(t *testing.T) {
	v := newEnv(t, setup{Mode: smtp.ModeTag, Rules: []limits.Rule{senderRule("1/1h", "")}, Tag: "X-Sluice-Rate", Trusted: []string{"10.0.0.0/8"}})
	header := [][2]string{{"x-sluice-limit", "1"}, {"X-Sluicey", "not ours"}, {"X-SLUICE-LIMIT", "2"}, {"X-Sluice-Spam", "3"}}
	s, _ := v.open("192.0.2.28")
	m := v.send(s, "a@example.org", "", []string{"b@example.net"}, header...)
	var removed []string
	for _, e := range editsOf(m.edits, smtp.Remove) {
		removed = append(removed, fmt.Sprintf("%s#%d", strings.ToLower(e.Name), e.Index))
	}
	if got := strings.Join(removed, " "); got != "x-sluice-spam#1 x-sluice-limit#2 x-sluice-limit#1" {
		t.Errorf("removed %s", got)
	}
	if n := len(editsOf(m.edits, smtp.Add)); n != 0 {
		t.Errorf("the first message got %d tags", n)
	}
	// The second crosses the limit: its tag has the configured name, and
	// the removals come first.
	m = v.send(s, "a@example.org", "", []string{"b@example.net"}, header...)
	if last := m.edits[len(m.edits)-1]; last.Kind != smtp.Add || last.Name != "X-Sluice-Rate" || len(editsOf(m.edits, smtp.Remove)) != 3 {
		t.Errorf("edits %+v: three removals, then one X-Sluice-Rate", m.edits)
	}
	// A trusted client's fields were written by sluice: they stay.
	s, _ = v.open("10.1.2.3")
	if m := v.send(s, "t@example.org", "", nil, header...); len(m.edits) != 0 {
		t.Errorf("a trusted client's message was edited: %+v", m.edits)
	}
}

// A reply template is filled in and '%' is doubled for the MTA; the key
// escapes '%' as %25 (keys are injective), which is doubled too.
func TestReplyTemplate(t *testing.T) {
	v := newEnv(t, setup{Rules: []limits.Rule{{
		Name: "per-sender", Count: "messages", Per: "sender", Rate: "1/1h",
		Reply: policy.MustReply("451 4.7.1 Too many messages from {sender} ({client_ip}, {rule}, {key}, {limit}); try again in {retry_after}"),
	}}})
	s, _ := v.open("192.0.2.24")
	v.mailOnly(s, "100%@example.org")
	d := v.mailOnly(s, "100%@example.org")
	want := "451 4.7.1 Too many messages from 100%%@example.org (192.0.2.24, per-sender, sender:100%%25@example.org, 1/1h); try again in 1h"
	if d.Kind != smtp.Reply || d.Reply != want {
		t.Errorf("reply %q\nwant  %q", d.Reply, want)
	}
}

// Several delays at one stage add up to max_delay, and no further.
func TestDelaysCappedByMaxDelay(t *testing.T) {
	v := newEnv(t, setup{
		Decide: func(c *policy.Config) { c.MaxDelay = conf.Duration(200 * time.Millisecond) },
		Rules: []limits.Rule{
			{Name: "a", Count: "messages", Per: "client_ip", Rate: "1/1h", Action: policy.MustAction("delay"), Delay: conf.Duration(150 * time.Millisecond)},
			{Name: "b", Count: "messages", Per: "sender", Rate: "1/1h", Action: policy.MustAction("delay"), Delay: conf.Duration(150 * time.Millisecond)},
		},
	})
	s, _ := v.open("192.0.2.22")
	v.mailOnly(s, "x@example.org")
	if d := v.mailOnly(s, "x@example.org"); d.Pause != 200*time.Millisecond || d.Kind != smtp.Continue {
		t.Errorf("two 150ms delays under a 200ms cap: %+v", d)
	}
}

// A refusal at MAIL FROM never names the queue id of the message before
// it: the MTA sends {i} only from RCPT or end of message on.
func TestQueueIDPerTransaction(t *testing.T) {
	v := newEnv(t, setup{Rules: []limits.Rule{senderRule("1/1h", "")}})
	s, _ := v.open("192.0.2.35")
	s.Mail("a@example.org", "")
	s.Stage(context.Background(), smtp.Mail)
	s.SetMacros(smtp.Macros{QueueID: "4ABC123"})
	s.Stage(context.Background(), smtp.Data)
	s.EndMessage(context.Background(), true)
	if d := v.mailOnly(s, "a@example.org"); d.Kind != smtp.Reply {
		t.Fatalf("second message: %+v", d)
	}
	lines := v.logs.FilterMessage("refused").All()
	if len(lines) != 1 || lines[0].ContextMap()["queue_id"] != "" {
		t.Errorf("refusal log %v: want one line without the last message's queue id", lines)
	}
}

// The listener and authentication pick the profile: a higher limit on
// the submission port for authenticated users than on port 25.
func TestListenerProfiles(t *testing.T) {
	auth := true
	v := newEnv(t, setup{Rules: []limits.Rule{
		{Name: "smtpd-sender", Count: "messages", Per: "sender", Rate: "2/1h", Match: limits.Match{Listener: []string{"smtpd"}}},
		{Name: "submission-user", Count: "messages", Per: "sasl_user", Rate: "5/1h", Match: limits.Match{Listener: []string{"submission"}, Authenticated: &auth}},
	}})
	count := func(listener, user string) int {
		s, _ := v.openOn("192.0.2.30", listener)
		n := 0
		for range 8 {
			s.Mail("alice@example.org", user)
			if !s.Stage(context.Background(), smtp.Mail).Refused() {
				n++
			}
			s.EndMessage(context.Background(), false)
		}
		return n
	}
	if n := count("smtpd", ""); n != 2 {
		t.Errorf("port 25: %d of 8 accepted, want 2", n)
	}
	if n := count("submission", "alice"); n != 5 {
		t.Errorf("submission: %d of 8 accepted, want 5", n)
	}
	if n := count("submission", ""); n != 8 {
		t.Errorf("submission without AUTH: %d of 8 accepted, want 8", n)
	}
	// The listener may come with the MAIL FROM macros instead.
	s := v.eng.Open(smtp.Client{}).(*engine.Session)
	s.SetMacros(smtp.Macros{Listener: "smtpd"})
	if s.Facts().Listener != "smtpd" {
		t.Errorf("listener from the macros: %q", s.Facts().Listener)
	}
}

// Per-destination throttling: recipients at gmail.com beyond 6 a minute
// are refused one by one; other domains and the message go on.
func TestPerDestinationThrottle(t *testing.T) {
	v := newEnv(t, setup{Rules: []limits.Rule{{
		Name: "gmail", Count: "recipients", Per: "rcpt_domain", Rate: "6/1m",
		Match: limits.Match{RcptDomain: []string{"gmail.com", "googlemail.com"}},
	}}})
	s, _ := v.open("192.0.2.34")
	var rcpts []string
	for i := range 9 {
		rcpts = append(rcpts, fmt.Sprintf("user%d@gmail.com", i))
	}
	m := v.send(s, "news@example.org", "", append(rcpts, "user@example.net"))
	var kinds []string
	for _, d := range m.rcpts {
		kinds = append(kinds, d.Kind.String())
	}
	want := "continue continue continue continue continue continue reply reply reply continue"
	if got := strings.Join(kinds, " "); got != want || !m.delivered {
		t.Errorf("rcpts %s, delivered %v; want %s", got, m.delivered, want)
	}
}

// A named list used by a client match, with a final class of its own.
func TestNamedListMatch(t *testing.T) {
	v := newEnv(t, setup{
		Lists: lists.Config{"jp": []any{"203.0.113.0/24"}},
		Rules: []limits.Rule{
			{Name: "jp", Count: "messages", Per: "client_ip", Rate: "5/1h", Final: true, Match: limits.Match{Client: []string{"jp"}}},
			{Name: "default", Count: "messages", Per: "client_ip", Rate: "1/1h"},
		},
	})
	accepted := func(ip string) int {
		s, _ := v.open(ip)
		n := 0
		for range 6 {
			if !v.mailOnly(s, "a@example.org").Refused() {
				n++
			}
		}
		return n
	}
	if n := accepted("203.0.113.5"); n != 5 {
		t.Errorf("a Japanese client: %d accepted, want 5 (its own class, final)", n)
	}
	if n := accepted("198.51.100.5"); n != 1 {
		t.Errorf("another client: %d accepted, want 1", n)
	}
}

// Tags and a hold decided at connect apply to every message of the
// session, on top of the message's own.
func TestConnectVerdictsApplyToEveryMessage(t *testing.T) {
	v := newEnv(t, setup{Rules: []limits.Rule{
		{Name: "conns", Count: "connections", Per: "client_ip", Rate: "1/1h", Action: policy.MustAction("tag")},
		{Name: "msgs", Count: "messages", Per: "sender", Rate: "1/1h", Action: policy.MustAction("tag")},
	}})
	v.open("192.0.2.60")
	s, _ := v.open("192.0.2.60")
	for i, want := range []string{"conns", "conns msgs"} {
		m := v.send(s, "a@example.org", "", nil)
		var got []string
		for _, e := range editsOf(m.edits, smtp.Add) {
			got = append(got, e.Value[:strings.IndexByte(e.Value, ';')])
		}
		if strings.Join(got, " ") != want {
			t.Errorf("message %d tagged by %q, want %q", i+1, got, want)
		}
	}
}

// The size of a message is what the client sent: each header field as
// the MTA passes it (name, ": ", value, a CR for each folded line, CRLF),
// the empty line, the body. Two messages in a 100-byte window: the second
// of 3 bytes fits after 97, not after 98.
func TestMessageSize(t *testing.T) {
	for _, tc := range []struct {
		body int // the first message: 15 bytes of header, the empty line, body
		fits bool
	}{{80, true}, {81, false}} {
		v := newEnv(t, setup{Rules: []limits.Rule{{Name: "b", Count: "bytes", Per: "sender", Rate: "100/1h"}}})
		s, _ := v.open("192.0.2.61")
		ctx := context.Background()
		s.Mail("a@example.org", "")
		s.Stage(ctx, smtp.Mail)
		s.Header("Subject", "a\nb") // "Subject: a\r\nb\r\n"
		s.Body(make([]byte, tc.body))
		if d := s.Stage(ctx, smtp.Data); d.Refused() {
			t.Fatalf("body %d: the first message refused: %+v", tc.body, d)
		}
		s.EndMessage(ctx, true)
		s.Mail("a@example.org", "")
		s.Stage(ctx, smtp.Mail)
		s.Body([]byte{'x'})
		if d := s.Stage(ctx, smtp.Data); d.Refused() == tc.fits {
			t.Errorf("after %d bytes, a message of 3: refused %v", 15+2+tc.body, d.Refused())
		}
	}
}

// A decision belongs to its caller: later stages of the session do not
// change what an earlier decision says.
func TestDecisionOwned(t *testing.T) {
	v := newEnv(t, setup{Mode: smtp.ModeTag, Rules: []limits.Rule{
		senderRule("1/1h", ""),
		{Name: "rcpt", Count: "recipients", Per: "rcpt", Rate: "1/1h"},
	}})
	s, _ := v.open("192.0.2.62")
	v.send(s, "a@example.org", "", []string{"x@example.net"})
	m := v.send(s, "a@example.org", "", []string{"x@example.net", "y@example.net"})
	before := fmt.Sprintf("%+v", m.mail)
	m2 := v.send(s, "b@example.org", "", []string{"x@example.net"})
	if after := fmt.Sprintf("%+v", m.mail); after != before || len(m2.rcpts[0].Outcomes) != 1 {
		t.Errorf("an earlier decision changed:\n%s\n%s", before, after)
	}
}

// The observer hears every stage the engine decides.
func TestObserverHearsStages(t *testing.T) {
	v := newEnv(t, setup{Rules: []limits.Rule{senderRule("9/1h", "")}})
	s, _ := v.open("192.0.2.63")
	s.Helo("h.example")
	s.Stage(context.Background(), smtp.Helo)
	v.send(s, "a@example.org", "", []string{"x@example.net"})
	if got := fmt.Sprint(v.obs.stages); got != "[connect helo mail rcpt data]" {
		t.Errorf("stages heard: %s", got)
	}
}

// The counter store failing is logged with the stage, and the rule's
// on_store_error answers.
func TestStoreFailureLogged(t *testing.T) {
	v := newEnv(t, setup{Rules: []limits.Rule{senderRule("9/1h", "")}})
	s, _ := v.open("192.0.2.64")
	v.store.Close()
	v.mailOnly(s, "a@example.org")
	if n := v.logs.FilterMessage("counter store failed").FilterField(zap.Stringer("stage", smtp.Mail)).Len(); n != 1 {
		t.Errorf("%d store failure lines", n)
	}
}
