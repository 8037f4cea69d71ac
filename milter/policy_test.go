package milter

// Issue 4 in the session: every action, mode and match as the MTA sees
// them through the milter protocol, driven by go-milter's client.

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-milter"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"sluice/conf"
	"sluice/limits"
	"sluice/limits/memstore"
	"sluice/lists"
	"sluice/policy"
)

// setup is a policy for a test server.
type setup struct {
	mode    policy.Mode
	decide  func(*policy.Config) // changes to the global policy keys
	lists   lists.Config
	rules   []limits.Rule
	trusted []string // the global trusted list; none when nil
}

func newPolicyHarness(t *testing.T, su setup) *harness {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	store, err := memstore.New(memstore.Config{MaxKeys: 10000}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	set, _, err := su.lists.Build(nil)
	if err != nil {
		t.Fatal(err)
	}
	lc := limits.Config{Rules: su.rules, Trusted: su.trusted}
	eng, err := limits.New(&lc, set, limits.Options{Store: store, Mode: su.mode, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	pc := policy.Config{Mode: su.mode}
	if su.decide != nil {
		su.decide(&pc)
	}
	pc.Defaults()
	if err := pc.Validate(); err != nil {
		t.Fatal(err)
	}
	mc := Config{}
	mc.Defaults()
	sock := filepath.Join(t.TempDir(), "sluice.sock")
	mc.Listen = "unix:" + sock
	srv := NewServer(mc, &Policy{Limits: eng, Decide: pc, TagHeader: mc.TagHeader}, log)
	ln, err := Listen(mc.Listen)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(t.Context()) })
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
	return limits.Rule{Name: "per-sender", Count: "messages", Per: "sender", Rate: rate, Action: action}
}

// hold: over-limit messages are accepted and quarantined with the reason;
// the others are not.
func TestHold(t *testing.T) {
	h := newPolicyHarness(t, setup{rules: []limits.Rule{senderRule("2/1h", "hold")}})
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
	h := newPolicyHarness(t, setup{rules: []limits.Rule{{Name: "tarpit", Count: "messages", Per: "client_ip", Rate: "1/1h", Action: "delay", Delay: conf.Duration(pause)}}})
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

// A delay above max_delay is cut to it (config validation refuses it
// earlier; several delays at one stage add up to the cap).
func TestDelaysCappedByMaxDelay(t *testing.T) {
	h := newPolicyHarness(t, setup{
		decide: func(c *policy.Config) { c.MaxDelay = conf.Duration(200 * time.Millisecond) },
		rules: []limits.Rule{
			{Name: "a", Count: "messages", Per: "client_ip", Rate: "1/1h", Action: "delay", Delay: conf.Duration(150 * time.Millisecond)},
			{Name: "b", Count: "messages", Per: "sender", Rate: "1/1h", Action: "delay", Delay: conf.Duration(150 * time.Millisecond)},
		},
	})
	s, _ := h.session("192.0.2.22")
	mail(t, s, "x@example.org", "")
	s.Abort()
	start := time.Now()
	mail(t, s, "x@example.org", "")
	took := time.Since(start)
	t.Logf("two 150ms delays under a 200ms cap took %v", took)
	if took < 200*time.Millisecond {
		t.Errorf("took %v, want at least the cap", took)
	}
}

// disconnect: 421 4.7.0, the reply that makes the MTA hang up.
func TestDisconnect(t *testing.T) {
	h := newPolicyHarness(t, setup{rules: []limits.Rule{
		senderRule("1/1h", "disconnect"),
		{Name: "custom", Count: "messages", Per: "client_ip", Rate: "5/1h", Action: "disconnect", Reply: "421 4.7.0 Go away, {client_ip}"},
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

// Reply templates reach the MTA filled in and escaped.
func TestReplyTemplate(t *testing.T) {
	h := newPolicyHarness(t, setup{rules: []limits.Rule{{
		Name: "per-sender", Count: "messages", Per: "sender", Rate: "1/1h",
		Reply: "451 4.7.1 Too many messages from {sender} ({client_ip}, {rule}, {key}, {limit}); try again in {retry_after}",
	}}})
	s, _ := h.session("192.0.2.24")
	mail(t, s, "100%@example.org", "")
	s.Abort()
	act := mail(t, s, "100%@example.org", "")
	// '%' is doubled for the MTA; the key escapes it as %25 (keys are
	// injective), which is doubled too.
	want := "4.7.1 Too many messages from 100%%@example.org (192.0.2.24, per-sender, sender:100%%25@example.org, 1/1h); try again in 1h"
	if act.SMTPCode != 451 || act.SMTPText != want {
		t.Errorf("reply %q\nwant  %q", act.SMTPText, want)
	}
}

// dry-run: nothing changes for the message; the log says what would have.
func TestDryRun(t *testing.T) {
	for _, tc := range []struct {
		name   string
		global policy.Mode
		rule   string
	}{
		{"rule in dry-run", policy.ModeEnforce, "dry-run"},
		{"server in dry-run", policy.ModeDryRun, ""},
		{"dry-run rule on a tag server", policy.ModeTag, "dry-run"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rules := []limits.Rule{
				{Name: "per-sender", Count: "messages", Per: "sender", Rate: "2/1h", Action: "reject", Mode: tc.rule},
				{Name: "held", Count: "messages", Per: "client_ip", Rate: "2/1h", Action: "hold", Mode: tc.rule},
				{Name: "slow", Count: "messages", Per: "client_ip", Rate: "2/1h", Action: "delay", Delay: conf.Duration(time.Second), Mode: tc.rule},
			}
			h := newPolicyHarness(t, setup{mode: tc.global, rules: rules})
			s, _ := h.session("192.0.2.25")
			for i := 1; i <= 5; i++ {
				act, ms := h.message(s, "a@example.org", "b@example.net")
				if act.Code != milter.ActContinue {
					t.Fatalf("message %d refused in dry-run: %+v", i, act)
				}
				if n := len(mods(ms, milter.ActAddHeader)) + len(mods(ms, milter.ActQuarantine)); n != 0 {
					t.Errorf("message %d changed in dry-run: %+v", i, ms)
				}
			}
			if n := h.logs.FilterMessage("would refuse").FilterField(zap.String("rule", "per-sender")).Len(); n != 3 {
				t.Errorf("%d 'would refuse' lines, want 3", n)
			}
			// A pause is logged as "delayed" when it is taken: none may be.
			if n := h.logs.FilterMessage("delayed").Len(); n != 0 {
				t.Errorf("%d messages delayed in dry-run", n)
			}
			if n := h.logs.FilterMessage("would delay").Len(); n != 3 {
				t.Errorf("%d 'would delay' lines, want 3", n)
			}
			if n := h.logs.FilterMessage("would hold").Len(); n != 3 {
				t.Errorf("%d 'would hold' lines, want 3", n)
			}
			if n := h.logs.FilterMessage("would delay").Len(); n != 3 {
				t.Errorf("%d 'would delay' lines, want 3", n)
			}
			for _, msg := range []string{"refused", "tagged", "held", "delayed"} {
				if n := h.logs.FilterMessage(msg).Len(); n != 0 {
					t.Errorf("%d %q lines in dry-run", n, msg)
				}
			}
		})
	}
}

// Modes per rule: a tag-mode rule tags while an enforced one refuses, and
// a tag server turns every refusal into a header.
func TestModesPerRule(t *testing.T) {
	h := newPolicyHarness(t, setup{rules: []limits.Rule{
		{Name: "soft", Count: "messages", Per: "client_ip", Rate: "1/1h", Mode: "tag"},
		{Name: "hard", Count: "messages", Per: "sender", Rate: "2/1h"},
	}})
	s, _ := h.session("192.0.2.26")
	act, ms := h.message(s, "a@example.org", "b@example.net")
	if act.Code != milter.ActContinue || len(mods(ms, milter.ActAddHeader)) != 0 {
		t.Fatalf("first message: %+v %+v", act, ms)
	}
	act, ms = h.message(s, "a@example.org", "b@example.net")
	tags := mods(ms, milter.ActAddHeader)
	if act.Code != milter.ActContinue || len(tags) != 1 || !strings.HasPrefix(tags[0].HeaderValue, "soft; key=client_ip:192.0.2.26; count=2; limit=1/1h; retry_after=") {
		t.Fatalf("second message: %+v %+v", act, tags)
	}
	if !strings.HasSuffix(tags[0].HeaderValue, "; would=tempfail") {
		t.Errorf("tag %q does not say what enforce mode would do", tags[0].HeaderValue)
	}
	act, _ = h.message(s, "a@example.org", "b@example.net")
	if act.Code != milter.ActReplyCode || act.SMTPCode != 451 || !strings.Contains(act.SMTPText, "hard") {
		t.Errorf("third message: %+v; the enforced rule refuses", act)
	}

	// The global tag mode wins over a rule's enforce.
	h = newPolicyHarness(t, setup{mode: policy.ModeTag, rules: []limits.Rule{
		{Name: "a", Count: "messages", Per: "sender", Rate: "1/1h", Action: "reject"},
		{Name: "b", Count: "messages", Per: "client_ip", Rate: "1/1h", Action: "disconnect"},
		{Name: "c", Count: "messages", Per: "client_ip", Rate: "1/1h", Action: "hold"},
	}})
	s, _ = h.session("192.0.2.27")
	h.message(s, "a@example.org", "b@example.net")
	act, ms = h.message(s, "a@example.org", "b@example.net")
	if act.Code != milter.ActContinue || len(mods(ms, milter.ActQuarantine)) != 0 {
		t.Fatalf("tag server refused or held: %+v %+v", act, ms)
	}
	var got []string
	for _, m := range mods(ms, milter.ActAddHeader) {
		got = append(got, m.HeaderValue[:strings.IndexByte(m.HeaderValue, ';')]+" "+m.HeaderValue[strings.LastIndexByte(m.HeaderValue, ' ')+1:])
	}
	if strings.Join(got, ",") != "a would=reject,b would=disconnect,c would=hold" {
		t.Errorf("tags %q: want one per crossed rule, in order", got)
	}
}

// The header name is configurable and only headers of ours are removed,
// whatever their case and however many there are.
func TestForgedHeadersRemoved(t *testing.T) {
	h := newPolicyHarness(t, setup{mode: policy.ModeTag, rules: []limits.Rule{senderRule("1/1h", "")}})
	h.srv.Policy().TagHeader = "X-Sluice-Rate"
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

// A trusted client is one of ours — a content filter re-injecting mail,
// an inner relay — so the X-Sluice-* headers it brings were written by
// sluice and stay.
func TestTrustedClientsKeepSluiceHeaders(t *testing.T) {
	h := newPolicyHarness(t, setup{mode: policy.ModeTag, trusted: []string{"10.0.0.0/8"}, rules: []limits.Rule{senderRule("1/1h", "")}})
	for _, c := range []struct {
		ip      string
		removed int
	}{{"10.1.2.3", 0}, {"192.0.2.29", 1}} {
		s, _ := h.session(c.ip)
		if act := mail(t, s, "a@example.org", ""); act.Code != milter.ActContinue {
			t.Fatal(act)
		}
		if _, err := s.HeaderField("X-Sluice-Limit", "msgs; key=sender:a@example.org"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.HeaderEnd(); err != nil {
			t.Fatal(err)
		}
		ms, _, err := s.End()
		if err != nil {
			t.Fatal(err)
		}
		if n := len(mods(ms, milter.ActChangeHeader)); n != c.removed {
			t.Errorf("client %s: %d headers removed, want %d", c.ip, n, c.removed)
		}
		s.Close()
	}
}

// parseTag splits a tag header value into its fields, undoing the
// quoted-strings; it fails on anything that is not well-formed.
func parseTag(v string) (rule string, params map[string]string, err error) {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c >= 0x7f {
			return "", nil, fmt.Errorf("byte %#x at %d", c, i)
		}
	}
	var fields []string
	var cur []byte
	keep := 0 // cur[:keep] ends with quoted text, which trailing blanks must not eat
	quoted := false
	end := func() {
		f := strings.TrimRight(string(cur[keep:]), " ")
		fields = append(fields, string(cur[:keep])+f)
		cur, keep = cur[:0], 0
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case quoted && c == '\\':
			i++
			if i == len(v) {
				return "", nil, fmt.Errorf("dangling backslash")
			}
			cur = append(cur, v[i])
			keep = len(cur)
		case c == '"':
			quoted = !quoted
			keep = len(cur)
		case quoted:
			cur = append(cur, c)
			keep = len(cur)
		case c == ';':
			end()
		case c == '(' || c == ')':
			return "", nil, fmt.Errorf("unquoted %c", c)
		case c == ' ' && len(cur) == 0:
			// a blank between fields
		default:
			cur = append(cur, c)
		}
	}
	if quoted {
		return "", nil, fmt.Errorf("unclosed quote")
	}
	end()
	params = map[string]string{}
	for _, f := range fields[1:] {
		k, val, ok := strings.Cut(f, "=")
		if !ok {
			return "", nil, fmt.Errorf("field %q is not key=value", f)
		}
		if _, dup := params[k]; dup {
			return "", nil, fmt.Errorf("field %s twice", k)
		}
		params[k] = val
	}
	return fields[0], params, nil
}

// Hostile senders produce one well-formed tag whose key says, escaped,
// what the client sent.
func TestTagHeaderWellFormed(t *testing.T) {
	h := newPolicyHarness(t, setup{mode: policy.ModeTag, rules: []limits.Rule{senderRule("1/1h", "")}})
	for _, sender := range []string{
		"alice@example.org",
		`"john\"doe"@example.org`,
		`"john doe"@example.org`,
		"a\r\nX-Injected: yes@example.org",
		"semi;colon=1; would=accept@example.org",
		"caf\u00e9@example.org",
		"nul\x00byte@example.org",
		"(comment)@example.org",
		strings.Repeat("x", 2000) + "@example.org",
	} {
		s, _ := h.session("192.0.2.29")
		h.message(s, sender, "b@example.net")
		act, ms := h.message(s, sender, "b@example.net")
		tags := mods(ms, milter.ActAddHeader)
		if act.Code != milter.ActContinue || len(tags) != 1 {
			t.Errorf("sender %q: %+v, %d tags", sender, act, len(tags))
			continue
		}
		v := tags[0].HeaderValue
		rule, params, err := parseTag(v)
		if err != nil {
			t.Errorf("sender %q: tag %q is not well-formed: %v", sender, v, err)
			continue
		}
		if rule != "per-sender" || params["count"] != "2" || params["limit"] != "1/1h" || params["would"] != "tempfail" || params["retry_after"] == "" {
			t.Errorf("sender %q: fields %q %v", sender, rule, params)
		}
		if !strings.HasPrefix(params["key"], "sender:") || len(v) > 900 {
			t.Errorf("sender %q: key %q, value %d bytes", sender, params["key"], len(v))
		}
		t.Logf("X-Sluice-Limit: %s", v)
		s.Close()
	}
}

// The listener ({daemon_name}) and authentication pick the profile: a
// higher limit on the submission port than on port 25.
func TestListenerProfiles(t *testing.T) {
	auth := true
	h := newPolicyHarness(t, setup{rules: []limits.Rule{
		{Name: "smtpd-sender", Count: "messages", Per: "sender", Rate: "2/1h", Match: limits.Match{Listener: []string{"smtpd"}}},
		{Name: "submission-user", Count: "messages", Per: "sasl_user", Rate: "5/1h", Match: limits.Match{Listener: []string{"submission"}, Authenticated: &auth}},
	}})
	count := func(daemon, user string) int {
		s, _ := h.sessionAs("192.0.2.30", daemon, "client.example")
		n := 0
		for range 8 {
			if mail(t, s, "alice@example.org", user).Code == milter.ActContinue {
				n++
			}
			s.Abort()
		}
		return n
	}
	if n := count("smtpd", ""); n != 2 {
		t.Errorf("port 25: %d of 8 accepted, want 2", n)
	}
	if n := count("submission", "alice"); n != 5 {
		t.Errorf("submission: %d of 8 accepted, want 5", n)
	}
	// Not authenticated on the submission port: neither profile applies.
	if n := count("submission", ""); n != 8 {
		t.Errorf("submission without AUTH: %d of 8 accepted, want 8", n)
	}
}

// Escalation: after soft_refusals every reply waits refusal_delay; after
// hard_refusals the next command gets 421; a delivered message starts the
// count again.
func TestEscalation(t *testing.T) {
	const pause = 100 * time.Millisecond
	h := newPolicyHarness(t, setup{
		decide: func(c *policy.Config) {
			c.SoftRefusals, c.HardRefusals, c.RefusalDelay = policy.Count(2), policy.Count(4), conf.Duration(pause)
		},
		rules: []limits.Rule{{Name: "spammer", Count: "messages", Per: "sender", Rate: "1/1h", Match: limits.Match{Sender: "^spam@"}}},
	})
	s, _ := h.session("192.0.2.31")
	type step struct {
		from string
		code int  // 0: continue
		slow bool // the reply waited
	}
	steps := []step{
		{"spam@example.org", 0, false},   // counted
		{"spam@example.org", 451, false}, // refusal 1
		{"spam@example.org", 451, false}, // refusal 2
		{"ok@example.org", 0, true},      // past soft: even a good reply waits
		{"spam@example.org", 451, true},  // refusal 3
		{"spam@example.org", 451, true},  // refusal 4
		{"ok@example.org", 421, false},   // past hard: 421 whatever the command
	}
	for i, st := range steps {
		start := time.Now()
		act := mail(t, s, st.from, "")
		took := time.Since(start)
		code := 0
		if act.Code == milter.ActReplyCode {
			code = act.SMTPCode
		}
		if code != st.code || (st.slow && took < pause) {
			t.Errorf("step %d (%s): reply %d after %v; want %d, slow %v", i+1, st.from, code, took, st.code, st.slow)
		}
		s.Abort()
	}
	if n := h.logs.FilterMessage("escalated").Len(); n != 4 {
		t.Errorf("%d 'escalated' lines, want 4", n)
	}

	// A delivered message resets the count.
	s, _ = h.session("192.0.2.32")
	mail(t, s, "spam@example.net", "")
	s.Abort()
	for range 3 {
		mail(t, s, "spam@example.net", "")
		s.Abort()
	}
	if act, _ := h.message(s, "ok@example.org", "b@example.net"); act.Code != milter.ActContinue {
		t.Fatalf("a good message after 3 refusals: %+v", act)
	}
	start := time.Now()
	for range 3 {
		if act := mail(t, s, "spam@example.net", ""); act.SMTPCode != 451 {
			t.Errorf("after a delivered message: %+v, want 451 again, not 421", act)
		}
		s.Abort()
	}
	t.Logf("three refusals after a delivery took %v", time.Since(start))
}

// In tag mode nothing escalates, however often limits are crossed.
func TestNoEscalationInTagMode(t *testing.T) {
	h := newPolicyHarness(t, setup{
		mode:   policy.ModeTag,
		decide: func(c *policy.Config) { c.SoftRefusals, c.HardRefusals = policy.Count(1), policy.Count(2) },
		rules:  []limits.Rule{senderRule("1/1h", "")},
	})
	s, _ := h.session("192.0.2.33")
	for i := range 6 {
		if act := mail(t, s, "a@example.org", ""); act.Code != milter.ActContinue {
			t.Fatalf("message %d: %+v", i+1, act)
		}
		s.Abort()
	}
	if n := h.logs.FilterMessage("escalated").Len(); n != 0 {
		t.Errorf("%d escalations in tag mode", n)
	}
}

// Per-destination throttling through the session: RCPTs to gmail.com
// beyond 6 a minute get 451; other domains and the session go on.
func TestPerDestinationThrottleSession(t *testing.T) {
	h := newPolicyHarness(t, setup{rules: []limits.Rule{{
		Name: "gmail", Count: "recipients", Per: "rcpt_domain", Rate: "6/1m",
		Match: limits.Match{RcptDomain: []string{"gmail.com", "googlemail.com"}},
	}}})
	s, _ := h.session("192.0.2.34")
	mail(t, s, "news@example.org", "")
	var codes []int
	for i := range 9 {
		act, err := s.Rcpt(fmt.Sprintf("user%d@gmail.com", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		codes = append(codes, act.SMTPCode)
	}
	act, _ := s.Rcpt("user@example.net", nil)
	if fmt.Sprint(codes) != "[0 0 0 0 0 0 451 451 451]" || act.Code != milter.ActContinue {
		t.Errorf("rcpt codes %v, other domain %+v", codes, act)
	}
}

// Names lists and a named list used by the client match.
func TestNamedListMatch(t *testing.T) {
	h := newPolicyHarness(t, setup{
		lists: lists.Config{"jp": []any{"203.0.113.0/24"}},
		rules: []limits.Rule{
			{Name: "jp", Count: "messages", Per: "client_ip", Rate: "5/1h", Final: true, Match: limits.Match{Client: []string{"jp"}}},
			{Name: "default", Count: "messages", Per: "client_ip", Rate: "1/1h"},
		},
	})
	accepted := func(ip string) int {
		s, _ := h.session(ip)
		n := 0
		for range 6 {
			if mail(t, s, "a@example.org", "").Code == milter.ActContinue {
				n++
			}
			s.Abort()
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

// negotiate asks for no event the policy does not need.
func TestNegotiation(t *testing.T) {
	tagRule := limits.Rule{Name: "t", Count: "messages", Per: "sender", Rate: "1/1h", Action: "tag"}
	for _, tc := range []struct {
		name          string
		mode          policy.Mode
		rules         []limits.Rule
		headers, rcpt bool
		helo, body    bool
	}{
		{"sender limit enforced", policy.ModeEnforce, []limits.Rule{senderRule("1/1h", "")}, false, false, false, false},
		{"tag server", policy.ModeTag, []limits.Rule{senderRule("1/1h", "")}, true, false, false, false},
		{"tag rule", policy.ModeEnforce, []limits.Rule{tagRule}, true, false, false, false},
		{"tag rule in dry-run", policy.ModeEnforce, []limits.Rule{{Name: "t", Count: "messages", Per: "sender", Rate: "1/1h", Action: "tag", Mode: "dry-run"}}, false, false, false, false},
		{"dry-run server", policy.ModeDryRun, []limits.Rule{tagRule}, false, false, false, false},
		{"hold only", policy.ModeEnforce, []limits.Rule{senderRule("1/1h", "hold")}, true, false, false, false},
		{"hold in dry-run", policy.ModeEnforce, []limits.Rule{{Name: "h", Count: "messages", Per: "sender", Rate: "1/1h", Action: "hold", Mode: "dry-run"}}, false, false, false, false},
		{"recipients", policy.ModeEnforce, []limits.Rule{{Name: "r", Count: "recipients", Per: "rcpt_domain", Rate: "1/1h"}}, false, true, false, false},
		{"helo match", policy.ModeEnforce, []limits.Rule{{Name: "h", Count: "messages", Per: "sender", Rate: "1/1h", Match: limits.Match{Helo: "x"}}}, false, false, true, false},
		{"helo key", policy.ModeEnforce, []limits.Rule{{Name: "h", Count: "messages", Per: "helo", Rate: "1/1h"}}, false, false, true, false},
		{"bytes", policy.ModeEnforce, []limits.Rule{{Name: "b", Count: "bytes", Per: "sender", Rate: "1MB/1h"}}, true, false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newPolicyHarness(t, setup{mode: tc.mode, rules: tc.rules})
			actions, protocol, _ := negotiate(h.srv.Policy())
			has := func(o milter.OptProtocol) bool { return protocol&o == 0 }
			if has(milter.OptNoHeaders) != tc.headers || has(milter.OptNoRcptTo) != tc.rcpt || has(milter.OptNoHelo) != tc.helo || has(milter.OptNoBody) != tc.body {
				t.Errorf("headers %v rcpt %v helo %v body %v; want %v %v %v %v",
					has(milter.OptNoHeaders), has(milter.OptNoRcptTo), has(milter.OptNoHelo), has(milter.OptNoBody), tc.headers, tc.rcpt, tc.helo, tc.body)
			}
			if !has(milter.OptNoMailFrom) || !has(milter.OptNoConnect) || protocol&(milter.OptNoUnknown|milter.OptNoData) != milter.OptNoUnknown|milter.OptNoData {
				t.Errorf("protocol %#x", protocol)
			}
			if actions&(milter.OptAddHeader|milter.OptChangeHeader|milter.OptQuarantine) != milter.OptAddHeader|milter.OptChangeHeader|milter.OptQuarantine {
				t.Errorf("actions %#x", actions)
			}
		})
	}
}

// A refusal at MAIL FROM never names the queue id of the message before
// it (Postfix sends {i} only from RCPT or end of message on).
func TestQueueIDPerTransaction(t *testing.T) {
	h := newPolicyHarness(t, setup{rules: []limits.Rule{senderRule("1/1h", "")}})
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

// FuzzTagValue: whatever the key holds, a tag header value is one line of
// printable ASCII that parses back into its fields, with the key intact
// up to the escaping.
func FuzzTagValue(f *testing.F) {
	f.Add("sender:alice@example.org", "10/1h", int64(90))
	f.Add("sender:\"john\\\"doe\"@example.org", "1/1h", int64(0))
	f.Add("sender:a\r\nX-Injected: 1; would=accept", "x;y", int64(5))
	f.Add("caf\u00e9 (comment)", "\"", int64(-1))
	f.Fuzz(func(t *testing.T, key, limit string, retry int64) {
		v := policy.Verdict{Source: "per-sender", Action: policy.ActionTempfail, Key: key, Limit: limit,
			Detail: "count=2", RetryAfter: time.Duration(retry) * time.Second}
		for _, held := range []bool{false, true} {
			out := tagValue(&v, held)
			rule, params, err := parseTag(out)
			if err != nil {
				t.Fatalf("key %q limit %q: %q is not well-formed: %v", key, limit, out, err)
			}
			if rule != "per-sender" || params["count"] != "2" || params["key"] != policy.ASCII(key, 300) || len(out) > 900 {
				t.Fatalf("key %q limit %q: %q parsed as %q %v", key, limit, out, rule, params)
			}
		}
	})
}
