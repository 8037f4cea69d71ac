package policy

import (
	"time"

	"sluice/conf"
)

// Config is the global part of the policy: the top-level keys of the file.
type Config struct {
	Mode         Mode          `toml:"mode"`          // enforce | tag | dry-run
	MaxDelay     conf.Duration `toml:"max_delay"`     // cap on any pause before a reply
	SoftRefusals int           `toml:"soft_refusals"` // after this many refusals in a session, pause before each reply
	HardRefusals int           `toml:"hard_refusals"` // after this many, 421 and disconnect
	RefusalDelay conf.Duration `toml:"refusal_delay"` // the pause after soft_refusals
}

// Defaults fills what the file left out. Postfix's own defaults for
// smtpd_soft_error_limit, smtpd_hard_error_limit and smtpd_error_sleep_time
// are 10, 20 and 1s; a milter that answers slower than milter_command_timeout
// (30s) is cut off, so pauses stop at 20s.
func (c *Config) Defaults() {
	if c.MaxDelay == 0 {
		c.MaxDelay = conf.Duration(20 * time.Second)
	}
	if c.SoftRefusals == 0 {
		c.SoftRefusals = 10
	}
	if c.HardRefusals == 0 {
		c.HardRefusals = 20
	}
	if c.RefusalDelay == 0 {
		c.RefusalDelay = conf.Duration(time.Second)
	}
}

// Validate checks the global policy keys.
func (c *Config) Validate() error {
	if c.MaxDelay.D() >= 30*time.Second {
		return conf.Errorf("max_delay", "%s is not below Postfix's default milter_command_timeout (30s): the MTA would give up on sluice", c.MaxDelay.D())
	}
	if c.SoftRefusals < 0 {
		return conf.Errorf("soft_refusals", "must not be negative")
	}
	if c.HardRefusals < 0 {
		return conf.Errorf("hard_refusals", "must not be negative")
	}
	if c.RefusalDelay.D() > c.MaxDelay.D() {
		return conf.Errorf("refusal_delay", "%s is above max_delay %s", c.RefusalDelay.D(), c.MaxDelay.D())
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
}

// Refused reports whether the decision refuses the command.
func (d *Decision) Refused() bool { return d.Action.Refuses() }

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
		o := Outcome{Verdict: v, Mode: v.Mode.Soften(c.Mode), Action: v.Action}
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

// Escalate applies the session's refusal count after a refusal: past
// soft_refusals each reply waits refusal_delay, past hard_refusals the
// session is ended with 421, as Postfix does with its own error counts.
func (c *Config) Escalate(refusals int, d *Decision) {
	if !d.Refused() || c.Mode != ModeEnforce {
		return
	}
	if c.HardRefusals > 0 && refusals >= c.HardRefusals && d.Action != ActionDisconnect {
		d.Action = ActionDisconnect
		d.Reply = "421 4.7.0 Too many refused commands; closing connection"
	}
	if c.SoftRefusals > 0 && refusals >= c.SoftRefusals {
		d.Delay = min(d.Delay+c.RefusalDelay.D(), c.MaxDelay.D())
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
