package engine

import (
	"strings"

	"sluice/auth"
	"sluice/policy"
	"sluice/smtp"
)

// makeEdits is what the transaction does to its message, in the order the
// front end must apply it: forged fields out, check results in, tags
// added, hold. It returns nil when the message stays as it is.
func (s *Session) makeEdits() []smtp.Edit {
	var out []smtp.Edit
	// Remove from the last occurrence back, so earlier indexes stay valid.
	for i := len(s.strip) - 1; i >= 0; i-- {
		h := s.strip[i]
		out = append(out, smtp.Edit{Kind: smtp.Remove, Name: h.name, Index: h.index})
	}
	e := s.e
	if e.auth != nil {
		// Authentication-Results and Received-SPF are trace fields: RFC
		// 8601 §5 and RFC 7208 §9.1 want them prepended, above the
		// Received: of the MTA that took the message. Found with Postfix
		// 3.7 and Sendmail 8.17 (test/e2e/auth_*_test.go): an added field
		// goes below the message's own fields; one inserted at 1 lands
		// just below the MTA's Received:; at 0 it is the top of the
		// header, above it, in both. Each next field goes below the last,
		// so auth's order stays. X-Sluice-Check stays with the other
		// X-Sluice-* fields at the end.
		top := 0
		for _, h := range e.auth.Headers(&s.msg, e.pol.Effective) {
			if h.Name == auth.CheckHeader {
				out = append(out, smtp.Edit{Kind: smtp.Add, Name: h.Name, Value: h.Value})
				continue
			}
			out = append(out, smtp.Edit{Kind: smtp.Insert, Name: h.Name, Value: h.Value, Index: top})
			top++
		}
	}
	for _, tags := range [][]policy.Verdict{s.connTags, s.tags} {
		for i := range tags {
			out = append(out, smtp.Edit{Kind: smtp.Add, Name: e.cfg.TagHeader, Value: tagValue(&tags[i], false)})
		}
	}
	hold := s.hold
	if hold == nil {
		hold = s.connHold
	}
	if hold != nil {
		// Sendmail keeps the reason with the quarantined message (mailq
		// -qQ); Postfix only logs "milter triggers HOLD action". The
		// header says why in both, for the admin who looks at the held
		// message (postcat -hq ID) and for its recipients once released.
		out = append(out,
			smtp.Edit{Kind: smtp.Add, Name: e.cfg.TagHeader, Value: tagValue(hold, true)},
			smtp.Edit{Kind: smtp.Quarantine, Value: holdReason(hold)})
		e.log.Info("held", s.fields(hold, "hold", smtp.ModeEnforce, smtp.Data)...)
	}
	return out
}

// tagValue is the header value for one crossed limit:
//
//	msgs-per-sender; key=sender:alice@example.org; count=11; limit=10/1h; retry_after=6m; would=tempfail
//
// "would=" says what enforce mode would do; a held message says
// "action=hold" instead.
//
// It is one line of printable ASCII whatever the client sent: control and
// non-ASCII bytes become \xNN, and a value that holds anything but token
// characters is written as an RFC 5322 quoted-string, so a ';', '"' or
// space in an address cannot forge a field of its own.
func tagValue(v *policy.Verdict, held bool) string {
	var b strings.Builder
	b.Grow(128)
	writeParam(&b, v.Source)
	b.WriteString("; key=")
	writeParam(&b, smtp.ASCII(v.Key, 300))
	if v.Detail != "" {
		b.WriteString("; ")
		b.WriteString(smtp.ASCII(v.Detail, 100))
	}
	b.WriteString("; limit=")
	writeParam(&b, smtp.ASCII(v.Limit, 100))
	if v.RetryAfter > 0 {
		b.WriteString("; retry_after=")
		b.WriteString(policy.FormatRetry(v.RetryAfter))
	}
	switch {
	case held:
		b.WriteString("; action=hold")
	case v.Action.Refuses() || v.Action == smtp.ActionHold || v.Action == smtp.ActionDelay:
		b.WriteString("; would=")
		b.WriteString(v.Action.String())
	}
	return b.String()
}

// writeParam writes s as it is when it is a token, else quoted.
func writeParam(b *strings.Builder, s string) {
	if s != "" && !strings.ContainsFunc(s, notToken) {
		b.WriteString(s)
		return
	}
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
}

// notToken reports the characters a tag value must quote: blanks, what
// separates fields (';'), what starts a quoted-string or a comment, and
// anything outside printable ASCII.
func notToken(r rune) bool {
	return r <= ' ' || r >= 0x7f || strings.ContainsRune(`";\\()`, r)
}
