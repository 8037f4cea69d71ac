package milter

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/d--j/go-milter"
	"go.uber.org/zap"

	"sluice/guard"
	"sluice/smtp"
)

var errTooManyFiles = syscall.EMFILE

// session is one MTA connection: it turns go-milter's callbacks into facts
// and stages of the engine's session, and the engine's decisions into
// milter responses. go-milter makes one per connection, after negotiation,
// and calls its methods from the connection's goroutine, one at a time,
// Cleanup last.
type session struct {
	srv *Server
	eng smtp.Engine  // the engine in force when the connection came
	es  smtp.Session // opened at CONNECT
	log *zap.Logger
	// failed: a header field or body chunk of the message panicked. Their
	// answers are not waited for (SMFIP_NR_HDR, SMFIP_NR_BODY): the
	// message is tempfailed at its end instead.
	failed bool
}

var _ milter.Milter = (*session)(nil)

func newSession(s *Server, eng smtp.Engine) *session {
	return &session{srv: s, eng: eng, log: s.log}
}

// open returns the engine's session, opening one for an unknown client
// when the MTA skipped CONNECT.
func (s *session) open() smtp.Session {
	if s.es == nil {
		s.es = s.eng.Open(smtp.Client{})
	}
	return s.es
}

// NewConnection is called when the session starts, and again when the
// MTA reuses the milter connection for another SMTP client (QUIT_NC):
// what the last client held is freed.
func (s *session) NewConnection(m milter.Modifier) (err error) {
	defer s.swallowPanic(&err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	s.close()
	return nil
}

// Connect starts the session: who is the client, and may it connect.
func (s *session) Connect(host, family string, port uint16, addr string, m milter.Modifier) (resp *milter.Response, err error) {
	defer s.tempfailOnPanic(&resp, &err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	if s.es != nil {
		// A second CONNECT on one connection: a new client, a new session.
		s.close()
	}
	s.es = s.eng.Open(smtp.Client{
		IP:       clientIP(family, addr),
		Name:     host,
		Listener: m.Get(macroListener),
		Local:    localSubmission(family, port),
	})
	return s.answer(s.es.Stage(s.srv.ctx, smtp.Connect)), nil
}

// localSubmission tells a message a program handed the MTA from a
// connection: Postfix's cleanup presents mail from sendmail(1) (through
// non_smtpd_milters) as localhost, 127.0.0.1, port 0 — a port no TCP
// client has — and Sendmail's -bs mode as family unknown (seen with
// Postfix 3.7 and Sendmail 8.17, test/e2e/local_test.go).
func localSubmission(family string, port uint16) bool {
	return family == "unknown" || port == 0 && (family == "tcp4" || family == "tcp6")
}

// clientIP is the client's address: go-milter has checked it for an
// inet family (and taken the "IPv6:" off Sendmail's IPv6 addresses); a
// unix-socket or unknown client has none.
func clientIP(family, addr string) netip.Addr {
	if family != "tcp4" && family != "tcp6" {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

func (s *session) Helo(name string, m milter.Modifier) (resp *milter.Response, err error) {
	defer s.tempfailOnPanic(&resp, &err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	es := s.open()
	es.Helo(name)
	es.SetMacros(macros(m))
	return s.answer(es.Stage(s.srv.ctx, smtp.Helo)), nil
}

func (s *session) MailFrom(from, _ string, m milter.Modifier) (resp *milter.Response, err error) {
	defer s.tempfailOnPanic(&resp, &err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	s.failed = false
	es := s.open()
	es.Mail(from, m.Get(macroSASLUser))
	es.SetMacros(macros(m))
	return s.answer(es.Stage(s.srv.ctx, smtp.Mail)), nil
}

func (s *session) RcptTo(rcpt, _ string, m milter.Modifier) (resp *milter.Response, err error) {
	defer s.tempfailOnPanic(&resp, &err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	es := s.open()
	es.Rcpt(rcpt)
	es.SetMacros(macros(m))
	return s.answer(es.Stage(s.srv.ctx, smtp.Rcpt)), nil
}

// Data is not negotiated; an MTA that sends it anyway is told to go on.
func (s *session) Data(m milter.Modifier) (*milter.Response, error) {
	return milter.RespContinue, nil
}

func (s *session) Header(name, value string, m milter.Modifier) (resp *milter.Response, err error) {
	defer s.failOnPanic(&resp, &err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	es := s.open()
	if x, ok := es.(smtp.ExactHeaderSession); ok && m.Protocol()&milter.OptHeaderLeadingSpace != 0 {
		x.ExactHeader(name, value)
	} else {
		es.Header(name, value)
	}
	return milter.RespContinue, nil
}

// Headers (the end of the header) is not negotiated either.
func (s *session) Headers(m milter.Modifier) (*milter.Response, error) {
	return milter.RespContinue, nil
}

func (s *session) BodyChunk(chunk []byte, m milter.Modifier) (resp *milter.Response, err error) {
	defer s.failOnPanic(&resp, &err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	s.open().Body(chunk)
	return milter.RespContinue, nil
}

// EndOfMessage is where the engine decides on the message, which is then
// edited as it says — forged fields out, check results and tags in,
// hold. go-milter answers accept to a continue here.
func (s *session) EndOfMessage(m milter.Modifier) (resp *milter.Response, err error) {
	defer s.tempfailOnPanic(&resp, &err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	es := s.open()
	if s.failed {
		s.failed = false
		es.EndMessage(s.srv.ctx, false)
		return internalError, nil
	}
	es.SetMacros(macros(m))
	d := es.Stage(s.srv.ctx, smtp.Data)
	if d.Refused() {
		es.EndMessage(s.srv.ctx, false)
		return s.answer(d), nil
	}
	if err := s.edit(m, es.Edits()); err != nil {
		es.EndMessage(s.srv.ctx, false)
		return nil, err
	}
	resp = s.answer(d)
	es.EndMessage(s.srv.ctx, true)
	return resp, nil
}

// Abort ends the transaction without a message; the connection goes on.
func (s *session) Abort(m milter.Modifier) (err error) {
	// A panic here ends no more than the transaction.
	defer s.swallowPanic(&err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	s.failed = false
	if s.es != nil {
		s.es.EndMessage(s.srv.ctx, false)
	}
	return nil
}

// Unknown is not negotiated; an MTA that sends it anyway is told to go on.
func (s *session) Unknown(cmd string, m milter.Modifier) (*milter.Response, error) {
	return milter.RespContinue, nil
}

// Cleanup runs when the MTA connection has ended, on the session's
// goroutine.
func (s *session) Cleanup(m milter.Modifier) {
	defer guard.Recover(s.log, "milter close")
	s.close()
}

// close frees what the engine's session holds.
func (s *session) close() {
	if s.es == nil {
		return
	}
	es := s.es
	s.es = nil
	// Not the server's context: the slots must be freed even at shutdown.
	es.Close(context.Background())
}

// macros copies what the engine reads of the macros the MTA has sent.
func macros(m milter.Modifier) smtp.Macros {
	return smtp.Macros{QueueID: m.Get(macroQueueID), SASLUser: m.Get(macroSASLUser), Listener: m.Get(macroListener)}
}

// edit sends the end-of-message changes, in the engine's order.
func (s *session) edit(m milter.Modifier, edits []smtp.Edit) error {
	for _, e := range edits {
		var err error
		switch e.Kind {
		case smtp.Remove:
			if !writableName(e.Name) {
				// go-milter refuses to name such a field, and an error
				// here would end the session: the field stays.
				s.log.Warn("forged header field not removed: its name cannot be written back to the MTA",
					zap.String("name", smtp.Printable(e.Name, 64)))
				continue
			}
			err = m.ChangeHeader(e.Index, e.Name, "")
		case smtp.Insert:
			err = m.InsertHeader(e.Index, e.Name, e.Value)
		case smtp.Add:
			err = m.AddHeader(e.Name, e.Value)
		case smtp.Quarantine:
			err = m.Quarantine(e.Value)
		}
		if err != nil {
			return fmt.Errorf("%s %s: %w", e.Kind, e.Name, err)
		}
	}
	return nil
}

// writableName reports whether go-milter writes a header field of this
// name: printable ASCII without space or colon. The MTAs send no other,
// but a hostile peer may.
func writableName(name string) bool {
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return name != ""
}

// answer turns a decision into the milter response, after any pause.
func (s *session) answer(d smtp.Decision) *milter.Response {
	if d.Pause > 0 {
		s.pause(d.Pause)
	}
	switch d.Kind {
	case smtp.Accept:
		return milter.RespAccept
	case smtp.Reply, smtp.Disconnect:
		return s.reply(d.Reply)
	}
	return milter.RespContinue
}

// reply is the response that gives the SMTP client the reply r, as the
// policy rendered it ("451 4.7.1 text", every '%' doubled).
func (s *session) reply(r string) *milter.Response {
	resp, err := replyResponse(r)
	if err != nil {
		s.log.Error("reply not sent; tempfailed instead", zap.String("reply", smtp.Printable(r, 256)), zap.Error(err))
		return internalError
	}
	return resp
}

// replyResponse makes the response for the SMTP reply r. go-milter
// formats the text itself and doubles each '%' again: it is given the
// text as the client is to read it.
func replyResponse(r string) (*milter.Response, error) {
	code, text, ok := strings.Cut(r, " ")
	n, err := strconv.ParseUint(code, 10, 16)
	if !ok || err != nil || len(code) != 3 {
		return nil, fmt.Errorf("milter: malformed reply %q", r)
	}
	return milter.RejectWithCodeAndReason(uint16(n), strings.ReplaceAll(text, "%%", "%"))
}

func (s *session) pause(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.srv.ctx.Done():
	}
}

// internalError is the answer to a command whose handling panicked.
var internalError = mustReply("451 4.3.0 Internal error; try again later")

func mustReply(r string) *milter.Response {
	resp, err := replyResponse(r)
	if err != nil {
		panic(err)
	}
	return resp
}

// tempfailOnPanic keeps a bug in one session from reaching the MTA as a
// dropped connection: once guard has logged and counted the panic, the
// command gets a temporary failure and the session goes on.
func (s *session) tempfailOnPanic(resp **milter.Response, err *error) {
	var pe *guard.PanicError
	if errors.As(*err, &pe) {
		*resp, *err = internalError, nil
	}
}

// failOnPanic is tempfailOnPanic for a header field or a body chunk: the
// message is tempfailed at its end, the one answer the MTA waits for.
func (s *session) failOnPanic(resp **milter.Response, err *error) {
	var pe *guard.PanicError
	if errors.As(*err, &pe) {
		s.failed = true
		*resp, *err = milter.RespContinue, nil
	}
}

// swallowPanic drops the error of a panic guard has logged and counted,
// for the callbacks that have no answer to give.
func (s *session) swallowPanic(err *error) {
	var pe *guard.PanicError
	if errors.As(*err, &pe) {
		*err = nil
	}
}
