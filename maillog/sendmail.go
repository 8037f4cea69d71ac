package maillog

import (
	"bytes"

	"sluice/smtp"
)

// isSendmail reports whether a program name is Sendmail's MTA. Debian
// runs it as sm-mta; sm-msp-queue, the local submission queue, is not an
// SMTP server.
func isSendmail(prog string) bool { return prog == "sendmail" || prog == "sm-mta" }

// sendmail reads the message of one Sendmail line into e.
func (p *parser) sendmail(msg []byte, e *Event) error {
	e.MTA = Sendmail
	if bytes.HasPrefix(msg, []byte("AUTH=server, ")) {
		return p.auth(msg[len("AUTH=server, "):], e)
	}
	qid, rest, ok := queueID(msg)
	if !ok {
		return nil
	}
	e.QueueID = p.qid(qid)
	switch {
	case bytes.HasPrefix(rest, []byte("from=")):
		return p.smFrom(rest[len("from="):], e)
	case bytes.HasPrefix(rest, []byte("to=")):
		return p.smTo(rest[len("to="):], e)
	case bytes.HasPrefix(rest, []byte("ruleset=")):
		return p.ruleset(rest[len("ruleset="):], e)
	case bytes.HasPrefix(rest, []byte("Milter: ")):
		return p.smMilter(rest[len("Milter: "):], e)
	case bytes.HasPrefix(rest, []byte("<")):
		return p.smAddrError(rest, e)
	case bytes.Contains(rest, []byte(" did not issue MAIL/EXPN/VRFY/ETRN during connection to ")):
		i := bytes.Index(rest, []byte(" did not issue "))
		if !p.relay(rest[:i], e) {
			return errMalformed
		}
		e.Kind = NoMail
		e.Listener = p.name(rest[bytes.LastIndex(rest, []byte(" to "))+len(" to "):])
		return nil
	case bytes.HasPrefix(rest, []byte("lost input channel from ")):
		r := rest[len("lost input channel from "):]
		if i := bytes.Index(r, []byte(" to ")); i >= 0 {
			r = r[:i]
		}
		if !p.relay(r, e) {
			return errMalformed
		}
		e.Kind = Disconnect
		return nil
	case bytes.Contains(rest, []byte("quarantine=")):
		e.Kind, e.Stage, e.By, e.Action = Refused, smtp.Data, ByMilter, smtp.ActionHold
		return nil
	}
	return nil
}

// field returns the value of ", key=" in b, up to the next ", ".
func field(b []byte, key string) ([]byte, bool) {
	i := bytes.Index(b, []byte(", "+key+"="))
	if i < 0 {
		return nil, false
	}
	v := b[i+len(key)+3:]
	if j := bytes.Index(v, []byte(", ")); j >= 0 {
		v = v[:j]
	}
	return v, true
}

// smFrom reads "from=<S>, size=N, class=C, nrcpts=N, msgid=<M>,
// proto=P, daemon=D, relay=R": logged when a transaction ends, with
// nrcpts=0 and size=0 when it ended without a message.
func (p *parser) smFrom(b []byte, e *Event) error {
	end := bytes.Index(b, []byte(", size="))
	if end < 0 {
		return errMalformed
	}
	e.Kind = Queued
	e.Sender, e.HasSender = p.addr(trimAngle(b[:end])), true
	e.Size = int64(number(b[end+len(", size="):]))
	if v, ok := field(b, "nrcpts"); ok {
		e.Nrcpt = number(v)
	}
	if v, ok := field(b, "daemon"); ok {
		e.Listener = p.name(v)
	}
	if i := bytes.Index(b, []byte(", relay=")); i >= 0 {
		p.relay(b[i+len(", relay="):], e)
	}
	return nil
}

// smTo reads "to=<A>,<B>, ctladdr=..., delay=..., mailer=..., stat=...":
// one delivery attempt to several recipients.
func (p *parser) smTo(b []byte, e *Event) error {
	// The list ends at the first ", word=".
	end := len(b)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == ',' && b[i+1] == ' ' {
			j := i + 2
			for j < len(b) && b[j] >= 'a' && b[j] <= 'z' {
				j++
			}
			if j < len(b) && b[j] == '=' && j > i+2 {
				end = i
				break
			}
		}
	}
	list := b[:end]
	if len(list) == 0 {
		return errMalformed
	}
	e.Kind = Delivery
	for len(list) > 0 {
		var a []byte
		if list[0] == '<' {
			j := bytes.IndexByte(list, '>')
			if j < 0 {
				return errMalformed
			}
			a, list = list[1:j], list[j+1:]
		} else {
			j := bytes.IndexByte(list, ',')
			if j < 0 {
				j = len(list)
			}
			a, list = list[:j], list[j:]
		}
		e.Rcpts = append(e.Rcpts, p.addr(a))
		list = bytes.TrimLeft(list, ", ")
	}
	return nil
}

// ruleset reads "check_rcpt, arg1=<A>, relay=R, reject=550 ..." (or
// "discard"): Sendmail's own checks refused a command.
func (p *parser) ruleset(b []byte, e *Event) error {
	comma := bytes.IndexByte(b, ',')
	if comma < 0 {
		return errMalformed
	}
	switch string(b[:comma]) {
	case "check_relay":
		e.Stage = smtp.Connect
	case "check_mail":
		e.Stage = smtp.Mail
	case "check_rcpt":
		e.Stage = smtp.Rcpt
	case "check_data", "check_eom", "check_eoh":
		e.Stage = smtp.Data
	default:
		return nil
	}
	e.Kind, e.By = Refused, ByMTA
	if i := bytes.Index(b, []byte(", relay=")); i >= 0 {
		r := b[i+len(", relay="):]
		if j := bytes.Index(r, []byte(", ")); j >= 0 {
			r = r[:j]
		}
		p.relay(r, e)
	}
	if a, ok := field(b, "arg1"); ok {
		switch e.Stage {
		case smtp.Mail:
			e.Sender, e.HasSender = p.addr(trimAngle(a)), true
		case smtp.Rcpt:
			e.Rcpts = append(e.Rcpts, p.addr(trimAngle(a)))
		}
	}
	if v, ok := field(b, "reject"); ok {
		e.Reply = string(v)
		e.Action = replyAction(v)
	} else if bytes.HasSuffix(b, []byte(", discard")) {
		e.Action = actionDiscard
	} else {
		e.Action = smtp.ActionReject
	}
	return nil
}

// smMilter reads what a milter refused: "from=<S>, reject=...", "to=<R>,
// reject=...", "connect: host=H, addr=IP, reject=...", "helo=H,
// reject=...", "data, reject=...".
func (p *parser) smMilter(b []byte, e *Event) error {
	v, ok := field(b, "reject")
	if !ok {
		if bytes.Contains(b, []byte("quarantine=")) {
			e.Kind, e.Stage, e.By, e.Action = Refused, smtp.Data, ByMilter, smtp.ActionHold
		}
		return nil
	}
	e.Kind, e.By, e.Reply, e.Action = Refused, ByMilter, string(v), replyAction(v)
	switch {
	case bytes.HasPrefix(b, []byte("connect")):
		e.Stage = smtp.Connect
	case bytes.HasPrefix(b, []byte("helo=")):
		e.Stage = smtp.Helo
	case bytes.HasPrefix(b, []byte("from=")):
		e.Stage = smtp.Mail
		a := b[len("from="):]
		a = a[:bytes.Index(a, []byte(", "))]
		e.Sender, e.HasSender = p.addr(trimAngle(a)), true
	case bytes.HasPrefix(b, []byte("to=")):
		e.Stage = smtp.Rcpt
		a := b[len("to="):]
		a = a[:bytes.Index(a, []byte(", "))]
		e.Rcpts = append(e.Rcpts, p.addr(trimAngle(a)))
	default:
		e.Stage = smtp.Data
	}
	return nil
}

// smAddrError reads "<A>... User unknown": Sendmail refused an address.
// The line does not name the command; a sender's errors say so.
func (p *parser) smAddrError(b []byte, e *Event) error {
	end := bytes.Index(b, []byte(">... "))
	if end < 0 {
		return nil
	}
	text := b[end+len(">... "):]
	e.Kind, e.By, e.Action, e.Reply = Refused, ByMTA, smtp.ActionReject, string(text)
	a := p.addr(b[1:end])
	if bytes.Contains(bytes.ToLower(text), []byte("sender")) {
		e.Stage, e.Sender, e.HasSender = smtp.Mail, a, true
	} else {
		e.Stage = smtp.Rcpt
		e.Rcpts = append(e.Rcpts, a)
	}
	return nil
}

// auth reads "relay=R, authid=U, mech=M, bits=N".
func (p *parser) auth(b []byte, e *Event) error {
	if !bytes.HasPrefix(b, []byte("relay=")) {
		return errMalformed
	}
	r := b[len("relay="):]
	if j := bytes.Index(r, []byte(", ")); j >= 0 {
		r = r[:j]
	}
	p.relay(r, e)
	u, ok := field(b, "authid")
	if !ok {
		return errMalformed
	}
	e.Kind, e.SASLUser = Auth, string(u)
	return nil
}

// relay reads Sendmail's client: "name [ip]", "[ip]", "name [ip] (may be
// forged)", "[IPv6:2001:db8::1]", "user@name [ip]".
func (p *parser) relay(b []byte, e *Event) bool {
	name, ip, ok := bracketed(b)
	if !ok || !ip.IsValid() {
		return false
	}
	name = bytes.TrimSpace(name)
	if at := bytes.IndexByte(name, '@'); at >= 0 {
		name = name[at+1:]
	}
	if len(name) == 0 {
		// Sendmail's name for a client without one, as its milters see it.
		e.ClientName = "[" + ip.String() + "]"
	} else {
		e.ClientName = p.name(name)
	}
	e.ClientIP, e.HasClient = ip, true
	return true
}

func trimAngle(b []byte) []byte {
	b = bytes.TrimSpace(b)
	if len(b) >= 2 && b[0] == '<' && b[len(b)-1] == '>' {
		return b[1 : len(b)-1]
	}
	return b
}
