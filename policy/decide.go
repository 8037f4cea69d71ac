package policy

import (
	"fmt"
	"time"

	"sluice/conf"
)

// Config is the global part of the policy: the top-level keys of the file.
type Config struct {
	Mode          Mode          `toml:"mode"`           // enforce | tag | dry-run
	MaxDelay      conf.Duration `toml:"max_delay"`      // cap on any pause before a reply
	MilterTimeout conf.Duration `toml:"milter_timeout"` // how long the MTA waits for a milter reply
	SoftRefusals  *int          `toml:"soft_refusals"`  // after this many refusals in a session, pause before each reply; 0: never
	HardRefusals  *int          `toml:"hard_refusals"`  // after this many, 421 and disconnect; 0: never
	RefusalDelay  conf.Duration `toml:"refusal_delay"`  // the pause after soft_refusals
}

// delayMargin is what a pause must leave of the MTA's milter timeout for
// the stage's own work (counter store, DNS) and the network.
const delayMargin = 5 * time.Second

// Defaults fills what the file left out. Postfix's own defaults for
// smtpd_soft_error_limit, smtpd_hard_error_limit and smtpd_error_sleep_time
// are 10, 20 and 1s, and its milter_command_timeout is 30s: a milter that
// answers slower is cut off, so pauses stop at 20s — or earlier when the
// MTA waits less (Sendmail's INPUT_MAIL_FILTER T=R: is 10s by default).
func (c *Config) Defaults() {
	if c.MilterTimeout == 0 {
		c.MilterTimeout = conf.Duration(30 * time.Second)
	}
	if c.MaxDelay == 0 {
		c.MaxDelay = conf.Duration(min(20*time.Second, max(c.MilterTimeout.D()-delayMargin, time.Second)))
	}
	if c.SoftRefusals == nil {
		c.SoftRefusals = Count(10)
	}
	if c.HardRefusals == nil {
		c.HardRefusals = Count(20)
	}
	if c.RefusalDelay == 0 {
		c.RefusalDelay = conf.Duration(min(time.Second, c.MaxDelay.D()))
	}
}

// Validate checks the global policy keys.
func (c *Config) Validate() error {
	if c.MilterTimeout.D() < delayMargin+time.Second {
		return conf.Errorf("milter_timeout", "%s is too short: no MTA waits less than %s for a milter", c.MilterTimeout.D(), delayMargin+time.Second)
	}
	if c.MaxDelay.D() > c.MilterTimeout.D()-delayMargin {
		return conf.Errorf("max_delay", "%s does not leave %s of milter_timeout (%s) for the stage's own work: the MTA would give up on sluice (Postfix: milter_command_timeout; Sendmail: T=R: in INPUT_MAIL_FILTER)",
			c.MaxDelay.D(), delayMargin, c.MilterTimeout.D())
	}
	if c.SoftRefusals != nil && *c.SoftRefusals < 0 {
		return conf.Errorf("soft_refusals", "must not be negative (0 turns the pause off)")
	}
	if c.HardRefusals != nil && *c.HardRefusals < 0 {
		return conf.Errorf("hard_refusals", "must not be negative (0 turns the disconnect off)")
	}
	if c.RefusalDelay.D() > c.MaxDelay.D() {
		return conf.Errorf("refusal_delay", "%s is above max_delay %s", c.RefusalDelay.D(), c.MaxDelay.D())
	}
	return nil
}

// Count makes a value for SoftRefusals and HardRefusals, which are
// pointers so that a file can say 0 (never) apart from leaving them out.
func Count(n int) *int { return &n }

func deref(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}

// CheckDelay validates a rule's or check's own pause against the cap.
func (c *Config) CheckDelay(d time.Duration) error {
	if d > c.MaxDelay.D() {
		return fmt.Errorf("%s is above max_delay (%s)", d, c.MaxDelay.D())
	}
	return nil
}

// Outcome is what became of one verdict once modes were applied.
type Outcome struct {
	*Verdict
	Mode   Mode   // effective mode: the verdict's, softened by the global one
	Action Action // what is done: the verdict's action, ActionTag in tag mode, ActionNone in dry-run
}

// Decision is the answer for one stage.
type Decision struct {
	Action   Action        // ActionNone (continue) or the refusal to answer with
	Reply    string        // the rendered reply when Action refuses
	Delay    time.Duration // pause before answering
	Hold     *Verdict      // quarantine the message at end of message
	Tags     []*Verdict    // show as headers at end of message
	Outcomes []Outcome     // every verdict, for logs and metrics

	// Escalation is what the session's earlier refusals added to this
	// reply: ActionDelay (past soft_refusals), ActionDisconnect (past
	// hard_refusals) or ActionNone.
	Escalation Action
}

// Refused reports whether the decision refuses the command.
func (d *Decision) Refused() bool { return d.Action.Refuses() }

// Effective is the mode a verdict of mode m is applied in: the softer of
// its own and the global one. Every part that must know what the global
// mode makes of a verdict asks here.
func (c *Config) Effective(m Mode) Mode { return m.Soften(c.Mode) }

// Refuses reports whether any verdict would refuse the command under the
// global mode: the caller can skip costlier questions.
func (c *Config) Refuses(vs []Verdict) bool {
	for i := range vs {
		if vs[i].Action.Refuses() && c.Effective(vs[i].Mode) == ModeEnforce {
			return true
		}
	}
	return false
}

// Decide applies the global mode to a stage's verdicts: the strictest
// enforced refusal answers; delays add up to the cap; the first hold holds;
// tags, and refusals softened to tags, become headers.
func (c *Config) Decide(stage Stage, vs []Verdict, env *Env) Decision {
	var d Decision
	var winner *Verdict
	for i := range vs {
		v := &vs[i]
		if v.Action == ActionNone {
			continue
		}
		o := Outcome{Verdict: v, Mode: c.Effective(v.Mode), Action: v.Action}
		switch o.Mode {
		case ModeTag:
			o.Action = ActionTag
		case ModeDryRun:
			o.Action = ActionNone
		}
		d.Outcomes = append(d.Outcomes, o)
		switch a := o.Action; {
		case a.Refuses():
			if winner == nil || a > d.Action {
				winner, d.Action = v, a
			}
		case a == ActionHold:
			if d.Hold == nil {
				d.Hold = v
			}
		case a == ActionDelay:
			d.Delay += v.Delay
		case a == ActionTag:
			d.Tags = append(d.Tags, v)
		}
	}
	if winner != nil {
		d.Reply = c.render(stage, d.Action, winner, env)
	}
	if d.Delay > c.MaxDelay.D() {
		d.Delay = c.MaxDelay.D()
	}
	return d
}

// Escalates reports whether refusals in a session may ever pause or end
// the replies that follow them: only in enforce mode, with soft or hard
// refusals set.
func (c *Config) Escalates() bool {
	return c.Mode == ModeEnforce && (deref(c.SoftRefusals) > 0 || deref(c.HardRefusals) > 0)
}

// Escalate applies the session's record to a stage's reply, as Postfix
// does with its own error count: once a session has had soft_refusals
// refusals, every further reply waits refusal_delay; once it has had
// hard_refusals, the next command is answered 421 and the MTA closes the
// session. prior is the number of refusals the session was given before
// this reply (a session that delivers a message starts again from zero).
//
// Only enforced refusals count. A refusal that tag or dry-run mode turned
// into a header or a log line changed nothing for the client, and
// escalating on it would make a rule in tag mode delay or disconnect
// clients: the roll-out mode would no longer be safe.
func (c *Config) Escalate(prior int, d *Decision) {
	if c.Mode != ModeEnforce {
		return
	}
	if hard := deref(c.HardRefusals); hard > 0 && prior >= hard {
		d.Action, d.Escalation = ActionDisconnect, ActionDisconnect
		d.Reply = "421 4.7.0 Too many refused commands; closing connection"
		d.Delay = 0
		return
	}
	if soft := deref(c.SoftRefusals); soft > 0 && prior >= soft {
		d.Delay = min(d.Delay+c.RefusalDelay.D(), c.MaxDelay.D())
		d.Escalation = ActionDelay
	}
}

// Default reply texts, used when a verdict brings neither a custom reply
// nor a text of its own.
const (
	defaultLimitText = "Rate limit {rule} exceeded for {key}"
	retryText        = "; try again in {retry_after}"
)

func (c *Config) render(stage Stage, a Action, v *Verdict, env *Env) string {
	if v.Reply != nil {
		return v.Reply.Render(v, env)
	}
	text := v.Text
	if text == "" {
		text = defaultLimitText
	}
	var code string
	switch {
	case a == ActionDisconnect, a == ActionTempfail && stage <= StageHelo:
		// At connect and HELO Postfix only applies a refusal from MAIL FROM
		// on; 421 makes it hang up at once, which is what a connection
		// limit means.
		code = "421 4.7.0 "
	case a == ActionTempfail:
		code = "451 4.7.1 "
	default:
		code = "550 5.7.1 "
	}
	if a != ActionReject && v.RetryAfter > 0 {
		text += retryText
	}
	r, err := ParseReply(code + text)
	if err != nil {
		// A source's own text failed validation: a bug, but the client must
		// still get a well-formed reply.
		r = MustReply(code + defaultLimitText)
	}
	return r.Render(v, env)
}
