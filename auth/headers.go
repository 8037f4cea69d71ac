package auth

import (
	"fmt"
	"strings"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-msgauth/authres"

	"sluice/policy"
)

// Header is one header field to add at end of message. Values are one
// line, printable, and bounded.
type Header struct {
	Name, Value string
}

// CheckHeader is the header that shows each check that asked for an action.
const CheckHeader = "X-Sluice-Check"

// Headers returns the headers for a message at its end: Authentication-
// Results (RFC 8601) with our authserv-id, Received-SPF (RFC 7208 §9.1)
// when SPF ran, and one X-Sluice-Check per check that asked for an
// action, so that in tag mode everything that would have been refused
// shows. An SPF result that is only tagged shows in the first two alone;
// a check in dry-run mode changes nothing in the message, so it only
// shows in the verdicts (for logs and metrics). The milter should not
// make tag headers of its own from auth's verdicts: these are they.
//
// mode gives the mode each check is applied in, from its own (the engine
// applies the global mode), so that the headers say what was done: a
// check that asks to reject shows mode=tag in X-Sluice-Check under the
// global tag mode, and nothing under dry-run. A nil mode keeps each
// check's own.
func (c *Checker) Headers(m *Message, mode func(policy.Mode) policy.Mode) []Header {
	var hs []Header
	var ar []authres.Result
	if o := m.spf; o != nil {
		r := &authres.SPFResult{Value: authres.ResultValue(o.result)}
		if o.identity == "helo" {
			r.Helo = arValue(o.helo)
		} else {
			r.From = arValue(o.sender)
		}
		ar = append(ar, r)
	}
	for _, r := range m.results {
		if r.Check == "client_rdns" && c.clientRDNS != nil && c.clientRDNS.fcrdns {
			// iprev (RFC 8601 §3) is exactly the forward-confirmed check.
			ar = append(ar, &authres.IPRevResult{Value: authres.ResultValue(r.Value), IP: m.ip.String()})
		}
	}
	ar = append(ar, m.more...)
	if len(ar) > 0 {
		hs = append(hs, Header{"Authentication-Results", strings.TrimSpace(authres.Format(c.id, ar))})
	}
	if m.spf != nil {
		hs = append(hs, Header{"Received-SPF", c.receivedSPF(m.spf)})
	}
	for _, r := range m.results {
		if mode != nil {
			r.Mode = mode(r.Mode)
		}
		if r.Action == policy.ActionNone || r.Mode == policy.ModeDryRun ||
			r.Action == policy.ActionTag && inAuthResults(r.Check) {
			continue
		}
		v := r.Check + "=" + r.Value + " action=" + r.Action.String()
		if r.Mode != policy.ModeEnforce {
			v += " mode=" + r.Mode.String()
		}
		if r.Detail != "" {
			v += " " + comment(r.Detail)
		}
		hs = append(hs, Header{CheckHeader, v})
	}
	return hs
}

// receivedSPF formats the Received-SPF value: the result, a comment for
// people, then key=value pairs.
func (c *Checker) receivedSPF(o *spfOutcome) string {
	who := o.checked
	var text string
	switch o.result {
	case spf.Pass:
		text = fmt.Sprintf("domain of %s designates %s as permitted sender", who, o.ip)
	case spf.Fail:
		text = fmt.Sprintf("domain of %s does not designate %s as permitted sender", who, o.ip)
	case spf.SoftFail:
		text = fmt.Sprintf("domain of transitioning %s does not designate %s as permitted sender", who, o.ip)
	case spf.Neutral:
		text = fmt.Sprintf("%s is neither permitted nor denied by domain of %s", o.ip, who)
	case spf.None:
		text = fmt.Sprintf("domain of %s does not designate permitted sender hosts", who)
	default:
		text = fmt.Sprintf("error in processing during lookup of %s", who)
	}
	var b strings.Builder
	b.WriteString(string(o.result))
	b.WriteString(" ")
	b.WriteString(comment(c.id + ": " + text))
	kv := func(k, v string) {
		b.WriteString(" ")
		b.WriteString(k)
		b.WriteString("=")
		b.WriteString(kvValue(v))
		b.WriteString(";")
	}
	kv("client-ip", o.ip.String())
	if o.sender != "" {
		kv("envelope-from", o.sender)
	}
	if o.helo != "" {
		kv("helo", o.helo)
	}
	kv("receiver", c.id)
	kv("identity", o.identity)
	if o.mechanism != "" {
		kv("mechanism", o.mechanism)
	}
	if o.problem != "" {
		kv("problem", o.problem)
	}
	return strings.TrimSuffix(b.String(), ";")
}

// arValue makes a client-sent value safe for Authentication-Results.
// authres.Format quotes a value with specials but does not escape a
// backslash inside the quotes, and many readers (authres.Parse among them)
// split results at every ';' and parameters at every space, quoted or not;
// so those characters are written as \xNN escapes, like Printable's.
func arValue(s string) string {
	return arEscaper.Replace(safe(s))
}

var arEscaper = strings.NewReplacer(`"`, `\x22`, ";", `\x3b`, " ", `\x20`, "(", `\x28`, ")", `\x29`)

// kvValue writes a Received-SPF value as a dot-atom when it is one, else
// as a quoted-string (RFC 5322 §3.2).
func kvValue(s string) string {
	s = safe(s)
	if isDotAtom(s) {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}

func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' ||
			strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0) {
			return false
		}
	}
	return true
}

// comment puts text in parentheses, escaping what would end the comment.
func comment(s string) string {
	s = safe(s)
	var b strings.Builder
	b.WriteByte('(')
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '(' || c == ')' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte(')')
	return b.String()
}

// inAuthResults reports whether a check's result shows in
// Authentication-Results, so that a result only tagged needs no
// X-Sluice-Check of its own.
func inAuthResults(check string) bool { return check == "spf" || check == "dkim" || check == "dmarc" }

// Add records the result of a check made outside auth — DKIM and DMARC
// at end of message: ar go into the same Authentication-Results as SPF's,
// and r joins Results, so that it shows in X-Sluice-Check and the
// metrics as auth's own checks do.
func (m *Message) Add(r Result, ar ...authres.Result) {
	m.results = append(m.results, r)
	m.more = append(m.more, ar...)
}
