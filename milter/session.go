package milter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-milter"
	"go.uber.org/zap"

	"sluice/guard"
	"sluice/smtp"
)

var errTooManyFiles = syscall.EMFILE

// session is one MTA connection: it turns go-milter's callbacks into facts
// and stages of the engine's session, and the engine's decisions into
// milter responses. go-milter calls its methods from one goroutine, one at
// a time; close runs on that goroutine too.
type session struct {
	srv *Server
	eng smtp.Engine  // the engine in force when the connection came
	es  smtp.Session // opened at CONNECT
	log *zap.Logger
}

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

// Connect starts the session: who is the client, and may it connect.
func (s *session) Connect(host, family string, port uint16, addr net.IP, m *milter.Modifier) (resp milter.Response, err error) {
	defer s.tempfailOnPanic(&resp, &err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	if s.es != nil {
		// A second CONNECT on one connection: a new client, a new session.
		s.close()
	}
	s.es = s.eng.Open(smtp.Client{
		IP:       clientIP(addr, m.Macros["{client_addr}"]),
		Name:     host,
		Listener: m.Macros["{daemon_name}"],
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
	defer s.tempfailOnPanic(&resp, &err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	es := s.open()
	es.Helo(name)
	es.SetMacros(macros(m))
	return s.answer(es.Stage(s.srv.ctx, smtp.Helo)), nil
}

func (s *session) MailFrom(from string, m *milter.Modifier) (resp milter.Response, err error) {
	defer s.tempfailOnPanic(&resp, &err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	es := s.open()
	es.Mail(from, m.Macros["{auth_authen}"])
	es.SetMacros(macros(m))
	return s.answer(es.Stage(s.srv.ctx, smtp.Mail)), nil
}

func (s *session) RcptTo(rcpt string, m *milter.Modifier) (resp milter.Response, err error) {
	defer s.tempfailOnPanic(&resp, &err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	es := s.open()
	es.Rcpt(rcpt)
	es.SetMacros(macros(m))
	return s.answer(es.Stage(s.srv.ctx, smtp.Rcpt)), nil
}

func (s *session) Header(name, value string, m *milter.Modifier) (resp milter.Response, err error) {
	defer s.tempfailOnPanic(&resp, &err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	s.open().Header(name, value)
	return milter.RespContinue, nil
}

func (s *session) Headers(h textproto.MIMEHeader, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}

func (s *session) BodyChunk(chunk []byte, m *milter.Modifier) (resp milter.Response, err error) {
	defer s.tempfailOnPanic(&resp, &err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	s.open().Body(chunk)
	return milter.RespContinue, nil
}

// Body is the end of the message: the engine decides, then the message
// is edited as it says — forged fields out, check results and tags in,
// hold.
func (s *session) Body(m *milter.Modifier) (resp milter.Response, err error) {
	defer s.tempfailOnPanic(&resp, &err)
	defer guard.RecoverErr(s.log, "milter session", &err)
	es := s.open()
	es.SetMacros(macros(m))
	d := es.Stage(s.srv.ctx, smtp.Data)
	if d.Refused() {
		es.EndMessage(s.srv.ctx, false)
		return s.answer(d), nil
	}
	if err := edit(m, es.Edits()); err != nil {
		return nil, err
	}
	resp = s.answer(d)
	es.EndMessage(s.srv.ctx, true)
	// Continue, not Accept: go-milter replaces the backend after Accept.
	return resp, nil
}

// Abort ends the transaction without a message; the connection goes on.
func (s *session) Abort(m *milter.Modifier) (err error) {
	defer func() {
		// A panic here ends no more than the transaction: swallowed
		// once guard has logged and counted it.
		var pe *guard.PanicError
		if errors.As(err, &pe) {
			err = nil
		}
	}()
	defer guard.RecoverErr(s.log, "milter session", &err)
	if s.es != nil {
		s.es.EndMessage(s.srv.ctx, false)
	}
	return nil
}

// close runs when the MTA connection ends, on the session's goroutine.
func (s *session) close() {
	if s.es == nil {
		return
	}
	es := s.es
	s.es = nil
	// Not the server's context: the slots must be freed even at shutdown.
	es.Close(context.Background())
}

// macros copies what the engine reads of a stage's macros: go-milter
// keeps only the latest stage's.
func macros(m *milter.Modifier) smtp.Macros {
	return smtp.Macros{QueueID: m.Macros["i"], SASLUser: m.Macros["{auth_authen}"], Listener: m.Macros["{daemon_name}"]}
}

// edit sends the end-of-message changes, in the engine's order.
func edit(m *milter.Modifier, edits []smtp.Edit) error {
	for _, e := range edits {
		var err error
		switch e.Kind {
		case smtp.Remove:
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

// answer turns a decision into the milter response, after any pause.
func (s *session) answer(d smtp.Decision) milter.Response {
	if d.Pause > 0 {
		s.pause(d.Pause)
	}
	switch d.Kind {
	case smtp.Accept:
		// The per-connection go-milter server hands this same session
		// back after Accept.
		return milter.RespAccept
	case smtp.Reply, smtp.Disconnect:
		// An SMTP reply keeps the session: go-milter replaces the backend
		// after its own reject and tempfail responses.
		return milter.NewResponseStr(byte(milter.ActReplyCode), d.Reply)
	}
	return milter.RespContinue
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
var internalError = milter.NewResponseStr(byte(milter.ActReplyCode), "451 4.3.0 Internal error; try again later")

// tempfailOnPanic keeps a bug in one session from reaching the MTA as a
// dropped connection: once guard has logged and counted the panic, the
// command gets a temporary failure and the session goes on.
func (s *session) tempfailOnPanic(resp *milter.Response, err *error) {
	var pe *guard.PanicError
	if errors.As(*err, &pe) {
		*resp, *err = internalError, nil
	}
}
