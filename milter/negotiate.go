package milter

import (
	"github.com/emersion/go-milter"

	"sluice/smtp"
)

// negotiate picks the events and macros the engine needs. Every event a
// milter takes costs the MTA a round trip, so what no rule or check reads
// is left out: no body unless bytes are counted, no header fields unless
// sluice writes fields of its own (only then can a forged copy be
// mistaken for one of ours) or counts the message's size.
func negotiate(n smtp.Needs) (milter.OptAction, milter.OptProtocol, map[milter.Stage][]string) {
	actions := milter.OptAddHeader | milter.OptChangeHeader | milter.OptQuarantine | milter.OptSetSymList
	protocol := milter.OptNoUnknown | milter.OptNoData
	if !n.Body {
		protocol |= milter.OptNoBody
	}
	if !n.Rcpt {
		protocol |= milter.OptNoRcptTo
	}
	if !n.Helo {
		protocol |= milter.OptNoHelo
	}
	if !n.Edits {
		protocol |= milter.OptNoEOH
	}
	if !n.Header {
		protocol |= milter.OptNoHeaders
	}
	mail := []string{"{daemon_name}"}
	later := []string(nil)
	if n.QueueID {
		mail = append(mail, "i")
		later = append(later, "i")
	}
	if n.SASLUser {
		mail = append(mail, "{auth_authen}")
		later = append(later, "{auth_authen}")
	}
	syms := map[milter.Stage][]string{
		milter.StageConnect:  {"j", "{daemon_name}", "{client_addr}"},
		milter.StageHelo:     {"{daemon_name}"},
		milter.StageMailFrom: mail,
		milter.StageRcptTo:   later,
		milter.StageEOM:      later,
	}
	return actions, protocol, syms
}
