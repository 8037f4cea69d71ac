package milter

import (
	"net"

	"go.uber.org/zap"

	"sluice/conf"
	"sluice/policy"
)

// Bounds are the keys that bound what MTA connections may cost sluice:
// what one may make the milter library hold.
type Bounds struct {
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
)

func (b *Bounds) defaults() {
	if b.MaxHeaderBytes == 0 {
		b.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if b.MaxMacroBytes == 0 {
		b.MaxMacroBytes = DefaultMaxMacroBytes
	}
}

func (b *Bounds) validate() error {
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
	log *zap.Logger
	obs ConnObserver // nil: none
}

func (b *bounds) init(cfg *Config, log *zap.Logger) {
	b.Bounds = cfg.Bounds
	b.defaults()
	b.log = log
}

// watch puts c under the caps.
func (b *bounds) watch(c *conn) {
	c.caps = caps{header: b.MaxHeaderBytes, macro: b.MaxMacroBytes}
	c.onCut = b.cut
}

// cut is told when c crossed a cap: one log line and a count.
func (b *bounds) cut(c *conn, reason string, n, limit int64) {
	b.log.Warn("MTA connection closed: over a cap", zap.String("cap", reason), zap.Int64("bytes", n),
		zap.Int64("limit", limit), zap.String("client_ip", policy.Printable(c.client, 64)),
		zap.String("mta", addrString(c.RemoteAddr())))
	if b.obs != nil {
		b.obs.ConnCut(reason)
	}
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
