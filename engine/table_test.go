package engine_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"sluice/conf"
	"sluice/limits"
	"sluice/policy"
	"sluice/smtp"
)

// crossing is a rule that counts at one stage and a way to cross it: the
// first event passes, the second crosses.
type crossing struct {
	stage smtp.Stage
	rule  func(action, mode string) limits.Rule
}

// bigSubject makes a message of 59 bytes as the engine counts it: two fit
// in no 100-byte window.
var bigSubject = strings.Repeat("s", 40)

var crossings = []crossing{
	{smtp.Connect, func(a, m string) limits.Rule {
		return limits.Rule{Name: "r", Count: "connections", Per: "client_ip", Rate: "1/1h", Action: policy.MustAction(a), Mode: policy.MustMode(m)}
	}},
	{smtp.Mail, func(a, m string) limits.Rule {
		return limits.Rule{Name: "r", Count: "messages", Per: "sender", Rate: "1/1h", Action: policy.MustAction(a), Mode: policy.MustMode(m)}
	}},
	{smtp.Rcpt, func(a, m string) limits.Rule {
		return limits.Rule{Name: "r", Count: "recipients", Per: "rcpt_domain", Rate: "1/1h", Action: policy.MustAction(a), Mode: policy.MustMode(m)}
	}},
	{smtp.Data, func(a, m string) limits.Rule {
		return limits.Rule{Name: "r", Count: "bytes", Per: "sender", Rate: "100/1h", Action: policy.MustAction(a), Mode: policy.MustMode(m)}
	}},
}

// run crosses the rule once and returns the decision of the crossing
// stage and the edits of the message that went on (none when it did not).
func (c crossing) run(v *env, ip string) (smtp.Decision, []smtp.Edit, bool) {
	v.t.Helper()
	subject := [][2]string{{"Subject", bigSubject}}
	rcpts := []string{"a@x.test"}
	switch c.stage {
	case smtp.Connect:
		s, _ := v.open(ip)
		v.send(s, "alice@example.org", "", rcpts, subject...)
		s2, d := v.open(ip)
		if d.Refused() {
			return d, nil, false
		}
		m := v.send(s2, "alice@example.org", "", rcpts, subject...)
		return d, m.edits, m.delivered
	case smtp.Mail:
		s, _ := v.open(ip)
		v.send(s, "alice@example.org", "", rcpts, subject...)
		m := v.send(s, "alice@example.org", "", rcpts, subject...)
		return m.mail, m.edits, m.delivered
	case smtp.Rcpt:
		s, _ := v.open(ip)
		m := v.send(s, "alice@example.org", "", []string{"a@x.test", "b@x.test"}, subject...)
		return m.rcpts[1], m.edits, m.delivered
	default:
		s, _ := v.open(ip)
		v.send(s, "alice@example.org", "", rcpts, subject...)
		m := v.send(s, "alice@example.org", "", rcpts, subject...)
		return m.data, m.edits, m.delivered
	}
}

// TestStageActionModeTrusted crosses a rule at every stage where rules
// count, for every action, rule mode, global mode and kind of client, and
// checks the decision (kind, reply, pause, outcome), the log line and the
// end-of-message edits against what the policy documents: a trusted
// client is not counted unless the rule says apply_to_trusted; the softer
// of the rule's and the global mode applies; dry-run only logs, tag mode
// only adds a header saying what enforce would do, enforce does it.
func TestStageActionModeTrusted(t *testing.T) {
	const trustedIP, otherIP = "10.1.2.3", "192.0.2.50"
	actions := []string{"tempfail", "reject", "disconnect", "hold", "delay", "tag"}
	modes := []smtp.Mode{smtp.ModeEnforce, smtp.ModeTag, smtp.ModeDryRun}
	clients := []struct {
		name           string
		ip             string
		applyToTrusted bool
		counted        bool
	}{
		{"untrusted", otherIP, false, true},
		{"trusted", trustedIP, false, false},
		{"trusted, apply_to_trusted", trustedIP, true, true},
	}
	n := 0
	for _, c := range crossings {
		for _, action := range actions {
			for _, rm := range modes {
				for _, gm := range modes {
					for _, cl := range clients {
						name := fmt.Sprintf("%s/%s/rule-%s/global-%s/%s", c.stage, action, rm, gm, cl.name)
						t.Run(name, func(t *testing.T) {
							n++
							r := c.rule(action, rm.String())
							r.ApplyToTrusted = cl.applyToTrusted
							if action == "delay" {
								r.Delay = conf.Duration(2 * time.Second)
							}
							v := newEnv(t, setup{Mode: gm, Rules: []limits.Rule{r}, Trusted: []string{"10.0.0.0/8"}})
							d, edits, delivered := c.run(v, cl.ip)
							checkCrossing(t, v, c.stage, action, rm.Soften(gm), cl.counted, d, edits, delivered)
						})
					}
				}
			}
		}
	}
	if n != len(crossings)*len(actions)*len(modes)*len(modes)*len(clients) {
		t.Errorf("%d cases ran", n)
	}
}

func checkCrossing(t *testing.T, v *env, st smtp.Stage, action string, mode smtp.Mode, counted bool,
	d smtp.Decision, edits []smtp.Edit, delivered bool) {
	t.Helper()
	a, _ := smtp.ParseAction(action)
	tags := editsOf(edits, smtp.Add)
	held := editsOf(edits, smtp.Quarantine)
	logged := func(msg string) {
		t.Helper()
		if n := v.lines(msg, "r"); n != 1 {
			t.Errorf("%d %q log lines for rule r, want 1", n, msg)
		}
	}
	if !counted {
		if d.Kind != smtp.Continue || d.Pause != 0 || len(d.Outcomes) != 0 || len(tags)+len(held) != 0 {
			t.Errorf("a trusted client was counted: %+v, edits %+v", d, edits)
		}
		if n := v.logs.Len(); n != 0 {
			t.Errorf("%d log lines for a trusted client", n)
		}
		return
	}
	if len(d.Outcomes) != 1 {
		t.Fatalf("outcomes %+v, want one for rule r", d.Outcomes)
	}
	o := d.Outcomes[0]
	if o.Source != "r" || o.Asked != a || o.Mode != mode {
		t.Errorf("outcome %+v; want rule r asking %s in mode %s", o, a, mode)
	}
	switch mode {
	case smtp.ModeDryRun:
		if d.Kind != smtp.Continue || d.Pause != 0 || o.Action != smtp.ActionNone || len(tags)+len(held) != 0 || !delivered {
			t.Errorf("dry-run changed something: %+v, edits %+v", d, edits)
		}
		if a.Refuses() {
			logged("would refuse")
		} else {
			logged("would " + action)
		}
	case smtp.ModeTag:
		if d.Kind != smtp.Continue || d.Pause != 0 || o.Action != smtp.ActionTag || len(held) != 0 || !delivered {
			t.Errorf("tag mode refused, paused or held: %+v, edits %+v", d, edits)
		}
		want := "r; key="
		if len(tags) != 1 || !strings.HasPrefix(tags[0].Value, want) || tags[0].Name != "X-Sluice-Limit" {
			t.Fatalf("tags %+v, want one X-Sluice-Limit for r", tags)
		}
		if would := "; would=" + action; (a != smtp.ActionTag) != strings.HasSuffix(tags[0].Value, would) {
			t.Errorf("tag %q: says %q %v", tags[0].Value, would, a != smtp.ActionTag)
		}
		logged("tagged")
	default:
		checkEnforced(t, v, st, a, d, tags, held, delivered)
	}
}

func checkEnforced(t *testing.T, v *env, st smtp.Stage, a smtp.Action, d smtp.Decision, tags, held []smtp.Edit, delivered bool) {
	t.Helper()
	switch a {
	case smtp.ActionTempfail, smtp.ActionReject, smtp.ActionDisconnect:
		kind, reply := smtp.Reply, "451 4.7.1 Rate limit r exceeded for "
		switch {
		case a == smtp.ActionReject:
			reply = "550 5.7.1 Rate limit r exceeded for "
		case a == smtp.ActionDisconnect || st == smtp.Connect:
			// At connect and HELO the MTA only applies a refusal from
			// MAIL FROM on: 421 makes it hang up at once.
			kind, reply = smtp.Disconnect, "421 4.7.0 Rate limit r exceeded for "
		}
		if d.Kind != kind || d.Action != a || !strings.HasPrefix(d.Reply, reply) {
			t.Errorf("decision %s %s %q; want %s %s %q...", d.Kind, d.Action, d.Reply, kind, a, reply)
		}
		if (a == smtp.ActionReject) == strings.Contains(d.Reply, "try again") {
			t.Errorf("reply %q: a permanent refusal must not say try again, a temporary one must", d.Reply)
		}
		if n := v.lines("refused", "r"); n != 1 {
			t.Errorf("%d refused lines", n)
		}
	case smtp.ActionHold:
		if d.Kind != smtp.Continue || !delivered || len(held) != 1 || held[0].Value != "sluice: r crossed by "+d.Outcomes[0].Key {
			t.Errorf("hold: %+v, held %+v", d, held)
		}
		if len(tags) != 1 || !strings.HasSuffix(tags[0].Value, "; action=hold") {
			t.Errorf("a held message says why in a header: %+v", tags)
		}
		if n := v.lines("held", "r"); n != 1 {
			t.Errorf("%d held lines", n)
		}
	case smtp.ActionDelay:
		if d.Kind != smtp.Continue || d.Pause != 2*time.Second || len(tags)+len(held) != 0 {
			t.Errorf("delay: %+v", d)
		}
		if n := v.lines("delayed", "r"); n != 1 {
			t.Errorf("%d delayed lines", n)
		}
	case smtp.ActionTag:
		if d.Kind != smtp.Continue || len(tags) != 1 || strings.Contains(tags[0].Value, "would=") || len(held) != 0 {
			t.Errorf("tag: %+v, tags %+v", d, tags)
		}
		if n := v.lines("tagged", "r"); n != 1 {
			t.Errorf("%d tagged lines", n)
		}
	}
}

// policyOf is the global policy keys with the defaults.
func policyOf(mode smtp.Mode) policy.Config {
	c := policy.Config{Mode: mode}
	c.Defaults()
	return c
}
