package engine

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"sluice/auth"
	"sluice/auth/dkim"
	"sluice/limits"
	"sluice/policy"
	"sluice/smtp"
)

// stageTimeout bounds the work of one stage (store round trips, DNS), so
// that sluice answers before the MTA's milter timeout (Postfix's
// milter_command_timeout is 30s) even when a backend hangs.
const stageTimeout = 20 * time.Second

// maxLogValue bounds what a client wrote when it reaches a log line.
const maxLogValue = 256

// Session is one SMTP session: what the client said so far, what it
// holds in the counters, and what its message will be given at its end.
// Its methods are called from one goroutine, one at a time.
type Session struct {
	e   *Engine
	lim *limits.Session
	f   policy.Facts

	refusals int // refusals since the session started or last delivered

	// The last recipient domains of the session, newest last, for alerts.
	rcptDomains []string

	// Verdicts at connect and HELO apply to every message of the session.
	connTags []policy.Verdict
	connHold *policy.Verdict
	client   auth.Client // what the client tables said at connect

	// A local submission (smtp.Client.Local) is refused only at the end
	// of its message: the refusals of earlier stages wait here, the
	// session's (connect, HELO) and the transaction's (MAIL, RCPT).
	local        bool
	connDeferred []policy.Verdict
	deferred     []policy.Verdict

	// The transaction.
	msg   auth.Message // the sender checks' results, for the headers
	ma    messageAuth  // DKIM and DMARC
	tags  []policy.Verdict
	hold  *policy.Verdict
	strip []headerRef // forged header fields to remove at end of message
	seen  map[string]int
	size  int64
	edits []smtp.Edit
}

// headerRef names one occurrence of a header field: the index counts per
// field name, from 1.
type headerRef struct {
	name  string
	index int
}

// Facts are what the session knows now.
func (s *Session) Facts() policy.Facts { return s.f }

// Helo records the HELO or EHLO name.
func (s *Session) Helo(name string) { s.f.Helo = name }

// Mail records the sender of a new transaction ("" for <>) and the SASL
// login, and forgets what the last transaction learnt: a new transaction
// gets a new queue id, and Postfix sends it only from RCPT or end of
// message on, so the last message's must not linger.
func (s *Session) Mail(sender, saslUser string) {
	s.f.Sender = sender
	s.f.SASLUser = saslUser
	s.f.RcptCount, s.f.Size, s.f.Rcpt, s.f.QueueID = 0, 0, "", ""
}

// Rcpt records the recipient the next Rcpt stage asks about.
func (s *Session) Rcpt(rcpt string) {
	s.f.Rcpt = rcpt
	if s.e.alerts != nil {
		s.noteRcptDomain(rcpt)
	}
}

// maxRcptDomains is how many recent recipient domains an alert shows.
const maxRcptDomains = 5

func (s *Session) noteRcptDomain(rcpt string) {
	at := strings.LastIndexByte(rcpt, '@')
	if at < 0 {
		return
	}
	d := strings.ToLower(strings.TrimRight(strings.Trim(rcpt[at+1:], "<>"), "."))
	if d == "" || len(d) > 255 {
		return
	}
	if i := slices.Index(s.rcptDomains, d); i >= 0 {
		s.rcptDomains = slices.Delete(s.rcptDomains, i, i+1)
	}
	if len(s.rcptDomains) >= maxRcptDomains {
		s.rcptDomains = slices.Delete(s.rcptDomains, 0, 1)
	}
	s.rcptDomains = append(s.rcptDomains, d)
}

// SetMacros records what the MTA sent beside an event.
func (s *Session) SetMacros(m smtp.Macros) {
	if m.QueueID != "" {
		s.f.QueueID = m.QueueID
	}
	if m.SASLUser != "" {
		s.f.SASLUser = m.SASLUser
	}
	if s.f.Listener == "" {
		s.f.Listener = m.Listener
	}
}

// Header counts a header field into the message's size and notes the
// fields that only sluice may write, to remove them at end of message.
func (s *Session) Header(name, value string) {
	s.header(name, value, dkim.Field{Name: name, Value: value})
}

// ExactHeader is Header for a value with its leading space, if any:
// DKIM reads it as it is, the rest without the space, as Header has it.
func (s *Session) ExactHeader(name, value string) {
	s.header(name, strings.TrimPrefix(value, " "), dkim.Field{Name: name, Value: value, Exact: true})
}

func (s *Session) header(name, value string, f dkim.Field) {
	if s.seen == nil {
		s.seen = make(map[string]int)
	}
	s.size += headerSize(name, value)
	// The MTAs match a field's name without regard to case, and count
	// its index per name the same way.
	key := strings.ToLower(name)
	s.seen[key]++
	// A trusted client is one of ours (a content filter re-injecting
	// mail, an inner relay behind our MX): what it carries was written by
	// us, and stays.
	if !s.f.Trusted && (hasPrefixFold(name, "X-Sluice-") || s.e.auth != nil && s.e.auth.Forged(name, value)) {
		s.strip = append(s.strip, headerRef{name: name, index: s.seen[key]})
	}
	s.messageHeader(f)
}

// Body counts a chunk of the message body, and streams it into the DKIM
// verifier.
func (s *Session) Body(chunk []byte) {
	s.size += int64(len(chunk))
	s.messageBody(chunk)
}

// BodySize counts n bytes of body whose content the front end never had
// (a replayed log tells only sizes); DKIM, which reads the body, must not
// be on.
func (s *Session) BodySize(n int64) { s.size += n }

// headerSize is the bytes a header field took in the message: the MTA
// passes the value without the space after the colon, and a folded value
// with "\n" where the message had CRLF.
func headerSize(name, value string) int64 {
	return int64(len(name) + len(": ") + len(value) + strings.Count(value, "\n") + len("\r\n"))
}

// messageSize is the size of the message as the client sent it: what was
// counted of the header and body, plus the empty line between them. The
// MTA's own idea of the size is not used: Sendmail's {msg_size} adds the
// Received field it prepends, which Postfix does not show its milters,
// and the same message must count the same behind either MTA.
func messageSize(counted int64) int64 {
	if counted > 0 {
		counted += int64(len("\r\n"))
	}
	return counted
}

// Stage decides stage st: limits count the event, the sender checks run
// at MAIL FROM (unless a limit refuses it already: cheap before
// expensive), policy turns the verdicts into one answer under the global
// mode, the session's earlier refusals escalate it, and the counts are
// settled (a refused event gives back what it took).
func (s *Session) Stage(ctx context.Context, st smtp.Stage) smtp.Decision {
	start := s.e.now()
	ctx, cancel := context.WithTimeout(ctx, stageTimeout)
	defer cancel()
	switch st {
	case smtp.Mail:
		// A new MAIL without an end of the last message: that one is over.
		s.endMessage(ctx, false)
	case smtp.Data:
		s.f.Size = messageSize(s.size)
		// DKIM and DMARC first: rules may count per what they verify.
		s.checkMessage(ctx)
	}
	e := s.e
	if s.local && s.waitsForData(st) {
		// A refusal of an earlier stage ends what this one belongs to; it
		// is answered at the end of the message, and nothing is counted
		// or checked until then, as for a client that was refused.
		out := smtp.Decision{}
		e.obs.Stage(st, e.now().Sub(start), &out)
		return out
	}
	vs, err := e.lim.Check(ctx, st, &s.f, s.lim)
	if err != nil {
		e.log.Warn("counter store failed", zap.Stringer("stage", st), zap.Error(err))
	}
	var checks []auth.Result
	switch {
	case st == smtp.Connect && e.checks:
		// The verdicts live in the limits session's scratch space: append
		// to a copy.
		vs = append(vs[:len(vs):len(vs)], e.auth.Client(&s.f, &s.client)...)
		checks = s.client.Results()
	case st == smtp.Mail && e.checks && !e.pol.Refuses(vs):
		vs = append(vs[:len(vs):len(vs)], s.checkSender(ctx)...)
		checks = s.msg.Results()
	case st == smtp.Data:
		if len(s.connDeferred)+len(s.deferred) > 0 {
			vs = append(append(vs[:len(vs):len(vs)], s.connDeferred...), s.deferred...)
		}
		if len(s.ma.verdicts) > 0 {
			vs = append(vs[:len(vs):len(vs)], s.ma.verdicts...)
		}
		checks = s.ma.results
	}
	deferred := false
	if s.local && st != smtp.Data {
		vs, deferred = s.deferRefusals(st, vs)
	}
	var d policy.Decision
	if vs != nil {
		env := policy.Env{ClientIP: ipString(s.f.ClientIP), Sender: s.f.Sender, SASLUser: s.f.SASLUser, Rcpt: s.f.Rcpt,
			FromDomain: s.f.FromDomain}
		d = e.pol.Decide(st, vs, &env)
	}
	// The session's earlier refusals weigh on every reply, not only on
	// the next refusal (Postfix's smtpd_soft_error_limit does the same).
	e.pol.Escalate(s.refusals, &d)
	refused := d.Refused()
	if refused {
		s.refusals++
	}
	e.lim.Settle(ctx, s.lim, refused || deferred)
	for _, o := range d.Outcomes {
		s.logOutcome(st, o)
	}
	for _, ev := range s.lim.Events() {
		s.logEvent(st, ev)
	}
	if e.alerts != nil {
		s.alert(&d)
	}
	if d.Escalation != smtp.ActionNone {
		e.log.Info("escalated", zap.String("action", d.Escalation.String()), zap.Int("refusals", s.refusals),
			zap.Stringer("stage", st), zap.String("client_ip", ipString(s.f.ClientIP)), zap.Duration("delay", d.Delay))
	}
	out := s.decision(&d, checks)
	switch st {
	case smtp.Connect, smtp.Helo:
		s.keepForSession(&d)
		if st == smtp.Connect && !refused && !deferred && e.checks {
			// Start the client's DNS lookups now, so that they are
			// answered by MAIL FROM.
			e.auth.Connect(ctx, &s.f, &s.client)
		}
	case smtp.Mail:
		s.keep(&d)
		if !refused && !deferred && e.accept && s.hold == nil && s.connHold == nil && !s.lim.Reserved() {
			// Nothing later can change the answer: the front end may
			// skip the rest of the message, which then counts as
			// delivered.
			out.Kind = smtp.Accept
			s.refusals = 0
		}
	case smtp.Rcpt:
		if !refused && !deferred {
			s.f.RcptCount++
			s.keep(&d)
		}
	case smtp.Data:
		if !refused {
			s.keep(&d)
			s.edits = s.makeEdits()
			if s.hold != nil || s.connHold != nil {
				// Releasing the keys restricted meanwhile will say which
				// mail to release from the hold queue.
				e.lim.NoteHeld(ctx, s.lim, s.f.QueueID)
			}
		}
	}
	e.obs.Stage(st, e.now().Sub(start), &out)
	return out
}

// waitsForData reports whether a local submission's stage st belongs to
// what an earlier stage refused: the session (a refusal at connect or
// HELO) or the message (at MAIL or a recipient).
func (s *Session) waitsForData(st smtp.Stage) bool {
	switch st {
	case smtp.Data, smtp.Connect:
		return false
	case smtp.Rcpt:
		return len(s.connDeferred)+len(s.deferred) > 0
	}
	return len(s.connDeferred) > 0
}

// deferRefusals takes the verdicts that would refuse a local
// submission's stage st out of vs, to be answered at the end of the
// message, and reports whether there were any. What only shows or holds
// stays with the stage.
func (s *Session) deferRefusals(st smtp.Stage, vs []policy.Verdict) ([]policy.Verdict, bool) {
	if !s.e.pol.Refuses(vs) {
		return vs, false
	}
	kept := make([]policy.Verdict, 0, len(vs))
	for _, v := range vs {
		if v.Action.Refuses() && s.e.pol.Effective(v.Mode) == smtp.ModeEnforce {
			if st <= smtp.Helo {
				s.connDeferred = append(s.connDeferred, v)
			} else {
				s.deferred = append(s.deferred, v)
			}
			continue
		}
		kept = append(kept, v)
	}
	return kept, true
}

// decision copies what the front end needs of d, with the results of the
// checks that ran at the stage: nothing in it points into the session or
// the limits session's scratch space.
func (s *Session) decision(d *policy.Decision, checks []auth.Result) smtp.Decision {
	out := smtp.Decision{Pause: d.Delay, Escalation: d.Escalation}
	if d.Refused() {
		out.Action, out.Reply, out.Kind = d.Action, d.Reply, smtp.Reply
		if strings.HasPrefix(d.Reply, "421 ") {
			out.Kind = smtp.Disconnect
		}
	}
	if len(d.Outcomes) > 0 {
		out.Outcomes = make([]smtp.Outcome, len(d.Outcomes))
		for i, o := range d.Outcomes {
			out.Outcomes[i] = smtp.Outcome{Source: o.Source, Key: o.Key, Limit: o.Limit, Detail: o.Detail,
				RetryAfter: o.RetryAfter, Asked: o.Verdict.Action, Mode: o.Mode, Action: o.Action}
		}
	}
	if len(checks) > 0 {
		out.Checks = make([]smtp.Check, len(checks))
		for i, r := range checks {
			out.Checks[i] = smtp.Check{Name: r.Check, Result: r.Value, Asked: r.Action, Mode: s.e.pol.Effective(r.Mode), Detail: r.Detail}
		}
	}
	return out
}

// checkSender runs the sender checks of the transaction.
func (s *Session) checkSender(ctx context.Context) []policy.Verdict {
	start := s.e.now()
	vs := s.e.auth.Mail(ctx, &s.f, &s.client, &s.msg)
	took := s.e.now().Sub(start)
	for _, r := range s.msg.Results() {
		s.e.obs.Check(r.Check, r.Value, took)
	}
	return vs
}

// keep remembers a stage's tags and hold for the end of the message. The
// verdicts live in the limits session's scratch space, so they are copied.
func (s *Session) keep(d *policy.Decision) {
	for _, v := range d.Tags {
		if !v.OwnHeader {
			s.tags = append(s.tags, *v)
		}
	}
	if d.Hold != nil && s.hold == nil {
		h := *d.Hold
		s.hold = &h
	}
}

// keepForSession remembers tags and hold from connect and HELO, which
// apply to every message of the session.
func (s *Session) keepForSession(d *policy.Decision) {
	for _, v := range d.Tags {
		if !v.OwnHeader {
			s.connTags = append(s.connTags, *v)
		}
	}
	if d.Hold != nil && s.connHold == nil {
		h := *d.Hold
		s.connHold = &h
	}
}

// Edits are the changes to make to the message, after a Data stage that
// did not refuse it: the caller owns them.
func (s *Session) Edits() []smtp.Edit {
	out := s.edits
	s.edits = nil
	return out
}

// EndMessage closes the transaction. An accepted message keeps what it
// counted, and the client starts again from no refusals, as smtpd's
// error count does for a client that delivers mail; an aborted or
// refused one gives its count_on = "accepted" reservations back.
func (s *Session) EndMessage(ctx context.Context, accepted bool) {
	ctx, cancel := context.WithTimeout(ctx, stageTimeout)
	defer cancel()
	s.endMessage(ctx, accepted)
	if accepted {
		s.refusals = 0
	}
}

func (s *Session) endMessage(ctx context.Context, accepted bool) {
	s.e.lim.EndMessage(ctx, s.lim, accepted)
	s.tags, s.hold, s.strip, s.size, s.edits, s.deferred = s.tags[:0], nil, s.strip[:0], 0, nil, s.deferred[:0]
	s.msg = auth.Message{}
	clear(s.seen)
	s.ma.reset()
	s.f.DKIMDomains, s.f.FromDomain, s.f.DMARC = nil, "", ""
}

// Close ends the session: its concurrency slots are freed and open
// reservations given back.
func (s *Session) Close(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, stageTimeout)
	defer cancel()
	s.ma.reset()
	s.e.lim.Close(ctx, s.lim)
}

func (s *Session) logOutcome(st smtp.Stage, o policy.Outcome) {
	msg := "tagged"
	switch {
	case o.Mode == smtp.ModeDryRun:
		msg = "would refuse"
		if !o.Verdict.Action.Refuses() {
			msg = "would " + o.Verdict.Action.String()
		}
	case o.Action.Refuses():
		msg = "refused"
	case o.Action == smtp.ActionDelay:
		msg = "delayed"
	case o.Action == smtp.ActionHold:
		return // logged when the message is held
	}
	s.e.log.Info(msg, s.fields(o.Verdict, o.Verdict.Action.String(), o.Mode, st)...)
}

func (s *Session) fields(v *policy.Verdict, action string, mode smtp.Mode, st smtp.Stage) []zap.Field {
	fs := []zap.Field{
		zap.String("rule", v.Source),
		zap.String("key", smtp.Printable(v.Key, maxLogValue)),
		zap.String("action", action),
		zap.Stringer("mode", mode),
		zap.Stringer("stage", st),
		zap.String("client_ip", ipString(s.f.ClientIP)),
		zap.String("sender", smtp.Printable(s.f.Sender, maxLogValue)),
		zap.String("queue_id", smtp.Printable(s.f.QueueID, 32)),
		zap.String("limit", v.Limit),
	}
	if st == smtp.Rcpt {
		fs = append(fs, zap.String("rcpt", smtp.Printable(s.f.Rcpt, maxLogValue)))
	}
	if v.Detail != "" {
		fs = append(fs, zap.String("detail", v.Detail))
	}
	if v.RetryAfter > 0 {
		fs = append(fs, zap.Duration("retry_after", v.RetryAfter))
	}
	return fs
}

func ipString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

var _ smtp.Session = (*Session)(nil)

// holdReason is the quarantine reason for a message held by v.
func holdReason(v *policy.Verdict) string {
	return smtp.ASCII(fmt.Sprintf("sluice: %s crossed by %s", v.Source, v.Key), 200)
}
