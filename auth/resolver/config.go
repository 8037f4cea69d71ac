package resolver

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"sluice/conf"
)

// Config is the [dns] table.
type Config struct {
	// Servers are the recursive resolvers asked, "address" or
	// "address:port", tried in order. Empty: the nameservers of
	// /etc/resolv.conf.
	Servers []string `toml:"servers"`
	// Timeout bounds one lookup, every server and retry included. It
	// must stay well below the MTA's milter timeout.
	Timeout conf.Duration `toml:"timeout"`
	// CacheBytes bounds the memory of the cache: answers are counted at
	// what they take (their data and a fixed cost each), so a zone that
	// serves huge answers gets fewer of them kept, not more memory.
	CacheBytes int `toml:"cache_bytes"`
	// CacheSize is how many answers are kept, whatever their size.
	// Answers are kept for their TTL (negative ones for the SOA minimum,
	// RFC 2308); TTL 0 is never cached.
	CacheSize int `toml:"cache_size"`
	// CheckBytes bounds the DNS answers one check may read for one
	// message, counted as the cache counts them: past it the check's
	// lookups fail (SPF: permerror). SPF's lookup limits bound how many
	// queries a sender's zone can cause; this bounds their size.
	CheckBytes int `toml:"check_bytes"`
	// MaxTTL caps how long any answer is kept.
	MaxTTL conf.Duration `toml:"max_ttl"`
	// Rate caps the queries sent per second by the whole process, so a
	// flood of clients cannot turn sluice into a flood of DNS queries;
	// Burst is how many may go at once above it.
	Rate  float64 `toml:"rate"`
	Burst int     `toml:"burst"`
}

// Defaults fills what the file left out.
func (c *Config) Defaults() {
	if c.Timeout == 0 {
		c.Timeout = conf.Duration(3 * time.Second)
	}
	if c.CacheBytes == 0 {
		c.CacheBytes = 32 << 20
	}
	if c.CacheSize == 0 {
		c.CacheSize = 10000
	}
	if c.CheckBytes == 0 {
		c.CheckBytes = 1 << 20
	}
	if c.MaxTTL == 0 {
		c.MaxTTL = conf.Duration(time.Hour)
	}
	if c.Rate == 0 {
		c.Rate = 500
	}
	if c.Burst == 0 {
		c.Burst = max(1, int(c.Rate/5))
	}
}

// The least cache_bytes and check_bytes may be: less is likely a value
// meant in kilobytes or megabytes. check_bytes must also leave room for
// what a client's own reverse zone can make one SPF evaluation read for a
// ptr term — 10 PTR names, each with a full answer of addresses in each
// family, some 280 KB as answers are counted — and still for the policy's
// own records: RFC 7208 §5.5 ignores that zone's failures, and its size
// must not fail the policy either.
const (
	minCacheBytes = 1 << 20
	minCheckBytes = 512 << 10
)

// maxTimeout keeps a lookup well inside Postfix's default
// milter_command_timeout (30s): one stage may wait for a few in a row.
const maxTimeout = 10 * time.Second

// Validate checks the [dns] keys.
func (c *Config) Validate() error {
	for i, s := range c.Servers {
		if _, err := serverAddr(s); err != nil {
			return conf.In(err, "servers", conf.Index(i))
		}
	}
	if c.Timeout.D() <= 0 {
		return conf.Errorf("timeout", "must be positive")
	}
	if c.Timeout.D() > maxTimeout {
		return conf.Errorf("timeout", "%s is above %s: the MTA would give up on sluice while it waits for DNS", c.Timeout.D(), maxTimeout)
	}
	if c.CacheBytes < minCacheBytes {
		return conf.Errorf("cache_bytes", "%d is below %d: the value is in bytes (32 MiB: cache_bytes = 33_554_432)", c.CacheBytes, minCacheBytes)
	}
	if c.CacheSize < 0 {
		return conf.Errorf("cache_size", "must not be negative")
	}
	if c.CheckBytes < minCheckBytes {
		return conf.Errorf("check_bytes", "%d is below %d: the value is in bytes, and one check may need many answers of up to %d bytes", c.CheckBytes, minCheckBytes, MaxMessage)
	}
	if c.MaxTTL.D() < 0 {
		return conf.Errorf("max_ttl", "must not be negative")
	}
	if c.Rate <= 0 {
		return conf.Errorf("rate", "must be positive (queries per second)")
	}
	if c.Burst < 1 {
		return conf.Errorf("burst", "must be at least 1")
	}
	return nil
}

// serverAddr turns "192.0.2.1", "2001:db8::1", "[2001:db8::1]:5353" or
// "192.0.2.1:5353" into a dialable address.
func serverAddr(s string) (string, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(ip, 53).String(), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		host, port = s, "53"
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return "", fmt.Errorf("%q: a server is an IP address, optionally with :port (sluice cannot look up its resolver by name)", s)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return "", fmt.Errorf("%q: bad port", s)
	}
	return netip.AddrPortFrom(ip, uint16(p)).String(), nil
}
