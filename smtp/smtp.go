// Package smtp is what sluice's front ends and its engine say to each
// other: the stages of an SMTP session, the actions and modes a policy
// answers with, and the decision and header edits the engine gives back.
//
// It imports nothing of sluice, so a front end (the milter) can drive the
// engine through the Engine and Session interfaces without knowing how
// the engine counts, checks or decides.
package smtp

import (
	"context"
	"fmt"
	"net/netip"
	"time"
)

// Stage is the SMTP stage a question is asked at.
type Stage uint8

const (
	Connect Stage = iota
	Helo
	Mail
	Rcpt
	Data // end of message: size known, headers may be edited
)

var stageNames = [...]string{"connect", "helo", "mail", "rcpt", "data"}

func (s Stage) String() string {
	if int(s) < len(stageNames) {
		return stageNames[s]
	}
	return fmt.Sprintf("stage(%d)", s)
}

// Action is what a crossed limit or a failed check asks for. The order is
// strictness: when several meet at one stage the strictest wins.
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

// ParseAction parses an action name as the config file writes it.
func ParseAction(s string) (Action, error) {
	for i, n := range actionNames {
		if n == s {
			return Action(i), nil
		}
	}
	return 0, fmt.Errorf("unknown action %q (want tempfail, reject, tag, hold, delay, disconnect or none)", s)
}

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

// Words are the names an action is written with in the config file, in
// the order errors list them: a config loader that finds a number or a
// list where an action belongs says which words it wants.
func (Action) Words() []string {
	return []string{"tempfail", "reject", "tag", "hold", "delay", "disconnect", "none"}
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

// Words are the names a mode is written with in the config file.
func (Mode) Words() []string { return []string{"enforce", "tag", "dry-run"} }

// Soften returns the softer of two modes: a tag-mode server never refuses,
// and a dry-run rule never shows, whatever the other says.
func (m Mode) Soften(other Mode) Mode {
	if other > m {
		return other
	}
	return m
}

// Client is what a front end knows of the client at CONNECT.
type Client struct {
	IP       netip.Addr // invalid for a unix-socket or unknown client
	Name     string     // the MTA's verified PTR name, or "unknown"
	Listener string     // which SMTP service took the session (Postfix's {daemon_name}: $myhostname unless master.cf names it)
	// Local says the MTA took the message from a program on its own
	// host, not over SMTP: Postfix's sendmail(1) through
	// non_smtpd_milters, Sendmail's -bs. Such a submission cannot be
	// refused a recipient, so every refusal waits for the end of the
	// message.
	Local bool
}

// Macros are facts the MTA sends beside its events (the milter's macros).
// An empty field leaves what the session knows as it is.
type Macros struct {
	QueueID  string
	SASLUser string
	Listener string // only when the connect stage did not name it
}

// Kind is what a decision tells the front end to answer.
type Kind uint8

const (
	// Continue: go on with the session.
	Continue Kind = iota
	// Accept: nothing later in this message can change the answer; the
	// front end may leave the rest of the message out.
	Accept
	// Reply refuses the command with Decision.Reply.
	Reply
	// Disconnect refuses with a 421 Decision.Reply, after which the MTA
	// closes the session.
	Disconnect
)

var kindNames = [...]string{"continue", "accept", "reply", "disconnect"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// Decision is the engine's answer for one stage. It is the caller's: it
// shares no memory with the engine.
type Decision struct {
	Kind  Kind
	Reply string        // for Reply and Disconnect: "451 4.7.1 ...", '%' doubled for the MTA
	Pause time.Duration // wait this long before answering

	// Action is the refusal answered (tempfail, reject, disconnect) or
	// ActionNone; Escalation what the session's earlier refusals added
	// (ActionDelay, ActionDisconnect or ActionNone).
	Action     Action
	Escalation Action
	// Outcomes are the verdicts of every rule and check that asked for
	// something at this stage, in the order they were asked.
	Outcomes []Outcome
	// Checks are the results of the sender checks that ran at this
	// stage (MAIL FROM), those that passed included.
	Checks []Check
}

// Refused reports whether the decision refuses the command.
func (d Decision) Refused() bool { return d.Kind == Reply || d.Kind == Disconnect }

// Outcome is what became of one rule's or check's verdict.
type Outcome struct {
	Source     string // rule or check: "msgs-per-sender", "spf"
	Key        string // what was counted or checked: "sender:alice@example.org"
	Limit      string // the limit as written: "10/1h"
	Detail     string // "count=11", "open=3", the check's finding
	RetryAfter time.Duration
	Asked      Action // what the rule or check asks for
	Mode       Mode   // the mode it was applied in: its own, softened by the global one
	Action     Action // what was done: Asked in enforce mode, tag in tag mode, none in dry-run
}

// Check is one sender check's result.
type Check struct {
	Name   string // "spf", "dnsbl:zen.example", "require_fqdn_helo"
	Result string // pass, fail, listed, temperror, ok...
	Asked  Action // what the configuration asks for this result; none for a pass
	Mode   Mode   // the mode it is applied in
	Detail string
}

// EditKind is one kind of change to a message at its end.
type EditKind uint8

const (
	// Remove deletes the Index-th field called Name (1-based, counted per
	// name without regard to case).
	Remove EditKind = iota
	// Insert puts a field at position Index of the header (0: the top).
	Insert
	// Add appends a field at the end of the header.
	Add
	// Quarantine holds the message, Value saying why.
	Quarantine
)

var editNames = [...]string{"remove", "insert", "add", "quarantine"}

func (k EditKind) String() string {
	if int(k) < len(editNames) {
		return editNames[k]
	}
	return fmt.Sprintf("edit(%d)", k)
}

// Edit is one change to make at end of message. Edits are made in the
// order given: removals last occurrence first, so earlier indexes hold.
type Edit struct {
	Kind  EditKind
	Name  string
	Value string
	Index int
}

// Needs says which events and facts a policy reads, so that a front end
// asks the MTA for no more.
type Needs struct {
	Helo   bool // the HELO name
	Rcpt   bool // each RCPT TO
	Header bool // the header fields (forged ones removed, a size counted, DKIM, DMARC's From)
	Body   bool // the body: its size, or its bytes for DKIM
	// ExactHeaders: header values as written after the colon, the
	// leading space the MTA usually drops kept (DKIM's simple header
	// canonicalisation hashes it). Given through ExactHeaderSession.
	ExactHeaders bool
	// Edits: the end of message may change the message (tags, holds,
	// check results), so forged copies of sluice's fields must be seen.
	Edits    bool
	SASLUser bool // the SASL login name at MAIL FROM
	QueueID  bool // the queue id, for the log
	// AcceptAtMail: nothing after MAIL FROM can change the answer, so a
	// decision at MAIL FROM may be Accept.
	AcceptAtMail bool
	// Answers: the stages whose answer may be other than continue.
	Answers Answers
}

// Answers says which stages may be answered other than continue: refused,
// paused before the reply, or (MAIL FROM) accepted. The MTA need not wait
// for the answer to the others. The end of message is always answered:
// it is where the message is accepted.
type Answers struct {
	Connect, Helo, Mail, Rcpt bool
}

// Session is one SMTP session as a front end drives it. Facts are given
// first (Helo, Mail, Rcpt, Header, Body, SetMacros), then the stage is
// asked. Its methods are called from one goroutine, one at a time.
type Session interface {
	Helo(name string)
	// Mail starts a transaction: the sender ("" for <>) and the SASL
	// login, if any.
	Mail(sender, saslUser string)
	Rcpt(rcpt string)
	Header(name, value string)
	// Body gives a chunk of the body as the MTA sent it (CRLF line
	// ends); the session reads it before Body returns and keeps nothing
	// of it, so the caller may reuse the memory.
	Body(chunk []byte)
	SetMacros(m Macros)
	// Stage decides the stage from what the session knows so far.
	Stage(ctx context.Context, st Stage) Decision
	// Edits are the changes to the message after a Data stage that was
	// not refused.
	Edits() []Edit
	// EndMessage closes the transaction: accepted, or aborted or refused.
	EndMessage(ctx context.Context, accepted bool)
	// Close ends the session and frees what it holds.
	Close(ctx context.Context)
}

// ExactHeaderSession is a Session that can take a header field's value
// exactly as written after the colon, leading whitespace included, where
// the front end has it so (milter SMFIP_HDR_LEADSPC, a message file).
// Header's value lacks the one space after the colon that MTAs drop.
type ExactHeaderSession interface {
	Session
	ExactHeader(name, value string)
}

// BodySizer is a Session that can count body bytes it is not shown: a
// front end that knows only a message's size (a replayed log) gives that.
type BodySizer interface {
	BodySize(n int64)
}

// Engine opens sessions; a reload makes a new one, and each session keeps
// the engine it was opened on.
type Engine interface {
	Needs() Needs
	Open(c Client) Session
}
