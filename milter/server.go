// Package milter is the MTA side of sluice: it speaks the milter protocol
// through go-milter, keeps one Session per MTA connection, and turns
// verdicts into SMTP replies, headers and quarantine.
package milter

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-milter"
	"go.uber.org/zap"

	"sluice/auth"
	"sluice/conf"
	"sluice/limits"
	"sluice/policy"
)

// Config is the milter part of the file: top-level keys.
type Config struct {
	Listen      string        `toml:"listen"`       // unix:/path or inet:host:port
	IdleTimeout conf.Duration `toml:"idle_timeout"` // drop an MTA connection silent this long
	TagHeader   string        `toml:"tag_header"`   // header for crossed limits in tag mode
	Bounds
}

// DefaultListen is where sluice listens when the file does not say.
const DefaultListen = "inet:127.0.0.1:8890"

// Defaults fills what the file left out. The idle timeout is above
// Postfix's smtpd_timeout (300s): the milter connection is quiet while the
// SMTP client is slow, and that must not look like a dead MTA.
func (c *Config) Defaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = conf.Duration(10 * time.Minute)
	}
	if c.TagHeader == "" {
		c.TagHeader = "X-Sluice-Limit"
	}
	c.Bounds.defaults()
}

// Validate checks the milter keys.
func (c *Config) Validate() error {
	if _, _, err := ParseSpec(c.Listen); err != nil {
		return conf.Errorf("listen", "%v", err)
	}
	if !validHeaderName(c.TagHeader) {
		return conf.Errorf("tag_header", "%q is not a header field name", c.TagHeader)
	}
	if !hasPrefixFold(c.TagHeader, "X-Sluice-") {
		return conf.Errorf("tag_header", "%q must start with X-Sluice- so that sluice can remove forged copies", c.TagHeader)
	}
	return c.Bounds.validate()
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

// Policy is everything a session consults. A reload builds a new one; each
// session keeps the one it started with.
type Policy struct {
	Limits    *limits.Engine
	Auth      *auth.Checker // nil when no check is configured
	Decide    policy.Config
	TagHeader string
	// AcceptAtMail lets a session answer ACCEPT at MAIL FROM when nothing
	// later can change its answer (see endsAtMail), so that the MTA skips
	// the rest of the message's events. The daemon sets it; without it
	// every message runs to its end of message.
	AcceptAtMail bool
}

// checks reports whether the policy runs sender checks.
func (p *Policy) checks() bool { return p.Auth != nil && p.Auth.Enabled() }

// Server accepts MTA connections and runs a session for each.
type Server struct {
	cfg Config
	log *zap.Logger
	pol atomic.Pointer[Policy]
	obs Observer

	bounds bounds // max_connections and the caps of each connection

	ctx    context.Context // cancelled when sessions must stop waiting
	cancel context.CancelFunc

	mu      sync.Mutex
	lns     []net.Listener
	conns   map[*conn]struct{}
	closing bool
	wg      sync.WaitGroup
}

// NewServer makes a server that will run sessions on p.
func NewServer(cfg Config, p *Policy, log *zap.Logger) *Server {
	s := &Server{cfg: cfg, log: log, obs: nopObserver{}, conns: make(map[*conn]struct{})}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.pol.Store(p)
	s.bounds.init(&cfg, log)
	return s
}

// SetPolicy makes new sessions use p; sessions in flight finish on theirs.
func (s *Server) SetPolicy(p *Policy) { s.pol.Store(p) }

// Policy returns the policy new sessions get.
func (s *Server) Policy() *Policy { return s.pol.Load() }

// Serve accepts connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return errors.New("milter: server is shutting down")
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	var delay time.Duration
	for {
		raw, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTooManyFiles) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("in", delay))
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if s.admit(raw) {
			s.start(raw)
		}
	}
}

func (s *Server) start(raw net.Conn) {
	p := s.pol.Load()
	sess := newSession(s, p)
	c := newConn(raw, s.cfg.IdleTimeout.D(), nil)
	s.bounds.watch(c)
	c.onClose = func() {
		sess.close()
		s.obs.SessionClosed()
		s.mu.Lock()
		delete(s.conns, c)
		s.bounds.closed(c)
		s.mu.Unlock()
		s.wg.Done()
	}
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.obs.SessionOpened()
	actions, protocol, syms := negotiate(p)
	sess.endsAtMail = p.AcceptAtMail && endsAtMail(p, protocol)
	ms := &milter.Server{
		NewMilter: func() milter.Milter { return sess },
		Actions:   actions,
		Protocol:  protocol,
		SymList:   syms,
	}
	// Returns as soon as go-milter has started the session's goroutine.
	_ = ms.Serve(&oneConn{c: c})
}

// Shutdown stops accepting, lets sessions in flight finish until ctx is
// done, then cuts the rest off (the MTA retries what was not answered).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for _, ln := range s.lns {
		ln.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.cancel()
	s.mu.Lock()
	n := len(s.conns)
	for c := range s.conns {
		// Close only the socket: the session's goroutine notices and runs
		// its own close hook, so session state is never touched from here.
		c.Conn.Close()
	}
	s.mu.Unlock()
	<-done
	s.log.Warn("shutdown timeout reached; cut off sessions in flight", zap.Int("sessions", n))
	return ctx.Err()
}

// Sessions is the number of MTA connections open now.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}
