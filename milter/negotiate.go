package milter

import (
	"github.com/d--j/go-milter"

	"sluice/smtp"
)

// offer is what sluice asks of the MTA under one engine: the actions it
// may take, the events it is spared and the answers it need not wait
// for, and the macros of each stage.
type offer struct {
	actions  milter.OptAction
	protocol milter.OptProtocol
	macros   [][]string // by milter.MacroStage
}

// negotiate works out the offer for what the engine needs. Every event a
// milter takes costs the MTA a round trip, and every answer it waits for
// one more wait, so what no rule or check reads is left out: no body
// unless bytes are counted or DKIM reads it, no header fields unless
// sluice writes fields of its own (only then can a forged copy be
// mistaken for one of ours), counts the message's size or checks it. An
// event sluice always answers with continue gets no answer at all
// (protocol 6, SMFIP_NR_*): the header fields and the body always, the
// other stages when no rule, check or escalation can answer them.
func negotiate(n smtp.Needs) offer {
	o := offer{
		actions: milter.OptAddHeader | milter.OptChangeHeader | milter.OptQuarantine,
		// DATA, unknown commands and the end of the header tell sluice
		// nothing it uses.
		protocol: milter.OptNoData | milter.OptNoUnknown | milter.OptNoEOH |
			milter.OptNoHeaderReply | milter.OptNoBodyReply,
	}
	if !n.Helo {
		o.protocol |= milter.OptNoHelo
	}
	if !n.Rcpt {
		o.protocol |= milter.OptNoRcptTo
	}
	if !n.Header {
		o.protocol |= milter.OptNoHeaders
	}
	if !n.Body {
		o.protocol |= milter.OptNoBody
	}
	if n.ExactHeaders {
		o.protocol |= milter.OptHeaderLeadingSpace
	}
	for _, q := range []struct {
		answers bool
		flag    milter.OptProtocol
	}{
		{n.Answers.Connect, milter.OptNoConnReply},
		{n.Answers.Helo, milter.OptNoHeloReply},
		{n.Answers.Mail, milter.OptNoMailReply},
		{n.Answers.Rcpt, milter.OptNoRcptReply},
	} {
		if !q.answers {
			o.protocol |= q.flag
		}
	}
	o.macros = stageMacros(n)
	return o
}

// The macros sluice reads.
const (
	macroListener = "{daemon_name}" // which SMTP service took the session
	macroSASLUser = "{auth_authen}" // the SASL login
	macroQueueID  = "i"
)

// stageMacros are the macros to ask for at each stage (SMFIF_SETSYMLIST):
// the MTA then sends those and no others, whatever its own settings
// (Postfix's milter_*_macros, Sendmail's confMILTER_MACROS_*). go-milter
// keeps a stage's macros until the stage comes again, so each is asked
// for once, where the MTA first knows it; a stage that needs none gets an
// empty list, else the MTA would send its own defaults there. The queue
// id is asked for at every stage of a transaction: Sendmail knows it from
// MAIL FROM on, Postfix from RCPT TO at the earliest, at the end of the
// message always.
func stageMacros(n smtp.Needs) [][]string {
	none := []string{""}
	m := make([][]string, milter.StageEndMarker)
	for _, st := range []milter.MacroStage{milter.StageHelo, milter.StageMail, milter.StageRcpt, milter.StageEOM} {
		m[st] = none
	}
	m[milter.StageConnect] = []string{macroListener}
	var mail, later []string
	if n.QueueID {
		mail, later = append(mail, macroQueueID), append(later, macroQueueID)
	}
	if n.SASLUser {
		mail = append(mail, macroSASLUser)
	}
	if len(mail) > 0 {
		m[milter.StageMail] = mail
	}
	if len(later) > 0 {
		m[milter.StageRcpt] = later
		m[milter.StageEOM] = later
	}
	return m
}

// accept is what sluice settles on with an MTA that offered version,
// actions and protocol: the offer, less what the MTA cannot do. An MTA
// older than protocol 6 (Postfix before 2.6, Sendmail before 8.14) cannot
// skip answers or take macro requests: it gets an answer to every event
// and sends the macros it is configured to send. go-milter's own
// negotiation would refuse such an MTA instead. A version below 2 is
// refused by go-milter after this.
func (o *offer) accept(mtaVersion, _ uint32, mtaActions, _ milter.OptAction, mtaProtocol, _ milter.OptProtocol, size milter.DataSize) (uint32, milter.OptAction, milter.OptProtocol, milter.DataSize, error) {
	version := min(mtaVersion, milter.MaxServerProtocolVersion)
	actions := o.actions & mtaActions
	if mtaActions&milter.OptSetMacros != 0 {
		actions |= milter.OptSetMacros
	}
	return version, actions, o.protocol & mtaProtocol, size, nil
}
