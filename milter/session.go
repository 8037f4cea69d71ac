package milter

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-milter"
	"go.uber.org/zap"

	"sluice/auth"
	"sluice/limits"
	"sluice/policy"
)

var errTooManyFiles = syscall.EMFILE

// stageTimeout bounds the work of one stage (store round trips, DNS), so
// that sluice answers before the MTA's milter_command_timeout (30s) even
// when a backend hangs.
const stageTimeout = 20 * time.Second

// maxLogValue bounds what a client wrote when it reaches a log line.
const maxLogValue = 256

// session is one MTA connection. go-milter calls its methods from one
// goroutine, one at a time; close runs on that goroutine too.
type session struct {
	srv *Server
	pol *Policy
	lim *limits.Session
	log *zap.Logger

	f          policy.Facts
	refusals   int
	endsAtMail bool // see endsAtMail

	// Verdicts at connect and HELO apply to every message of the session.
	connTags []policy.Verdict
	connHold *policy.Verdict

	// The transaction.
	auth  auth.Message // the sender checks' results, for the headers
	tags  []policy.Verdict
	hold  *policy.Verdict
	strip []headerRef // forged headers to delete at end of message
	seen  map[string]int
	size  int64
}

// headerRef names one occurrence of a header: go-milter's ChangeHeader
// index counts per header name, from 1.
type headerRef struct {
	name  string
	index int
}

func newSession(s *Server, p *Policy) *session {
	return &session{srv: s, pol: p, lim: p.Limits.NewSession(), log: s.log}
}

// Connect starts the session: who is the client, and may it connect.
func (s *session) Connect(host, family string, port uint16, addr net.IP, m *milter.Modifier) (resp milter.Response, err error) {
	defer s.recover(&resp, &err)
	s.f.ClientIP = clientIP(addr, m.Macros["{client_addr}"])
	s.f.ClientName = host
	s.f.Listener = m.Macros["{daemon_name}"]
	s.f.Trusted = s.pol.Limits.Trusted(s.f.ClientIP)
	d := s.stage(policy.StageConnect, m)
	s.keepForSession(&d)
	if !d.Refused() && s.pol.checks() {
		// Start the client's DNS lookups now, so they are answered by MAIL FROM.
		s.pol.Auth.Connect(s.srv.ctx, &s.f)
	}
	return s.reply(&d), nil
}

// clientIP takes the address from the connect packet, or from the
// {client_addr} macro when go-milter could not parse it (Sendmail sends
// IPv6 as "IPv6:2001:db8::1").
func clientIP(addr net.IP, macro string) netip.Addr {
	if a, ok := netip.AddrFromSlice(addr); ok {
		return a.Unmap()
	}
	macro = strings.TrimPrefix(strings.Trim(macro, "[]"), "IPv6:")
	if a, err := netip.ParseAddr(macro); err == nil {
		return a.Unmap()
	}
	return netip.Addr{}
}

func (s *session) Helo(name string, m *milter.Modifier) (resp milter.Response, err error) {
	defer s.recover(&resp, &err)
	s.f.Helo = name
	s.macros(m)
	d := s.stage(policy.StageHelo, m)
	s.keepForSession(&d)
	return s.reply(&d), nil
}

func (s *session) MailFrom(from string, m *milter.Modifier) (resp milter.Response, err error) {
	defer s.recover(&resp, &err)
	s.endMessage(false) // a new MAIL without an Abort between: the old transaction is over
	s.f.Sender = from
	s.f.SASLUser = m.Macros["{auth_authen}"]
	// A new transaction gets a new queue id; Postfix sends it only from
	// RCPT or end of message on, so the last message's must not linger.
	s.f.RcptCount, s.f.Size, s.f.Rcpt, s.f.QueueID = 0, 0, "", ""
	s.macros(m)
	d := s.stage(policy.StageMail, m)
	s.keep(&d)
	resp = s.reply(&d)
	if resp == milter.RespContinue && s.endsAtMail && s.hold == nil && s.connHold == nil && !s.lim.Reserved() {
		// Nothing later can change the answer: accept the message here
		// and spare the MTA the rest of its events. The per-connection
		// go-milter server hands this same session back after Accept.
		s.refusals = 0
		return milter.RespAccept, nil
	}
	return resp, nil
}

func (s *session) RcptTo(rcpt string, m *milter.Modifier) (resp milter.Response, err error) {
	defer s.recover(&resp, &err)
	s.f.Rcpt = rcpt
	s.macros(m)
	d := s.stage(policy.StageRcpt, m)
	if !d.Refused() {
		s.f.RcptCount++
		s.keep(&d)
	}
	return s.reply(&d), nil
}

// Header looks for headers that only sluice may write.
func (s *session) Header(name, value string, m *milter.Modifier) (milter.Response, error) {
	if s.seen == nil {
		s.seen = make(map[string]int)
	}
	s.size += headerSize(name, value)
	// The MTAs match ChangeHeader's name without regard to case, and
	// count its index per name the same way.
	key := strings.ToLower(name)
	s.seen[key]++
	// A trusted client is one of ours (a content filter re-injecting
	// mail, an inner relay behind our MX): what it carries was written by
	// us, and stays.
	if !s.f.Trusted && (hasPrefixFold(name, "X-Sluice-") || s.pol.checks() && s.pol.Auth.Forged(name, value)) {
		s.strip = append(s.strip, headerRef{name: name, index: s.seen[key]})
	}
	return milter.RespContinue, nil
}

func (s *session) Headers(h textproto.MIMEHeader, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}

// headerSize is the bytes a header field took in the message: the MTA
// passes the value without the space after the colon, and a folded value
// with "\n" where the message had CRLF.
func headerSize(name, value string) int64 {
	return int64(len(name) + len(": ") + len(value) + strings.Count(value, "\n") + len("\r\n"))
}

// messageSize is the size of the message as the client sent it: what
// sluice counted of the header and body, plus the empty line between
// them. Sendmail's {msg_size} is not used: it adds the Received header
// Sendmail prepends, which Postfix does not show its milters, and the
// same message must count the same behind either MTA.
func messageSize(counted int64) int64 {
	if counted > 0 {
		counted += int64(len("\r\n"))
	}
	return counted
}

func (s *session) BodyChunk(chunk []byte, m *milter.Modifier) (milter.Response, error) {
	s.size += int64(len(chunk))
	return milter.RespContinue, nil
}

// Body is the end of the message: count its bytes, then write what the
// transaction decided — forged headers out, tags in, hold.
func (s *session) Body(m *milter.Modifier) (resp milter.Response, err error) {
	defer s.recover(&resp, &err)
	s.macros(m)
	s.f.Size = messageSize(s.size)
	d := s.stage(policy.StageData, m)
	if d.Refused() {
		s.endMessage(false)
		return s.reply(&d), nil
	}
	s.keep(&d)
	if err := s.edit(m); err != nil {
		return nil, err
	}
	if d.Delay > 0 {
		s.pause(d.Delay)
	}
	s.endMessage(true)
	// As smtpd's error count: a client that delivers mail starts again.
	s.refusals = 0
	// Continue, not Accept: go-milter replaces the backend after Accept.
	return milter.RespContinue, nil
}

// Abort ends the transaction without a message; the connection goes on.
func (s *session) Abort(m *milter.Modifier) error {
	s.endMessage(false)
	return nil
}

// edit sends the end-of-message modifications.
func (s *session) edit(m *milter.Modifier) error {
	// Delete from the last occurrence back, so earlier indexes stay valid.
	for i := len(s.strip) - 1; i >= 0; i-- {
		h := s.strip[i]
		if err := m.ChangeHeader(h.index, h.name, ""); err != nil {
			return fmt.Errorf("remove forged %s: %w", h.name, err)
		}
	}
	if s.pol.checks() {
		// Authentication-Results and Received-SPF are trace fields: RFC
		// 8601 §5 and RFC 7208 §9.1 want them prepended, above the
		// Received: of the MTA that took the message. Found with Postfix
		// 3.7 and Sendmail 8.17 (test/e2e/auth_*_test.go): AddHeader
		// appends below the message's own fields; InsertHeader at index
		// 1 lands just below the MTA's Received:; index 0 is the top of
		// the header, above it, in both. Each next field goes below the
		// last, so auth's order stays. X-Sluice-Check stays with the
		// other X-Sluice-* fields at the end.
		top := 0
		for _, h := range s.pol.Auth.Headers(&s.auth) {
			var err error
			if h.Name == auth.CheckHeader {
				err = m.AddHeader(h.Name, h.Value)
			} else {
				err = m.InsertHeader(top, h.Name, h.Value)
				top++
			}
			if err != nil {
				return fmt.Errorf("add %s: %w", h.Name, err)
			}
		}
	}
	for _, tags := range [][]policy.Verdict{s.connTags, s.tags} {
		for i := range tags {
			if err := m.AddHeader(s.pol.TagHeader, tagValue(&tags[i], false)); err != nil {
				return fmt.Errorf("add %s: %w", s.pol.TagHeader, err)
			}
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
		if err := m.AddHeader(s.pol.TagHeader, tagValue(hold, true)); err != nil {
			return fmt.Errorf("add %s: %w", s.pol.TagHeader, err)
		}
		reason := policy.ASCII(fmt.Sprintf("sluice: %s crossed by %s", hold.Source, hold.Key), 200)
		if err := m.Quarantine(reason); err != nil {
			return fmt.Errorf("hold: %w", err)
		}
		s.log.Info("held", s.fields(hold, "hold", policy.ModeEnforce, policy.StageData)...)
	}
	return nil
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
	writeParam(&b, policy.ASCII(v.Key, 300))
	if v.Detail != "" {
		b.WriteString("; ")
		b.WriteString(policy.ASCII(v.Detail, 100))
	}
	b.WriteString("; limit=")
	writeParam(&b, policy.ASCII(v.Limit, 100))
	if v.RetryAfter > 0 {
		b.WriteString("; retry_after=")
		b.WriteString(policy.FormatRetry(v.RetryAfter))
	}
	switch {
	case held:
		b.WriteString("; action=hold")
	case v.Action.Refuses() || v.Action == policy.ActionHold || v.Action == policy.ActionDelay:
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

// keep remembers a stage's tags and hold for the end of the message. The
// verdicts live in the limits session's scratch space, so they are copied.
func (s *session) keep(d *policy.Decision) {
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
func (s *session) keepForSession(d *policy.Decision) {
	for _, v := range d.Tags {
		s.connTags = append(s.connTags, *v)
	}
	if d.Hold != nil && s.connHold == nil {
		h := *d.Hold
		s.connHold = &h
	}
}

func (s *session) endMessage(accepted bool) {
	ctx, cancel := context.WithTimeout(s.srv.ctx, stageTimeout)
	s.pol.Limits.EndMessage(ctx, s.lim, accepted)
	cancel()
	s.tags, s.hold, s.strip, s.size = s.tags[:0], nil, s.strip[:0], 0
	clear(s.seen)
}

// close runs when the MTA connection ends, on the session's goroutine.
func (s *session) close() {
	ctx, cancel := context.WithTimeout(context.Background(), stageTimeout)
	defer cancel()
	s.pol.Limits.Close(ctx, s.lim)
}

// stage asks every part for its verdicts, decides, and settles the counts.
func (s *session) stage(st policy.Stage, m *milter.Modifier) (d policy.Decision) {
	start := time.Now()
	defer func() { s.srv.obs.Stage(st, time.Since(start), &d) }() // metrics
	ctx, cancel := context.WithTimeout(s.srv.ctx, stageTimeout)
	defer cancel()
	vs, err := s.pol.Limits.Check(ctx, st, &s.f, s.lim)
	if err != nil {
		s.log.Warn("counter store failed", zap.Stringer("stage", st), zap.Error(err))
	}
	if st == policy.StageMail && s.pol.checks() && !s.pol.Decide.Refuses(vs) {
		// Cheap before expensive: a MAIL FROM that a limit refuses costs
		// no DNS lookup.
		vs = append(vs[:len(vs):len(vs)], s.checkSender(ctx)...)
	}
	if vs != nil {
		env := policy.Env{ClientIP: ipString(s.f.ClientIP), Sender: s.f.Sender, SASLUser: s.f.SASLUser, Rcpt: s.f.Rcpt}
		d = s.pol.Decide.Decide(st, vs, &env)
	}
	// The session's earlier refusals weigh on every reply, not only on
	// the next refusal (Postfix's smtpd_soft_error_limit does the same).
	s.pol.Decide.Escalate(s.refusals, &d)
	if d.Refused() {
		s.refusals++
	}
	s.pol.Limits.Settle(ctx, s.lim, d.Refused())
	for _, o := range d.Outcomes {
		s.logOutcome(st, o)
	}
	if d.Escalation != policy.ActionNone {
		s.log.Info("escalated", zap.String("action", d.Escalation.String()), zap.Int("refusals", s.refusals),
			zap.Stringer("stage", st), zap.String("client_ip", ipString(s.f.ClientIP)), zap.Duration("delay", d.Delay))
	}
	return d
}

// checkSender runs the sender checks of the transaction.
func (s *session) checkSender(ctx context.Context) []policy.Verdict {
	start := time.Now()
	vs := s.pol.Auth.Mail(ctx, &s.f, &s.auth)
	took := time.Since(start)
	// The headers must say what Decide will do with the verdicts.
	s.auth.Soften(s.pol.Decide.Mode)
	for _, r := range s.auth.Results() {
		s.srv.obs.Check(r.Check, r.Value, took)
	}
	return vs
}

// reply turns a decision into the milter response, after any pause.
func (s *session) reply(d *policy.Decision) milter.Response {
	if d.Delay > 0 {
		s.pause(d.Delay)
	}
	if !d.Refused() {
		return milter.RespContinue
	}
	// An SMTP reply keeps the session: go-milter replaces the backend after
	// its own reject and tempfail responses.
	return milter.NewResponseStr(byte(milter.ActReplyCode), d.Reply)
}

func (s *session) pause(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.srv.ctx.Done():
	}
}

// macros copies what later stages need: go-milter keeps only the latest
// stage's macros.
func (s *session) macros(m *milter.Modifier) {
	if q := m.Macros["i"]; q != "" {
		s.f.QueueID = q
	}
	if s.f.Listener == "" {
		s.f.Listener = m.Macros["{daemon_name}"]
	}
	if u := m.Macros["{auth_authen}"]; u != "" {
		s.f.SASLUser = u
	}
}

func (s *session) logOutcome(st policy.Stage, o policy.Outcome) {
	msg := "tagged"
	switch {
	case o.Mode == policy.ModeDryRun:
		msg = "would refuse"
		if !o.Verdict.Action.Refuses() {
			msg = "would " + o.Verdict.Action.String()
		}
	case o.Action.Refuses():
		msg = "refused"
	case o.Action == policy.ActionDelay:
		msg = "delayed"
	case o.Action == policy.ActionHold:
		return // logged when the message is held
	}
	s.log.Info(msg, s.fields(o.Verdict, o.Verdict.Action.String(), o.Mode, st)...)
}

func (s *session) fields(v *policy.Verdict, action string, mode policy.Mode, st policy.Stage) []zap.Field {
	fs := []zap.Field{
		zap.String("rule", v.Source),
		zap.String("key", policy.Printable(v.Key, maxLogValue)),
		zap.String("action", action),
		zap.Stringer("mode", mode),
		zap.Stringer("stage", st),
		zap.String("client_ip", ipString(s.f.ClientIP)),
		zap.String("sender", policy.Printable(s.f.Sender, maxLogValue)),
		zap.String("queue_id", policy.Printable(s.f.QueueID, 32)),
		zap.String("limit", v.Limit),
	}
	if st == policy.StageRcpt {
		fs = append(fs, zap.String("rcpt", policy.Printable(s.f.Rcpt, maxLogValue)))
	}
	if v.Detail != "" {
		fs = append(fs, zap.String("detail", v.Detail))
	}
	if v.RetryAfter > 0 {
		fs = append(fs, zap.Duration("retry_after", v.RetryAfter))
	}
	return fs
}

// recover keeps a bug in one session from reaching the MTA as a dropped
// connection: the command gets a temporary failure, the session goes on.
func (s *session) recover(resp *milter.Response, err *error) {
	if v := recover(); v != nil {
		s.log.Error("internal error in session", zap.Any("panic", v), zap.ByteString("stack", debug.Stack()))
		*resp = milter.NewResponseStr(byte(milter.ActReplyCode), "451 4.3.0 Internal error; try again later")
		*err = nil
	}
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
