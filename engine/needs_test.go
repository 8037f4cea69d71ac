package engine_test

import (
	"testing"
	"time"

	"sluice/conf"
	"sluice/limits"
	"sluice/policy"
	"sluice/smtp"
)

// Needs asks for no event the policy does not read: HELO only for a rule
// that reads it, recipients only when counted, the body only for bytes,
// the header for bytes or when sluice may write fields (a tag or a hold
// under the global mode; a rule in dry-run never writes), and accepts at
// MAIL FROM only when nothing later matters.
func TestNeeds(t *testing.T) {
	rule := func(action, mode string) limits.Rule {
		return limits.Rule{Name: "r", Count: "messages", Per: "sender", Rate: "1/1h", Action: policy.MustAction(action), Mode: policy.MustMode(mode)}
	}
	for _, tc := range []struct {
		name   string
		mode   smtp.Mode
		rules  []limits.Rule
		want   smtp.Needs
		accept bool
	}{
		{"sender limit enforced", smtp.ModeEnforce, []limits.Rule{rule("", "")}, smtp.Needs{QueueID: true}, true},
		{"tag server", smtp.ModeTag, []limits.Rule{rule("", "")}, smtp.Needs{Header: true, Edits: true, QueueID: true}, false},
		{"dry-run server", smtp.ModeDryRun, []limits.Rule{rule("tag", "")}, smtp.Needs{QueueID: true}, true},
		{"tag rule", smtp.ModeEnforce, []limits.Rule{rule("tag", "")}, smtp.Needs{Header: true, Edits: true, QueueID: true}, false},
		{"tag rule in dry-run", smtp.ModeEnforce, []limits.Rule{rule("tag", "dry-run")}, smtp.Needs{QueueID: true}, true},
		{"refusing rule in tag mode", smtp.ModeEnforce, []limits.Rule{rule("reject", "tag")}, smtp.Needs{Header: true, Edits: true, QueueID: true}, false},
		{"refusing rule in dry-run on a tag server", smtp.ModeTag, []limits.Rule{rule("reject", "dry-run")}, smtp.Needs{QueueID: true}, true},
		{"hold: a held message says why", smtp.ModeEnforce, []limits.Rule{rule("hold", "")}, smtp.Needs{Header: true, Edits: true, QueueID: true}, false},
		{"hold in dry-run", smtp.ModeEnforce, []limits.Rule{rule("hold", "dry-run")}, smtp.Needs{QueueID: true}, true},
		{"recipients", smtp.ModeEnforce, []limits.Rule{{Name: "r", Count: "recipients", Per: "rcpt_domain", Rate: "1/1h"}},
			smtp.Needs{Rcpt: true, QueueID: true}, false},
		{"helo match", smtp.ModeEnforce, []limits.Rule{{Name: "h", Count: "messages", Per: "sender", Rate: "1/1h", Match: limits.Match{Helo: "x"}}},
			smtp.Needs{Helo: true, QueueID: true}, true},
		{"helo key", smtp.ModeEnforce, []limits.Rule{{Name: "h", Count: "messages", Per: "helo", Rate: "1/1h"}},
			smtp.Needs{Helo: true, QueueID: true}, true},
		{"bytes", smtp.ModeEnforce, []limits.Rule{{Name: "b", Count: "bytes", Per: "sender", Rate: "1MB/1h"}},
			smtp.Needs{Header: true, Body: true, QueueID: true}, false},
		{"sasl_user key", smtp.ModeEnforce, []limits.Rule{{Name: "s", Count: "messages", Per: "sasl_user", Rate: "1/1h"}},
			smtp.Needs{SASLUser: true, QueueID: true}, true},
		{"authenticated match", smtp.ModeEnforce, []limits.Rule{{Name: "s", Count: "messages", Per: "sender", Rate: "1/1h", Match: limits.Match{Authenticated: new(bool)}}},
			smtp.Needs{SASLUser: true, QueueID: true}, true},
		{"except list", smtp.ModeEnforce, []limits.Rule{{Name: "s", Count: "messages", Per: "sender", Rate: "1/1h", Except: []string{"sasl_user:relayuser"}}},
			smtp.Needs{SASLUser: true, QueueID: true}, true},
		{"reply quoting the login", smtp.ModeEnforce, []limits.Rule{{Name: "s", Count: "messages", Per: "sender", Rate: "1/1h", Reply: policy.MustReply("451 4.7.1 Slow down, {sasl_user}")}},
			smtp.Needs{SASLUser: true, QueueID: true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, option := range []bool{false, true} {
				v := newEnv(t, setup{Mode: tc.mode, Rules: tc.rules, Accept: option})
				want := tc.want
				want.AcceptAtMail = option && tc.accept
				got := v.eng.Needs()
				got.Answers = smtp.Answers{} // TestNeedsAnswers'
				if got != want {
					t.Errorf("AcceptAtMail option %v: needs %+v\n want %+v", option, got, want)
				}
			}
		})
	}
}

// Needs says a stage may be answered other than continue only when
// something can answer it: a rule at the stage that refuses or pauses
// under the global mode (a store failure refuses for on_store_error =
// "tempfail"), the checks at connect and MAIL FROM, an accept at MAIL
// FROM, and escalation after any refusal — at every stage but connect.
func TestNeedsAnswers(t *testing.T) {
	at := func(count, per, action, mode string) limits.Rule {
		return limits.Rule{Name: "r", Count: count, Per: per, Rate: "1/1h", Action: policy.MustAction(action), Mode: policy.MustMode(mode)}
	}
	noEscalation := func(c *policy.Config) { c.SoftRefusals, c.HardRefusals = policy.Count(0), policy.Count(0) }
	for _, tc := range []struct {
		name   string
		mode   smtp.Mode
		decide func(*policy.Config)
		rules  []limits.Rule
		accept bool
		want   smtp.Answers
	}{
		{"sender limit, escalation", smtp.ModeEnforce, nil, []limits.Rule{at("messages", "sender", "", "")}, false,
			smtp.Answers{Helo: true, Mail: true, Rcpt: true}},
		{"sender limit", smtp.ModeEnforce, noEscalation, []limits.Rule{at("messages", "sender", "", "")}, false,
			smtp.Answers{Mail: true}},
		{"sender limit, accept at MAIL FROM", smtp.ModeEnforce, noEscalation, []limits.Rule{at("messages", "sender", "", "")}, true,
			smtp.Answers{Mail: true}},
		{"concurrency", smtp.ModeEnforce, noEscalation, []limits.Rule{{Name: "c", Count: "concurrent", Per: "client_ip", Max: 5}}, false,
			smtp.Answers{Connect: true}},
		{"recipients", smtp.ModeEnforce, noEscalation, []limits.Rule{at("recipients", "rcpt_domain", "", "")}, false,
			smtp.Answers{Rcpt: true}},
		{"delay", smtp.ModeEnforce, noEscalation, []limits.Rule{{Name: "d", Count: "messages", Per: "client_ip", Rate: "1/1h",
			Action: policy.MustAction("delay"), Delay: conf.Duration(time.Second)}}, false,
			smtp.Answers{Mail: true}},
		{"tag rule, escalation", smtp.ModeEnforce, nil, []limits.Rule{at("messages", "sender", "tag", "")}, false,
			smtp.Answers{}},
		{"rule in dry-run", smtp.ModeEnforce, nil, []limits.Rule{at("messages", "sender", "", "dry-run")}, false,
			smtp.Answers{}},
		{"tag server", smtp.ModeTag, nil, []limits.Rule{at("messages", "sender", "", "")}, false,
			smtp.Answers{}},
		{"tag rule, accept at MAIL FROM", smtp.ModeEnforce, nil, []limits.Rule{at("messages", "sender", "tag", "dry-run")}, true,
			smtp.Answers{Mail: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newEnv(t, setup{Mode: tc.mode, Decide: tc.decide, Rules: tc.rules, Accept: tc.accept})
			if got := v.eng.Needs().Answers; got != tc.want {
				t.Errorf("answers %+v, want %+v", got, tc.want)
			}
		})
	}
}
