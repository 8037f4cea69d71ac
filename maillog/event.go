package maillog

import (
	"net/netip"

	"sluice/smtp"
)

// Kind is what a log line tells.
type Kind uint8

const (
	// Ignored: a line of no use here (another program, a warning).
	Ignored Kind = iota
	// Connect: a client connected (Postfix's "connect from").
	Connect
	// Disconnect: the session ended, with Postfix's command counts.
	Disconnect
	// Client: a transaction got a queue id (Postfix's "QID: client=").
	Client
	// Refused: the MTA or a milter refused a command (Refusal says how),
	// or held or discarded the message.
	Refused
	// Data: the message reached the end of DATA (Postfix's cleanup saw
	// its header).
	Data
	// Queued: the message was accepted and queued, with its sender, size
	// and recipient count (Postfix's qmgr "from=", Sendmail's "from=").
	Queued
	// Delivery: a delivery attempt to one or more recipients.
	Delivery
	// Removed: the message left the queue (Postfix's qmgr).
	Removed
	// Auth: the client logged in (Sendmail's "AUTH=server").
	Auth
	// NoMail: a session that ended without a transaction (Sendmail's "did
	// not issue MAIL").
	NoMail
)

var kindNames = [...]string{"ignored", "connect", "disconnect", "client", "refused", "data", "queued", "delivery", "removed", "auth", "nomail"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind?"
}

// MTA is which mail server wrote a line.
type MTA uint8

const (
	Postfix MTA = iota + 1
	Sendmail
)

func (m MTA) String() string {
	switch m {
	case Postfix:
		return "postfix"
	case Sendmail:
		return "sendmail"
	}
	return "?"
}

// Refusal is who refused what.
type Refusal uint8

const (
	// ByMTA: the MTA's own restrictions; milters never saw the command.
	ByMTA Refusal = iota
	// ByMilter: a milter refused the command, so milters saw it.
	ByMilter
)

// Event is one log line understood. Only the fields of its Kind are set;
// the parser reuses an Event from line to line.
type Event struct {
	Head
	MTA      MTA
	Listener string // the smtpd service ("smtpd", "submission") or Sendmail's daemon name
	Kind     Kind
	QueueID  string // "" for Postfix's NOQUEUE

	ClientName string
	ClientIP   netip.Addr
	HasClient  bool

	SASLUser string
	Sender   string
	// HasSender: Sender was logged (it may be "", the null sender).
	HasSender bool
	Rcpts     []string
	Helo      string

	Stage  smtp.Stage // of a refusal
	By     Refusal
	Action smtp.Action // of a refusal: reject, tempfail, hold, discard (ActionNone)
	Reply  string

	Size  int64
	Nrcpt int // -1: not logged

	// Postfix's disconnect counts: successful HELO/EHLO, XCLIENT, MAIL
	// and DATA (or BDAT) commands.
	Helos, XClients, Mails, Datas int
}

func (e *Event) reset() {
	rcpts := e.Rcpts[:0]
	*e = Event{Rcpts: rcpts, Nrcpt: -1}
}
