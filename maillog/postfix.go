package maillog

import (
	"bytes"
	"net/netip"
	"strconv"
	"strings"

	"sluice/smtp"
)

// postfixDaemon splits a Postfix program name, "postfix/submission/smtpd",
// into its daemon ("smtpd") and service ("submission"; for
// "postfix/smtpd", the daemon's own name). ok is false for a program that
// is not Postfix's.
func postfixDaemon(prog string) (daemon, service string, ok bool) {
	first := strings.IndexByte(prog, '/')
	if first < 0 || !strings.HasPrefix(prog, "postfix") {
		return "", "", false
	}
	last := strings.LastIndexByte(prog, '/')
	daemon = prog[last+1:]
	if last > first {
		return daemon, prog[first+1 : last], true
	}
	return daemon, daemon, true
}

// postfix reads the message of one Postfix line into e.
func (p *parser) postfix(msg []byte, e *Event) error {
	daemon, service, ok := postfixDaemon(e.Program)
	if !ok {
		return nil
	}
	e.MTA = Postfix
	if daemon == "smtpd" {
		e.Listener = service
		switch {
		case bytes.HasPrefix(msg, []byte("connect from ")):
			if !p.client(msg[len("connect from "):], e) {
				return errMalformed
			}
			e.Kind = Connect
			return nil
		case bytes.HasPrefix(msg, []byte("disconnect from ")):
			return p.disconnect(msg[len("disconnect from "):], e)
		}
	}
	qid, rest, ok := queueID(msg)
	if !ok {
		return nil
	}
	e.QueueID = p.qid(qid)
	switch {
	case daemon == "smtpd" && bytes.HasPrefix(rest, []byte("client=")):
		return p.clientLine(rest[len("client="):], e)
	case bytes.HasPrefix(rest, []byte("to=<")):
		return p.delivery(rest, e)
	case daemon == "qmgr" && bytes.HasPrefix(rest, []byte("from=<")):
		return p.queued(rest, e)
	case daemon == "qmgr" && bytes.Equal(rest, []byte("removed")):
		e.Kind = Removed
		return nil
	case daemon == "cleanup" && bytes.HasPrefix(rest, []byte("message-id=")):
		e.Kind = Data
		return nil
	}
	for _, r := range refusals {
		if bytes.HasPrefix(rest, r.prefix) {
			return p.refusal(rest[len(r.prefix):], r, daemon == "cleanup", e)
		}
	}
	return nil
}

// refusal is one kind of line in which Postfix says it refused, held or
// discarded.
type refusal struct {
	prefix []byte
	by     Refusal
	action smtp.Action // ActionNone: from the reply's code
}

var refusals = []refusal{
	{[]byte("reject: "), ByMTA, smtp.ActionNone},
	{[]byte("milter-reject: "), ByMilter, smtp.ActionNone},
	{[]byte("hold: "), ByMTA, smtp.ActionHold},
	{[]byte("milter-hold: "), ByMilter, smtp.ActionHold},
	{[]byte("discard: "), ByMTA, actionDiscard},
	{[]byte("milter-discard: "), ByMilter, actionDiscard},
}

// actionDiscard marks a discarded message: accepted, then dropped. It is
// no action sluice has.
const actionDiscard = smtp.Action(255)

// stageNames are the SMTP commands Postfix names in its refusals.
var stageNames = []struct {
	name  string
	stage smtp.Stage
}{
	{"RCPT", smtp.Rcpt}, {"MAIL", smtp.Mail}, {"END-OF-MESSAGE", smtp.Data}, {"DATA", smtp.Data},
	{"CONNECT", smtp.Connect}, {"EHLO", smtp.Helo}, {"HELO", smtp.Helo}, {"BDAT", smtp.Data},
	{"header", smtp.Data}, {"body", smtp.Data},
}

// refusal reads "STAGE from NAME[IP]: REPLY; from=<S> to=<R> proto=P
// helo=<H>" from smtpd, or cleanup's "header Subject: ... from
// NAME[IP]; from=<S> to=<R> proto=P helo=<H>: REPLY".
func (p *parser) refusal(b []byte, r refusal, cleanup bool, e *Event) error {
	e.Kind, e.By, e.Action = Refused, r.by, r.action
	found := false
	for _, s := range stageNames {
		if len(b) > len(s.name) && string(b[:len(s.name)]) == s.name && b[len(s.name)] == ' ' {
			e.Stage, found = s.stage, true
			break
		}
	}
	if !found {
		// VRFY, ETRN and what Postfix may add: no command sluice sees.
		e.Kind = Ignored
		return nil
	}
	tail := bytes.LastIndex(b, []byte("; from=<"))
	if tail < 0 {
		return errMalformed
	}
	env := b[tail+2:]
	head := b[:tail]
	var reply []byte
	if cleanup && e.Stage == smtp.Data && !bytes.HasPrefix(b, []byte("END-OF-MESSAGE ")) {
		// cleanup's header and body checks: the reply follows the envelope.
		if i := bytes.LastIndex(env, []byte(": ")); i >= 0 {
			reply, env = env[i+2:], env[:i]
		}
		if i := bytes.LastIndex(head, []byte(" from ")); i >= 0 && p.client(head[i+len(" from "):], e) {
			e.HasClient = true
		}
	} else {
		i := bytes.Index(head, []byte(" from "))
		if i < 0 {
			return errMalformed
		}
		c := head[i+len(" from "):]
		j := bytes.Index(c, []byte(": "))
		if j < 0 {
			return errMalformed
		}
		if !p.client(c[:j], e) {
			return errMalformed
		}
		reply = c[j+2:]
	}
	e.Reply = string(reply)
	if e.Action == smtp.ActionNone {
		e.Action = replyAction(reply)
	}
	return p.envelope(env, e)
}

// replyAction is what an SMTP reply code does to a command.
func replyAction(reply []byte) smtp.Action {
	switch {
	case bytes.HasPrefix(reply, []byte("421")):
		return smtp.ActionDisconnect
	case len(reply) > 0 && reply[0] == '4':
		return smtp.ActionTempfail
	}
	return smtp.ActionReject
}

// envelope reads "from=<S> to=<R> proto=P helo=<H>" (to and helo may be
// missing).
func (p *parser) envelope(b []byte, e *Event) error {
	s, rest, ok := angle(b, "from=<")
	if !ok {
		return errMalformed
	}
	e.Sender, e.HasSender = p.addr(s), true
	rest = bytes.TrimLeft(rest, " ")
	if bytes.HasPrefix(rest, []byte("to=<")) {
		r, more, ok := angle(rest, "to=<")
		if !ok {
			return errMalformed
		}
		e.Rcpts = append(e.Rcpts, p.addr(r))
		rest = more
	}
	if i := bytes.Index(rest, []byte("helo=<")); i >= 0 {
		if h, _, ok := angle(rest[i:], "helo=<"); ok {
			e.Helo = string(h)
		}
	}
	return nil
}

// angle reads key<VALUE> at the start of b: the value ends at the last
// '>' before a space or the end.
func angle(b []byte, key string) (value, rest []byte, ok bool) {
	if !bytes.HasPrefix(b, []byte(key)) {
		return nil, nil, false
	}
	b = b[len(key):]
	end := -1
	for i := 0; i < len(b); i++ {
		if b[i] == '>' && (i+1 == len(b) || b[i+1] == ' ' || b[i+1] == ',') {
			end = i
			break
		}
	}
	if end < 0 {
		return nil, nil, false
	}
	return b[:end], b[end+1:], true
}

// clientLine reads "NAME[IP][, sasl_method=M, sasl_username=U][, ...]".
func (p *parser) clientLine(b []byte, e *Event) error {
	c := b
	if i := bytes.Index(b, []byte(", ")); i >= 0 {
		c = b[:i]
	}
	if !p.client(c, e) {
		return errMalformed
	}
	e.Kind = Client
	if i := bytes.Index(b, []byte(", sasl_username=")); i >= 0 {
		u := b[i+len(", sasl_username="):]
		if j := bytes.Index(u, []byte(", ")); j >= 0 {
			u = u[:j]
		}
		e.SASLUser = string(u)
	}
	return nil
}

// disconnect reads "NAME[IP] ehlo=1 xclient=1 mail=2 rcpt=2/4 ... commands=9/12".
func (p *parser) disconnect(b []byte, e *Event) error {
	c := b
	sp := bytes.IndexByte(b, ' ')
	if sp >= 0 {
		c, b = b[:sp], b[sp+1:]
	} else {
		b = nil
	}
	if !p.client(c, e) {
		return errMalformed
	}
	e.Kind = Disconnect
	for len(b) > 0 {
		f := b
		if sp := bytes.IndexByte(b, ' '); sp >= 0 {
			f, b = b[:sp], b[sp+1:]
		} else {
			b = nil
		}
		eq := bytes.IndexByte(f, '=')
		if eq < 0 {
			continue
		}
		ok := f[eq+1:]
		if sl := bytes.IndexByte(ok, '/'); sl >= 0 {
			ok = ok[:sl]
		}
		n, _ := strconv.Atoi(string(ok))
		switch string(f[:eq]) {
		case "ehlo", "helo":
			e.Helos += n
		case "xclient":
			e.XClients += n
		case "mail":
			e.Mails += n
		case "data", "bdat":
			e.Datas += n
		}
	}
	return nil
}

// queued reads qmgr's "from=<S>, size=N, nrcpt=N (queue active)".
func (p *parser) queued(b []byte, e *Event) error {
	s, rest, ok := angle(b, "from=<")
	if !ok {
		return errMalformed
	}
	if !bytes.HasPrefix(rest, []byte(", size=")) {
		// "from=<S>, status=expired, returned to sender": no news.
		return nil
	}
	e.Kind = Queued
	e.Sender, e.HasSender = p.addr(s), true
	e.Size = int64(number(rest[len(", size="):]))
	if i := bytes.Index(rest, []byte(", nrcpt=")); i >= 0 {
		e.Nrcpt = number(rest[i+len(", nrcpt="):])
	}
	return nil
}

// delivery reads "to=<R>, [orig_to=<O>, ]relay=...": the recipient as
// the client gave it is orig_to when an alias rewrote it.
func (p *parser) delivery(b []byte, e *Event) error {
	r, rest, ok := angle(b, "to=<")
	if !ok {
		return errMalformed
	}
	if o, _, ok := angle(bytes.TrimPrefix(rest, []byte(", ")), "orig_to=<"); ok {
		r = o
	}
	e.Kind = Delivery
	e.Rcpts = append(e.Rcpts, p.addr(r))
	return nil
}

// client reads "NAME[IP]" or "NAME[IP]:PORT". Postfix writes "unknown"
// for a client without a verified name, and IPv6 addresses bare.
func (p *parser) client(b []byte, e *Event) bool {
	name, ip, ok := bracketed(b)
	if !ok {
		return false
	}
	// "unknown[unknown]" is a client without an address: ip is invalid.
	e.ClientName, e.ClientIP, e.HasClient = p.name(name), ip, true
	return true
}

// bracketed splits "NAME[IP]..." at its last bracketed address, an IPv6
// one written bare or as "IPv6:...". ip is invalid when the brackets hold
// no address.
func bracketed(b []byte) (name []byte, ip netip.Addr, ok bool) {
	open := bytes.LastIndexByte(b, '[')
	if open < 0 {
		return nil, netip.Addr{}, false
	}
	end := bytes.IndexByte(b[open:], ']')
	if end < 0 {
		return nil, netip.Addr{}, false
	}
	a, err := netip.ParseAddr(string(bytes.TrimPrefix(b[open+1:open+end], []byte("IPv6:"))))
	if err != nil {
		return b[:open], netip.Addr{}, true
	}
	return b[:open], a.Unmap(), true
}

// queueID splits "QID: rest". Postfix's ids are hex (short) or
// alphanumeric (long, enable_long_queue_ids); NOQUEUE stands for none.
func queueID(msg []byte) (qid, rest []byte, ok bool) {
	i := bytes.Index(msg, []byte(": "))
	if i < 5 || i > 24 {
		return nil, nil, false
	}
	for _, c := range msg[:i] {
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
			return nil, nil, false
		}
	}
	qid = msg[:i]
	if string(qid) == "NOQUEUE" {
		qid = nil
	}
	return qid, msg[i+2:], true
}

// number reads the decimal digits at the start of b.
func number(b []byte) int {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' || n > 1<<50 {
			break
		}
		n = n*10 + int(c-'0')
	}
	return n
}
