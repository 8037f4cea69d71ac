// Package policy holds what limits and auth answer with — verdicts, actions,
// modes and reply templates — and turns a stage's verdicts into one decision.
package policy

import (
	"time"

	"sluice/smtp"
)

// Stage, Action and Mode are the engine's vocabulary (package smtp),
// named here too so that rules and checks read in policy's terms.
type (
	Stage  = smtp.Stage
	Action = smtp.Action
	Mode   = smtp.Mode
)

const (
	StageConnect = smtp.Connect
	StageHelo    = smtp.Helo
	StageMail    = smtp.Mail
	StageRcpt    = smtp.Rcpt
	StageData    = smtp.Data // end of message: size known, headers may be added
)

const (
	ActionNone       = smtp.ActionNone
	ActionTag        = smtp.ActionTag
	ActionDelay      = smtp.ActionDelay
	ActionHold       = smtp.ActionHold
	ActionTempfail   = smtp.ActionTempfail
	ActionDisconnect = smtp.ActionDisconnect
	ActionReject     = smtp.ActionReject
)

const (
	ModeEnforce = smtp.ModeEnforce
	ModeTag     = smtp.ModeTag
	ModeDryRun  = smtp.ModeDryRun
)

// ParseAction parses an action name.
func ParseAction(s string) (Action, error) { return smtp.ParseAction(s) }

// ParseMode parses a mode name.
func ParseMode(s string) (Mode, error) { return smtp.ParseMode(s) }

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
