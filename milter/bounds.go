package milter

import (
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"sluice/conf"
	"sluice/smtp"
)

// Bounds are the keys that bound what MTA connections may cost sluice:
// how many may be open, and what one may make the milter library hold.
type Bounds struct {
	// MaxConnections is how many milter connections may be open at once;
	// past it a new one is closed at once. 0: derived from the file
	// descriptor limit (see ConnectionsFor).
	MaxConnections int `toml:"max_connections"`
	// MaxHeaderBytes caps the headers of one message, and MaxMacroBytes
	// the macros of a connection (the latest packet of each stage), each
	// name and value counted with entryCost more for its bookkeeping. A
	// connection that goes past either is closed.
	MaxHeaderBytes int64 `toml:"max_header_bytes"`
	MaxMacroBytes  int64 `toml:"max_macro_bytes"`
}

// The defaults are far above what the MTAs send: Postfix sends a header
// of at most header_size_limit (100 KB), Sendmail at most
// MaxHeadersLength (32 KB) of headers in all; their macro packets were a
// few hundred bytes each in tests.
const (
	DefaultMaxHeaderBytes = 1 << 20
	DefaultMaxMacroBytes  = 256 << 10
)

// The floors keep a typo from cutting off ordinary mail; the ceilings
// keep the caps meaningful.
const (
	minHeaderBytes = 128 << 10 // one header of Postfix's header_size_limit, with room
	minMacroBytes  = 16 << 10
	maxCapBytes    = 1 << 30
	maxConnections = 1 << 20 // Linux's most descriptors per process
)

// BaseReserve is the file descriptors sluice keeps for itself whatever its
// config: standard streams, the runtime's poller, the listeners, the
// snapshot and its directory, list files at a reload, the systemd socket.
const BaseReserve = 64

// ConnectionsFor is the default max_connections for a process that may
// open nofile descriptors, reserved of which go to everything but the
// milter connections and their DNS lookups: half of what is left, since a
// session with sender checks may hold a DNS socket besides its own.
func ConnectionsFor(nofile, reserved int) int {
	return max(1, (nofile-reserved)/2)
}

// FDLimit is the process's file descriptor limit. Go raises the soft
// limit to the hard one at start; this is what it became.
func FDLimit() (int, error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("file descriptor limit: %w", err)
	}
	return int(min(rl.Cur, maxConnections*4)), nil
}

func (b *Bounds) defaults() {
	if b.MaxHeaderBytes == 0 {
		b.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if b.MaxMacroBytes == 0 {
		b.MaxMacroBytes = DefaultMaxMacroBytes
	}
}

func (b *Bounds) validate() error {
	if b.MaxConnections < 0 || b.MaxConnections > maxConnections {
		return conf.Errorf("max_connections", "%d is out of range (0 derives it from the file descriptor limit; at most %d)", b.MaxConnections, maxConnections)
	}
	if b.MaxHeaderBytes < minHeaderBytes || b.MaxHeaderBytes > maxCapBytes {
		return conf.Errorf("max_header_bytes", "%d is out of range (%d to %d bytes)", b.MaxHeaderBytes, minHeaderBytes, maxCapBytes)
	}
	if b.MaxMacroBytes < minMacroBytes || b.MaxMacroBytes > maxCapBytes {
		return conf.Errorf("max_macro_bytes", "%d is out of range (%d to %d bytes)", b.MaxMacroBytes, minMacroBytes, maxCapBytes)
	}
	return nil
}

// bounds holds a server to its Bounds.
type bounds struct {
	Bounds
	// A connection silent this long gives its place to a new one when
	// max_connections are open: a tenth of idle_timeout.
	reclaimAfter time.Duration
	log          *zap.Logger
	obs          ConnObserver // nil: none

	// Under Server.mu: connections closed to make room whose close hook
	// has not run yet, and the time before which no open connection can
	// have been silent for reclaimAfter (Unix ns).
	reclaiming int
	quietUntil int64

	refused atomic.Int64 // refusals since the last log line
	sample  rate.Sometimes
}

func (b *bounds) init(cfg *Config, log *zap.Logger) {
	b.Bounds = cfg.Bounds
	b.defaults()
	if b.MaxConnections == 0 {
		n, err := FDLimit()
		if err != nil {
			n = 1024
		}
		b.MaxConnections = ConnectionsFor(n, BaseReserve)
	}
	b.reclaimAfter = cfg.IdleTimeout.D() / 10
	if b.reclaimAfter <= 0 {
		b.reclaimAfter = time.Minute
	}
	b.log = log
	b.sample = rate.Sometimes{First: 1, Interval: 10 * time.Second}
}

// watch puts c under the caps.
func (b *bounds) watch(c *conn) {
	c.caps = caps{header: b.MaxHeaderBytes, macro: b.MaxMacroBytes}
	c.onCut = b.cut
}

// cut is told when c crossed a cap, or sent a malformed packet: one log
// line and a count.
func (b *bounds) cut(c *conn, reason string, n, limit int64) {
	who := []zap.Field{zap.String("client_ip", smtp.Printable(c.client, 64)), zap.String("mta", addrString(c.RemoteAddr()))}
	if reason == cutMalformed {
		b.log.Warn("MTA connection closed: malformed packet", append(who, zap.String("command", smtp.Printable(string(rune(n)), 4)))...)
	} else {
		b.log.Warn("MTA connection closed: over a cap", append([]zap.Field{zap.String("cap", reason), zap.Int64("bytes", n),
			zap.Int64("limit", limit)}, who...)...)
	}
	if b.obs != nil {
		b.obs.ConnCut(reason)
	}
}

// admit decides whether a connection just accepted is served. Below
// max_connections it is. At max_connections, the connection silent the
// longest makes room for it if it has been silent for reclaimAfter (a peer
// that opens connections and says nothing cannot keep the MTA out);
// otherwise the new connection is closed at once. Silent means sluice is
// waiting for the MTA to send: a session busy with a stage never is.
func (s *Server) admit(raw net.Conn) bool {
	b := &s.bounds
	s.mu.Lock()
	if len(s.conns)-b.reclaiming < b.MaxConnections {
		s.mu.Unlock()
		return true
	}
	victim, silent := s.longestSilent()
	if victim != nil {
		victim.reclaimed = true
		b.reclaiming++
	}
	s.mu.Unlock()
	if victim != nil {
		// Close only the socket: the session's goroutine notices and runs
		// its own close hook.
		victim.Conn.Close()
		b.log.Info("MTA connection closed to make room: max_connections open",
			zap.Int("max_connections", b.MaxConnections), zap.Duration("silent_for", silent),
			zap.String("client_ip", smtp.Printable(victim.client, 64)))
		if b.obs != nil {
			b.obs.ConnCut("silent")
		}
		return true
	}
	raw.Close()
	b.refused.Add(1)
	if b.obs != nil {
		b.obs.ConnRefused()
	}
	b.sample.Do(func() {
		b.log.Warn("MTA connection refused: max_connections open",
			zap.Int("max_connections", b.MaxConnections), zap.Int64("refused", b.refused.Swap(0)))
	})
	return false
}

// longestSilent returns the open connection silent the longest, if it has
// been silent for reclaimAfter. s.mu is held.
func (s *Server) longestSilent() (*conn, time.Duration) {
	b := &s.bounds
	now := time.Now().UnixNano()
	if now < b.quietUntil {
		return nil, 0
	}
	var victim *conn
	oldest := now
	for c := range s.conns {
		if w := c.waiting.Load(); w != 0 && w < oldest && !c.reclaimed {
			victim, oldest = c, w
		}
	}
	if victim == nil || now-oldest < int64(b.reclaimAfter) {
		// A connection that starts waiting from now on starts at now or
		// later: none can qualify before the one waiting longest does.
		b.quietUntil = oldest + int64(b.reclaimAfter)
		return nil, 0
	}
	return victim, time.Duration(now - oldest)
}

// closed is told, under s.mu, that c's close hook ran.
func (b *bounds) closed(c *conn) {
	if c.reclaimed {
		b.reclaiming--
	}
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
