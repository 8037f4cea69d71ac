package policy

import (
	"strings"
	"testing"
	"time"

	"sluice/conf"
)

func config(mode Mode) Config {
	c := Config{Mode: mode}
	c.Defaults()
	return c
}

func verdict(name string, a Action, m Mode) Verdict {
	return Verdict{Source: name, Action: a, Mode: m, Key: "sender:alice@example.org", Limit: "10/1h", RetryAfter: time.Minute}
}

func TestDecideActions(t *testing.T) {
	c := config(ModeEnforce)
	env := &Env{ClientIP: "192.0.2.7", Sender: "alice@example.org"}
	for _, tc := range []struct {
		name      string
		st        Stage
		vs        []Verdict
		action    Action
		reply     string // prefix
		delay     time.Duration
		hold, tag int
	}{
		{name: "nothing", st: StageMail},
		{name: "tempfail at mail", st: StageMail, vs: []Verdict{verdict("r", ActionTempfail, ModeEnforce)},
			action: ActionTempfail, reply: "451 4.7.1 Rate limit r exceeded for sender:alice@example.org; try again in 1m"},
		{name: "tempfail at connect hangs up", st: StageConnect, vs: []Verdict{verdict("r", ActionTempfail, ModeEnforce)},
			action: ActionTempfail, reply: "421 4.7.0 "},
		{name: "reject", st: StageRcpt, vs: []Verdict{verdict("r", ActionReject, ModeEnforce)},
			action: ActionReject, reply: "550 5.7.1 Rate limit r exceeded for sender:alice@example.org"},
		{name: "disconnect", st: StageMail, vs: []Verdict{verdict("r", ActionDisconnect, ModeEnforce)},
			action: ActionDisconnect, reply: "421 4.7.0 "},
		{name: "hold", st: StageMail, vs: []Verdict{verdict("r", ActionHold, ModeEnforce)}, hold: 1},
		{name: "tag", st: StageMail, vs: []Verdict{verdict("r", ActionTag, ModeEnforce)}, tag: 1},
		{name: "delay", st: StageMail, vs: []Verdict{{Source: "r", Action: ActionDelay, Delay: 3 * time.Second}}, delay: 3 * time.Second},
		{name: "delays add up to the cap", st: StageMail,
			vs:    []Verdict{{Source: "a", Action: ActionDelay, Delay: 15 * time.Second}, {Source: "b", Action: ActionDelay, Delay: 15 * time.Second}},
			delay: 20 * time.Second},
		{name: "strictest wins", st: StageMail,
			vs:     []Verdict{verdict("t", ActionTempfail, ModeEnforce), verdict("j", ActionReject, ModeEnforce), verdict("d", ActionDisconnect, ModeEnforce)},
			action: ActionReject, reply: "550 5.7.1 Rate limit j "},
		{name: "refusal and hold: the refusal answers", st: StageMail,
			vs:     []Verdict{verdict("h", ActionHold, ModeEnforce), verdict("t", ActionTempfail, ModeEnforce)},
			action: ActionTempfail, reply: "451 4.7.1 Rate limit t ", hold: 1},
		{name: "first hold holds", st: StageMail,
			vs: []Verdict{verdict("h1", ActionHold, ModeEnforce), verdict("h2", ActionHold, ModeEnforce)}, hold: 1},
		{name: "custom reply", st: StageMail,
			vs:     []Verdict{{Source: "r", Action: ActionTempfail, Reply: MustReply("451 4.7.1 Slow down {sender}")}},
			action: ActionTempfail, reply: "451 4.7.1 Slow down alice@example.org"},
		{name: "reject has no retry text", st: StageMail, vs: []Verdict{verdict("r", ActionReject, ModeEnforce)},
			action: ActionReject, reply: "550 5.7.1 Rate limit r exceeded for sender:alice@example.org"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := c.Decide(tc.st, tc.vs, env)
			if d.Action != tc.action || !strings.HasPrefix(d.Reply, tc.reply) || d.Delay != tc.delay ||
				(d.Hold != nil) != (tc.hold > 0) || len(d.Tags) != tc.tag {
				t.Errorf("got action %s reply %q delay %v hold %v tags %d; want %s %q %v %d %d",
					d.Action, d.Reply, d.Delay, d.Hold != nil, len(d.Tags), tc.action, tc.reply, tc.delay, tc.hold, tc.tag)
			}
			if tc.action == ActionReject && strings.Contains(d.Reply, "try again") {
				t.Errorf("a permanent refusal says try again: %q", d.Reply)
			}
			if d.Refused() {
				if err := postfixAccepts(d.Reply); err != nil {
					t.Errorf("reply %q: %v", d.Reply, err)
				}
			}
			if d.Hold != nil && d.Hold.Source != tc.vs[0].Source {
				t.Errorf("held by %s, want the first hold %s", d.Hold.Source, tc.vs[0].Source)
			}
		})
	}
}

// Modes: a rule's own mode, softened by the global one; tag mode never
// refuses, dry-run never shows.
func TestDecideModes(t *testing.T) {
	for _, tc := range []struct {
		global, rule Mode
		a            Action
		want         Action // outcome action
		refused      bool
		tags         int
		hold         bool
	}{
		{ModeEnforce, ModeEnforce, ActionTempfail, ActionTempfail, true, 0, false},
		{ModeEnforce, ModeTag, ActionTempfail, ActionTag, false, 1, false},
		{ModeEnforce, ModeDryRun, ActionTempfail, ActionNone, false, 0, false},
		{ModeTag, ModeEnforce, ActionReject, ActionTag, false, 1, false},
		{ModeTag, ModeTag, ActionDisconnect, ActionTag, false, 1, false},
		{ModeTag, ModeDryRun, ActionTempfail, ActionNone, false, 0, false},
		{ModeDryRun, ModeEnforce, ActionTempfail, ActionNone, false, 0, false},
		{ModeDryRun, ModeTag, ActionTag, ActionNone, false, 0, false},
		{ModeEnforce, ModeEnforce, ActionHold, ActionHold, false, 0, true},
		{ModeTag, ModeEnforce, ActionHold, ActionTag, false, 1, false},
		{ModeEnforce, ModeDryRun, ActionHold, ActionNone, false, 0, false},
		{ModeEnforce, ModeTag, ActionDelay, ActionTag, false, 1, false},
		{ModeEnforce, ModeDryRun, ActionDelay, ActionNone, false, 0, false},
	} {
		c := config(tc.global)
		v := verdict("r", tc.a, tc.rule)
		v.Delay = time.Second
		d := c.Decide(StageMail, []Verdict{v}, nil)
		if len(d.Outcomes) != 1 || d.Outcomes[0].Action != tc.want || d.Refused() != tc.refused ||
			len(d.Tags) != tc.tags || (d.Hold != nil) != tc.hold {
			t.Errorf("global %s, rule %s, %s: outcomes %+v refused %v tags %d hold %v; want %s refused %v tags %d hold %v",
				tc.global, tc.rule, tc.a, d.Outcomes, d.Refused(), len(d.Tags), d.Hold != nil, tc.want, tc.refused, tc.tags, tc.hold)
			continue
		}
		if o := d.Outcomes[0]; o.Mode != tc.rule.Soften(tc.global) {
			t.Errorf("global %s, rule %s: outcome mode %s", tc.global, tc.rule, o.Mode)
		}
		if tc.want != ActionDelay && d.Delay != 0 {
			t.Errorf("global %s, rule %s, %s: delay %v in a mode that changes nothing", tc.global, tc.rule, tc.a, d.Delay)
		}
	}
}

func TestEscalate(t *testing.T) {
	c := config(ModeEnforce)
	c.SoftRefusals, c.HardRefusals, c.RefusalDelay = Count(2), Count(4), conf.Duration(time.Second)
	tempfail := func() Decision {
		return c.Decide(StageMail, []Verdict{verdict("r", ActionTempfail, ModeEnforce)}, nil)
	}
	for _, tc := range []struct {
		prior   int
		refused bool // the stage's own decision
		action  Action
		delay   time.Duration
		esc     Action
	}{
		{0, true, ActionTempfail, 0, ActionNone},
		{1, true, ActionTempfail, 0, ActionNone},
		{2, true, ActionTempfail, time.Second, ActionDelay}, // past soft: refusals wait
		{2, false, ActionNone, time.Second, ActionDelay},    // ... and so does every other reply
		{3, false, ActionNone, time.Second, ActionDelay},    //
		{4, true, ActionDisconnect, 0, ActionDisconnect},    // past hard: 421
		{4, false, ActionDisconnect, 0, ActionDisconnect},   // whatever the command
		{9, false, ActionDisconnect, 0, ActionDisconnect},   //
	} {
		var d Decision
		if tc.refused {
			d = tempfail()
		}
		c.Escalate(tc.prior, &d)
		if d.Action != tc.action || d.Delay != tc.delay || d.Escalation != tc.esc {
			t.Errorf("prior %d, refused %v: action %s delay %v escalation %s; want %s %v %s",
				tc.prior, tc.refused, d.Action, d.Delay, d.Escalation, tc.action, tc.delay, tc.esc)
		}
		if d.Action == ActionDisconnect && !strings.HasPrefix(d.Reply, "421 4.7.0 ") {
			t.Errorf("prior %d: disconnect reply %q", tc.prior, d.Reply)
		}
	}
	// The pause never passes max_delay.
	d := Decision{Delay: 20 * time.Second}
	c.Escalate(3, &d)
	if d.Delay != c.MaxDelay.D() {
		t.Errorf("delay %v past max_delay %v", d.Delay, c.MaxDelay.D())
	}
	// Zero disables a limit.
	c.SoftRefusals, c.HardRefusals = Count(0), Count(0)
	d = tempfail()
	c.Escalate(100, &d)
	if d.Action != ActionTempfail || d.Delay != 0 {
		t.Errorf("with both limits off: %s %v", d.Action, d.Delay)
	}
}

// In tag and dry-run mode nothing escalates: the roll-out must not
// change what the client sees.
func TestEscalateOnlyInEnforceMode(t *testing.T) {
	for _, m := range []Mode{ModeTag, ModeDryRun} {
		c := config(m)
		var d Decision
		c.Escalate(1000, &d)
		if d.Action != ActionNone || d.Delay != 0 || d.Escalation != ActionNone {
			t.Errorf("mode %s: %+v", m, d)
		}
	}
}

func TestConfigDefaultsAndValidate(t *testing.T) {
	c := config(ModeEnforce)
	if c.MaxDelay.D() != 20*time.Second || c.MilterTimeout.D() != 30*time.Second || *c.SoftRefusals != 10 || *c.HardRefusals != 20 || c.RefusalDelay.D() != time.Second {
		t.Errorf("defaults: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults invalid: %v", err)
	}
	// A shorter MTA timeout (Sendmail's T=R:10s) lowers the default cap.
	s := Config{MilterTimeout: conf.Duration(10 * time.Second)}
	s.Defaults()
	if s.MaxDelay.D() != 5*time.Second {
		t.Errorf("max_delay with milter_timeout 10s: %v, want 5s", s.MaxDelay.D())
	}
	if err := s.Validate(); err != nil {
		t.Errorf("%v", err)
	}
	for _, tc := range []struct {
		c   Config
		key string
	}{
		{Config{MaxDelay: conf.Duration(26 * time.Second)}, "max_delay"},
		{Config{MaxDelay: conf.Duration(30 * time.Second)}, "max_delay"},
		{Config{MilterTimeout: conf.Duration(10 * time.Second), MaxDelay: conf.Duration(6 * time.Second)}, "max_delay"},
		{Config{MilterTimeout: conf.Duration(3 * time.Second)}, "milter_timeout"},
		{Config{SoftRefusals: Count(-1)}, "soft_refusals"},
		{Config{HardRefusals: Count(-1)}, "hard_refusals"},
		{Config{MaxDelay: conf.Duration(2 * time.Second), RefusalDelay: conf.Duration(3 * time.Second)}, "refusal_delay"},
	} {
		tc.c.Defaults()
		err := tc.c.Validate()
		ke, ok := err.(*conf.Error)
		if !ok || ke.Path[0] != tc.key {
			t.Errorf("%+v: %v, want an error about %s", tc.c, err, tc.key)
		}
	}
	if err := c.CheckDelay(21 * time.Second); err == nil {
		t.Error("a delay above max_delay passed")
	}
	if err := c.CheckDelay(20 * time.Second); err != nil {
		t.Error(err)
	}
}
