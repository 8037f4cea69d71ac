package milter

import (
	"github.com/emersion/go-milter"

	"sluice/policy"
)

// negotiate picks the events this policy needs. Every event a milter takes
// costs the MTA a round trip, so what no rule reads is left out: no body
// unless bytes are counted, no headers unless sluice writes headers of its
// own (only then can a forged copy be mistaken for one of ours).
func negotiate(p *Policy) (milter.OptAction, milter.OptProtocol, map[milter.Stage][]string) {
	actions := milter.OptAddHeader | milter.OptChangeHeader | milter.OptQuarantine | milter.OptSetSymList
	protocol := milter.OptNoUnknown | milter.OptNoData
	if !p.Limits.Needs(policy.StageData) {
		protocol |= milter.OptNoBody
	}
	if !p.Limits.Needs(policy.StageRcpt) {
		protocol |= milter.OptNoRcptTo
	}
	checks := p.checks()
	if !p.Limits.UsesHelo() && !checks {
		protocol |= milter.OptNoHelo
	}
	// Checks write Authentication-Results: forged ones must be seen to be
	// removed.
	if !p.Limits.MayTag(p.Decide.Mode) && !checks {
		protocol |= milter.OptNoEOH
		// A message's size is its header and body as the client sent
		// them (Postfix has no {msg_size}): bytes rules need the header
		// lines too.
		if !p.Limits.Needs(policy.StageData) {
			protocol |= milter.OptNoHeaders
		}
	}
	syms := map[milter.Stage][]string{
		milter.StageConnect:  {"j", "{daemon_name}", "{client_addr}"},
		milter.StageHelo:     {"{daemon_name}"},
		milter.StageMailFrom: {"i", "{auth_authen}", "{daemon_name}"},
		milter.StageRcptTo:   {"i", "{auth_authen}"},
		milter.StageEOM:      {"i", "{auth_authen}"},
	}
	return actions, protocol, syms
}

// endsAtMail reports whether nothing after MAIL FROM can change sluice's
// answer or the message under policy p with the events negotiated as
// protocol: no rule counts recipients or bytes, and no header is ever
// written (no tags, no check results). The session then answers ACCEPT at
// MAIL FROM (unless a hold or a count_on = "accepted" reservation waits
// for the end of the message), and the MTA leaves this milter out of the
// rest of the message: for Postfix that is the end-of-message round trip
// its cleanup server would make, per message.
func endsAtMail(p *Policy, protocol milter.OptProtocol) bool {
	const later = milter.OptNoRcptTo | milter.OptNoHeaders | milter.OptNoEOH | milter.OptNoBody
	return protocol&later == later && !p.checks() && !p.Limits.Needs(policy.StageData)
}
