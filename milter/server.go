// Package milter is the MTA side of sluice: it speaks the milter protocol
// (version 6, and the older ones an MTA may offer) through go-milter and
// translates, one session per MTA connection, the MTA's events into the
// engine's facts and stages, and the engine's decisions into replies,
// header changes and quarantine.
package milter

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/d--j/go-milter"
	"go.uber.org/zap"

	"sluice/conf"
	"sluice/guard"
	"sluice/smtp"
	"sluice/socket"
)

// Config is the milter part of the file: top-level keys.
type Config struct {
	Listen      string        `toml:"listen"`       // unix:/path or inet:host:port
	IdleTimeout conf.Duration `toml:"idle_timeout"` // drop an MTA connection silent this long
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
	c.Bounds.defaults()
}

// Validate checks the milter keys.
func (c *Config) Validate() error {
	if _, _, err := socket.ParseSpec(c.Listen); err != nil {
		return conf.Errorf("listen", "%v", err)
	}
	return c.Bounds.validate()
}

// negotiated is the engine in force and what it negotiates with the MTA,
// worked out once per engine rather than once per connection, with the
// go-milter server that speaks it. What a milter asks for is fixed per
// go-milter server, so each engine has its own; the accept loop hands
// each connection to the server of the engine in force.
type negotiated struct {
	eng   smtp.Engine
	offer offer
	ms    *milter.Server
	in    *handoff
	start sync.Once
}

func newNegotiated(s *Server, eng smtp.Engine) *negotiated {
	p := &negotiated{eng: eng, offer: negotiate(eng.Needs()), in: newHandoff()}
	opts := []milter.Option{
		milter.WithDynamicMilter(func(uint32, milter.OptAction, milter.OptProtocol, milter.DataSize) milter.Milter {
			return newSession(s, eng)
		}),
		milter.WithActions(p.offer.actions),
		milter.WithProtocols(p.offer.protocol),
		milter.WithNegotiationCallback(p.offer.accept),
		// conn sets the deadlines: the idle timeout on reads and writes.
		milter.WithReadTimeout(0),
		milter.WithWriteTimeout(0),
	}
	for st, names := range p.offer.macros {
		if names != nil {
			opts = append(opts, milter.WithMacroRequest(milter.MacroStage(st), names))
		}
	}
	p.ms = milter.NewServer(opts...)
	return p
}

// serve hands c to the go-milter server, started at the first connection;
// it reports false when the server was retired first.
func (p *negotiated) serve(log *zap.Logger, c net.Conn) bool {
	p.start.Do(func() {
		guard.Go(log, "milter server", func() { _ = p.ms.Serve(p.in) })
	})
	return p.in.give(c)
}

// retire stops the server taking connections; those it has go on.
func (p *negotiated) retire() { p.in.Close() }

// Server accepts MTA connections and runs a session for each.
type Server struct {
	cfg Config
	log *zap.Logger
	pol atomic.Pointer[negotiated]
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

// NewServer makes a server that will run sessions on eng.
func NewServer(cfg Config, eng smtp.Engine, log *zap.Logger) *Server {
	s := &Server{cfg: cfg, log: log, obs: nopObserver{}, conns: make(map[*conn]struct{})}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.pol.Store(newNegotiated(s, eng))
	s.bounds.init(&cfg, log)
	return s
}

// SetEngine makes new sessions use eng; sessions in flight finish on theirs.
func (s *Server) SetEngine(eng smtp.Engine) {
	s.pol.Swap(newNegotiated(s, eng)).retire()
}

// Engine returns the engine new sessions get.
func (s *Server) Engine() smtp.Engine { return s.pol.Load().eng }

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
	c := newConn(raw, s.cfg.IdleTimeout.D(), nil)
	s.bounds.watch(c)
	c.onClose = func() { s.closed(c) }
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.obs.SessionOpened()
	for !s.pol.Load().serve(s.log, c) {
		// A reload retired the engine just loaded: the new one takes the
		// connection. At shutdown none does.
		s.mu.Lock()
		closing := s.closing
		s.mu.Unlock()
		if closing {
			c.Close()
			return
		}
	}
}

// closed forgets a connection that has ended.
func (s *Server) closed(c *conn) {
	s.obs.SessionClosed()
	s.mu.Lock()
	delete(s.conns, c)
	s.bounds.closed(c)
	s.mu.Unlock()
	s.wg.Done()
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
	s.pol.Load().retire()
	done := make(chan struct{})
	guard.Go(s.log, "milter shutdown", func() { defer close(done); s.wg.Wait() })
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.cancel()
	s.mu.Lock()
	n := len(s.conns)
	for c := range s.conns {
		// Close only the socket: the session's goroutine notices, cleans
		// up the session and closes conn, so session state is never
		// touched from here.
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
