// Package policy holds what limits and auth answer with — verdicts, actions,
// modes and reply templates — and turns a stage's verdicts into one decision.
package policy

import (
	"fmt"
	"time"
)

// Stage is the SMTP stage a question is asked at.
type Stage uint8

const (
	StageConnect Stage = iota
	StageHelo
	StageMail
	StageRcpt
	StageData // end of message: size known, headers may be added
)

var stageNames = [...]string{"connect", "helo", "mail", "rcpt", "data"}

func (s Stage) String() string {
	if int(s) < len(stageNames) {
		return stageNames[s]
	}
	return fmt.Sprintf("stage(%d)", s)
}

// Action is what a crossed limit or a failed check asks for. The order is
// strictness: when several verdicts meet at one stage the strictest wins.
type Action uint8

const (
	ActionNone Action = iota
	ActionTag
	ActionDelay
	ActionHold
	ActionTempfail
	ActionDisconnect
	ActionReject
)

var actionNames = [...]string{"none", "tag", "delay", "hold", "tempfail", "disconnect", "reject"}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return fmt.Sprintf("action(%d)", a)
}

// Refuses reports whether the action refuses the SMTP command.
func (a Action) Refuses() bool { return a >= ActionTempfail }

// UnmarshalText accepts the names used in the config file.
func (a *Action) UnmarshalText(b []byte) error {
	v, err := ParseAction(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

func (a Action) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// ParseAction parses an action name.
func ParseAction(s string) (Action, error) {
	for i, n := range actionNames {
		if n == s {
			return Action(i), nil
		}
	}
	return 0, fmt.Errorf("unknown action %q (want tempfail, reject, tag, hold, delay, disconnect or none)", s)
}

// Mode says whether a verdict is enforced, only shown in headers, or only
// logged. The zero value is enforce.
type Mode uint8

const (
	ModeEnforce Mode = iota
	ModeTag
	ModeDryRun
)

var modeNames = [...]string{"enforce", "tag", "dry-run"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", m)
}

// ParseMode parses a mode name.
func ParseMode(s string) (Mode, error) {
	for i, n := range modeNames {
		if n == s {
			return Mode(i), nil
		}
	}
	return 0, fmt.Errorf("unknown mode %q (want enforce, tag or dry-run)", s)
}

func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// Soften returns the softer of two modes: a tag-mode server never refuses,
// and a dry-run rule never shows, whatever the other says.
func (m Mode) Soften(other Mode) Mode {
	if other > m {
		return other
	}
	return m
}

// Verdict is one answer that asks for something: a crossed limit or a check
// with a result that maps to an action.
type Verdict struct {
	Source     string        // rule or check name: "msgs-per-sender", "spf"
	Action     Action        // what the source asks for
	Mode       Mode          // the source's own mode
	Reply      *Reply        // custom reply; nil means the default for the action
	Text       string        // default reply text (a template) when Reply is nil
	Delay      time.Duration // for ActionDelay
	Key        string        // what was counted or checked: "sender:alice@example.org"
	Detail     string        // for the tag header and logs: "rate=11/1h limit=10/1h"
	Limit      string        // the limit as written: "10/1h"
	RetryAfter time.Duration // when the client may try again; 0 if unknown
	OwnHeader  bool          // the source writes its own header (auth's X-Sluice-Check), so no tag header
}
