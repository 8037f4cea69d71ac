package policy

import (
	"fmt"
	"strings"
	"time"

	"sluice/smtp"
)

// Env is what the session knows that a reply may quote.
type Env struct {
	ClientIP string
	Sender   string
	SASLUser string
	Rcpt     string
	// FromDomain is the domain of the message's From field, known at
	// end of message when DMARC runs.
	FromDomain string
}

// Reply is a validated SMTP reply template such as
// "451 4.7.1 Too many messages from {sender}; try again in {retry_after}".
type Reply struct {
	src   string // as written
	code  string // "451"
	enh   string // "4.7.1"
	parts []part
}

type part struct {
	lit string
	v   placeholder // 0: literal
}

type placeholder uint8

const (
	phNone placeholder = iota
	phRule
	phKey
	phClientIP
	phSender
	phSASLUser
	phRcpt
	phLimit
	phRetryAfter
	phFromDomain
)

var placeholders = map[string]placeholder{
	"rule": phRule, "key": phKey, "client_ip": phClientIP, "sender": phSender,
	"sasl_user": phSASLUser, "rcpt": phRcpt, "limit": phLimit, "retry_after": phRetryAfter, "from_domain": phFromDomain,
}

// maxReplyLine keeps a rendered reply inside SMTP's 512-octet line limit
// with room for the MTA's own framing.
const maxReplyLine = 480

// ParseReply validates a reply the way Postfix and Sendmail will judge it
// (Postfix's milter8.c: a 4 or 5, two more digits and a space; an enhanced
// status code, when given, of the same class; a single '%' is eaten, so
// sluice doubles every '%' when it renders), plus what SMTP itself asks
// of a reply line: printable ASCII text (RFC 5321 4.2), within the line
// limit. Placeholders must be known ones. A missing enhanced code gets
// x.7.1. A reply that passes here never turns into Postfix's "451 4.3.5
// Server configuration problem" at run time.
func ParseReply(s string) (*Reply, error) {
	if len(s) < 4 || s[3] != ' ' || (s[0] != '4' && s[0] != '5') || !isDigit(s[1]) || !isDigit(s[2]) {
		return nil, fmt.Errorf("reply %q must start with a 4xx or 5xx code and a space", s)
	}
	r := &Reply{src: s, code: s[:3]}
	rest := s[4:]
	if enh, after, ok := cutEnhanced(rest); ok {
		if enh[0] != s[0] {
			return nil, fmt.Errorf("reply %q: enhanced status %s does not match code %s (4xx needs 4.x.x, 5xx needs 5.x.x)", s, enh, r.code)
		}
		r.enh, rest = enh, after
	} else if len(rest) > 1 && isDigit(rest[0]) && rest[1] == '.' {
		return nil, fmt.Errorf("reply %q: malformed enhanced status code (want class.subject.detail, e.g. %c.7.1)", s, s[0])
	} else {
		r.enh = string(s[0]) + ".7.1"
	}
	if strings.TrimSpace(rest) == "" {
		return nil, fmt.Errorf("reply %q has no text", s)
	}
	for i := 0; i < len(rest); i++ {
		if c := rest[i]; c < 0x20 || c >= 0x7f {
			return nil, fmt.Errorf("reply %q: character %q at offset %d: a reply is printable ASCII on one line", s, c, 4+i)
		}
	}
	parts, err := parseParts(rest)
	if err != nil {
		return nil, fmt.Errorf("reply %q: %w", s, err)
	}
	r.parts = parts
	if n := len(r.code) + len(r.enh) + 2 + literalLen(parts); n > maxReplyLine {
		return nil, fmt.Errorf("reply %q is %d characters without its placeholders; the limit is %d", s, n, maxReplyLine)
	}
	return r, nil
}

// ParseReplyFor is ParseReply for a rule or check whose action is a: the
// reply's class must fit it (see Fits).
func ParseReplyFor(a Action, s string) (*Reply, error) {
	r, err := ParseReply(s)
	if err != nil {
		return nil, err
	}
	if err := r.Fits(a); err != nil {
		return nil, err
	}
	return r, nil
}

// Fits checks that the reply's class fits action a: tempfail takes a 4xx,
// reject a 5xx, and disconnect exactly 421 — the only code that makes the
// MTA hang up. An action that refuses nothing sends no reply.
func (r *Reply) Fits(a Action) error {
	switch {
	case !a.Refuses():
		return fmt.Errorf("action %s sends no reply", a)
	case a == ActionDisconnect && r.code != "421":
		return fmt.Errorf("reply %s: action disconnect needs a 421 reply (4.x.x), not %s", r, r.code)
	case a == ActionReject && r.Temporary():
		return fmt.Errorf("reply %s: action reject needs a 5xx reply, not %s", r, r.code)
	case a == ActionTempfail && !r.Temporary():
		return fmt.Errorf("reply %s: action tempfail needs a 4xx reply, not %s", r, r.code)
	}
	return nil
}

// String is the template as written, quoted.
func (r *Reply) String() string { return fmt.Sprintf("%q", r.src) }

// MustAction is ParseAction for actions written in the code; it returns a
// pointer, as an optional action in a config is, and nil for "" (none
// given).
func MustAction(name string) *Action {
	if name == "" {
		return nil
	}
	a, err := ParseAction(name)
	if err != nil {
		panic(err)
	}
	return &a
}

func literalLen(parts []part) int {
	n := 0
	for _, p := range parts {
		n += len(p.lit) + strings.Count(p.lit, "%")
	}
	return n
}

// MustReply is ParseReply for replies written in the code.
func MustReply(s string) *Reply {
	r, err := ParseReply(s)
	if err != nil {
		panic(err)
	}
	return r
}

// UnmarshalText lets a Reply be a config value.
func (r *Reply) UnmarshalText(b []byte) error {
	p, err := ParseReply(string(b))
	if err != nil {
		return err
	}
	*r = *p
	return nil
}

// Quotes reports whether the template fills in the named placeholder
// ("sasl_user" for {sasl_user}).
func (r *Reply) Quotes(name string) bool {
	ph, ok := placeholders[name]
	if !ok {
		return false
	}
	for _, p := range r.parts {
		if p.v == ph {
			return true
		}
	}
	return false
}

// Code is the three-digit SMTP code.
func (r *Reply) Code() string { return r.code }

// Temporary reports whether the reply is a 4xx.
func (r *Reply) Temporary() bool { return r.code[0] == '4' }

// cutEnhanced splits a leading "d.ddd.ddd" status code off s.
func cutEnhanced(s string) (enh, rest string, ok bool) {
	end := strings.IndexByte(s, ' ')
	if end < 0 {
		end = len(s)
	}
	f := strings.Split(s[:end], ".")
	if len(f) != 3 || len(f[0]) != 1 || (f[0] != "2" && f[0] != "4" && f[0] != "5") {
		return "", s, false
	}
	for _, n := range f[1:] {
		if len(n) == 0 || len(n) > 3 {
			return "", s, false
		}
		for i := 0; i < len(n); i++ {
			if !isDigit(n[i]) {
				return "", s, false
			}
		}
	}
	return s[:end], strings.TrimLeft(s[end:], " "), true
}

func parseParts(s string) ([]part, error) {
	var parts []part
	for len(s) > 0 {
		open := strings.IndexByte(s, '{')
		if open < 0 {
			parts = append(parts, part{lit: s})
			break
		}
		if open > 0 {
			parts = append(parts, part{lit: s[:open]})
		}
		end := strings.IndexByte(s[open:], '}')
		if end < 0 {
			return nil, fmt.Errorf("unclosed placeholder at %q", s[open:])
		}
		name := s[open+1 : open+end]
		ph, ok := placeholders[name]
		if !ok {
			return nil, fmt.Errorf("unknown placeholder {%s} (known: {rule} {key} {client_ip} {sender} {sasl_user} {rcpt} {limit} {retry_after} {from_domain})", name)
		}
		parts = append(parts, part{v: ph})
		s = s[open+end+1:]
	}
	return parts, nil
}

// Render fills the template for one verdict and returns the reply as the
// MTA must receive it: quoted values made printable ASCII and bounded, '%'
// doubled (Postfix and Sendmail treat '%' in milter replies as a format
// character), and the whole line kept under the SMTP limit.
func (r *Reply) Render(v *Verdict, env *Env) string {
	var b strings.Builder
	b.Grow(96)
	b.WriteString(r.code)
	b.WriteByte(' ')
	b.WriteString(r.enh)
	b.WriteByte(' ')
	for _, p := range r.parts {
		if p.v == phNone {
			writePercent(&b, p.lit)
			continue
		}
		writePercent(&b, smtp.ASCII(r.value(p.v, v, env), 200))
	}
	out := b.String()
	if len(out) > maxReplyLine {
		cut := maxReplyLine
		// Every '%' was doubled: an odd run at the cut is half a pair,
		// which the MTA would read as an escape of nothing.
		run := 0
		for run < cut && out[cut-1-run] == '%' {
			run++
		}
		if run%2 == 1 {
			cut--
		}
		out = out[:cut]
	}
	return out
}

func (r *Reply) value(p placeholder, v *Verdict, env *Env) string {
	switch p {
	case phRule:
		return v.Source
	case phKey:
		return v.Key
	case phLimit:
		return v.Limit
	case phRetryAfter:
		return FormatRetry(v.RetryAfter)
	}
	if env == nil {
		return ""
	}
	switch p {
	case phClientIP:
		return env.ClientIP
	case phSender:
		if env.Sender == "" {
			return "<>"
		}
		return env.Sender
	case phSASLUser:
		return env.SASLUser
	case phRcpt:
		return env.Rcpt
	case phFromDomain:
		return env.FromDomain
	}
	return ""
}

func writePercent(b *strings.Builder, s string) {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' {
			b.WriteByte('%')
		}
		b.WriteByte(s[i])
	}
}

// FormatRetry renders a retry-after duration for people: "45s", "6m", "2h5m".
func FormatRetry(d time.Duration) string {
	if d <= 0 {
		return "a moment"
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int((d+time.Second-1)/time.Second))
	case d < time.Hour:
		m := int((d + time.Minute - 1) / time.Minute)
		if m == 60 {
			return "1h"
		}
		return fmt.Sprintf("%dm", m)
	default:
		h := int(d / time.Hour)
		m := int((d%time.Hour + time.Minute - 1) / time.Minute)
		if m == 60 {
			h, m = h+1, 0
		}
		if m == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m)
	}
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// MustMode is ParseMode for modes written in the code; "" is enforce, as
// in a config that does not say.
func MustMode(name string) Mode {
	if name == "" {
		return ModeEnforce
	}
	m, err := ParseMode(name)
	if err != nil {
		panic(err)
	}
	return m
}
