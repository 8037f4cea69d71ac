// Package resolver answers the DNS questions of sluice's checks through the
// configured servers, with a TTL-honouring cache and a process-wide rate cap,
// and bounds what any zone's answers can cost in memory.
//
// The bounds, whatever a zone serves: an answer over TCP of more than
// MaxMessage bytes is refused unread (ErrTooLarge; UDP answers are cut at
// the EDNS size, 1232); an answer is kept as the checks read it (an
// address is 4 or 16 bytes, MX answers keep 11 names, PTR answers 10); the
// cache counts what its answers take and holds cache_bytes; and a check
// given a budget (WithBudget) reads at most that many bytes of answers.
package resolver

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"sluice/guard"
)

// resolvConf is where the system's nameservers are read from when the
// config names none.
var resolvConf = "/etc/resolv.conf"

// Resolver asks DNS questions. Its Lookup methods have the signatures of
// *net.Resolver's, so it serves blitiri.com.ar/go/spf directly, and its
// errors are *net.DNSError as that library expects: IsNotFound for
// NXDOMAIN (a permanent answer), IsTimeout or IsTemporary for anything
// that may be different on a retry (timeouts, SERVFAIL, REFUSED, a
// network error, the rate cap). A name that exists without records of the
// asked type (NODATA) is an empty answer and no error.
type Resolver struct {
	servers []string
	timeout time.Duration
	maxTTL  time.Duration
	cache   *cache
	limit   *rate.Limiter
	log     *zap.Logger
	now     func() time.Time

	mu     sync.Mutex
	flight map[key]*call
}

type call struct {
	done chan struct{}
	ans  answer
	err  error
}

// New makes a resolver from a validated config.
func New(cfg *Config, log *zap.Logger) (*Resolver, error) {
	servers := make([]string, 0, len(cfg.Servers))
	for _, s := range cfg.Servers {
		a, err := serverAddr(s)
		if err != nil {
			return nil, err
		}
		servers = append(servers, a)
	}
	if len(servers) == 0 {
		cc, err := dns.ClientConfigFromFile(resolvConf)
		if err != nil {
			return nil, fmt.Errorf("dns: no servers configured, and reading %s: %w", resolvConf, err)
		}
		for _, s := range cc.Servers {
			a, err := serverAddr(net.JoinHostPort(s, cc.Port))
			if err != nil {
				return nil, fmt.Errorf("dns: %s: %w", resolvConf, err)
			}
			servers = append(servers, a)
		}
		if len(servers) == 0 {
			return nil, fmt.Errorf("dns: no servers configured and none in %s", resolvConf)
		}
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &Resolver{
		servers: servers,
		timeout: cfg.Timeout.D(),
		maxTTL:  cfg.MaxTTL.D(),
		cache:   newCache(cfg.CacheSize, cfg.CacheBytes),
		limit:   rate.NewLimiter(rate.Limit(cfg.Rate), cfg.Burst),
		log:     log,
		now:     time.Now,
		flight:  make(map[key]*call),
	}, nil
}

// Servers are the addresses queried, in order.
func (r *Resolver) Servers() []string { return slices.Clone(r.servers) }

// CacheUsage is the number of answers in the cache and the bytes they are
// counted as.
func (r *Resolver) CacheUsage() (answers, bytes int) { return r.cache.usage() }

// LookupTXT returns the TXT records of name, each record's strings joined.
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	a, err := r.query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	return slices.Clone(a.strs), nil
}

// LookupMX returns the MX records of name, lowest preference first; of a
// longer answer, the first 11 in the server's order (see maxMX). A null MX
// (RFC 7505) comes back as one record with host ".".
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	a, err := r.query(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	out := make([]*net.MX, 0, len(a.strs))
	for i, host := range a.strs {
		out = append(out, &net.MX{Host: host, Pref: a.prefs[i]})
	}
	slices.SortStableFunc(out, func(a, b *net.MX) int { return cmp.Compare(a.Pref, b.Pref) })
	return out, nil
}

// LookupAddr returns the PTR names of an address, fully qualified; of a
// longer answer, the first 10 (see maxPTR).
func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	rev, err := dns.ReverseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: "unrecognized address", Name: addr}
	}
	a, err := r.query(ctx, rev, dns.TypePTR)
	if err != nil {
		return nil, err
	}
	return slices.Clone(a.strs), nil
}

// LookupIPAddr returns the IPv4 and IPv6 addresses of host.
func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	ips, err := r.LookupNetIP(ctx, "ip", host)
	out := make([]net.IPAddr, 0, len(ips))
	for _, ip := range ips {
		out = append(out, net.IPAddr{IP: ip.AsSlice()})
	}
	return out, err
}

// LookupNetIP returns the addresses of host: network "ip4" asks for A
// records, "ip6" for AAAA, "ip" for both at once. With both, an answer
// from either family is an answer; an error is returned only when neither
// gave an address.
func (r *Resolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	switch network {
	case "ip4":
		return r.lookupFamily(ctx, host, dns.TypeA)
	case "ip6":
		return r.lookupFamily(ctx, host, dns.TypeAAAA)
	case "ip":
	default:
		return nil, &net.DNSError{Err: "unknown network " + network, Name: host}
	}
	var (
		v6    []netip.Addr
		err6  error
		done6 = make(chan struct{})
	)
	go func() {
		defer close(done6)
		defer guard.RecoverErr(r.log, "dns lookup", &err6)
		v6, err6 = r.lookupFamily(ctx, host, dns.TypeAAAA)
	}()
	v4, err4 := r.lookupFamily(ctx, host, dns.TypeA)
	<-done6
	err6 = dnsError(err6, host)
	if all := append(v4, v6...); len(all) > 0 {
		return all, nil
	}
	switch {
	case err4 == nil && err6 == nil:
		return nil, nil
	case isNotFound(err4) && isNotFound(err6):
		return nil, err4
	case err4 != nil && !isNotFound(err4):
		return nil, err4
	case err6 != nil && !isNotFound(err6):
		return nil, err6
	}
	// One family is NXDOMAIN and the other NODATA: the name exists after
	// all (a server disagreeing with itself); report no addresses.
	return nil, nil
}

func (r *Resolver) lookupFamily(ctx context.Context, host string, qtype uint16) ([]netip.Addr, error) {
	a, err := r.query(ctx, host, qtype)
	if err != nil {
		return nil, err
	}
	return a.netIPs(qtype), nil
}

// dnsError gives err the form every error of the resolver has (the SPF
// library type-asserts *net.DNSError), named for name. An error of
// another kind — a panic recovered in one of the resolver's goroutines —
// is temporary: the next try may go well.
func dnsError(err error, name string) error {
	if err == nil {
		return nil
	}
	var de *net.DNSError
	if !errors.As(err, &de) {
		return &net.DNSError{Err: err.Error(), Name: name, IsTemporary: true, UnwrapErr: err}
	}
	e := *de
	e.Name = name
	return &e
}

func isNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// query answers one question from the cache, or by joining a query
// already under way for it, or by asking the servers.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) (answer, error) {
	fqdn, ok := wireName(name)
	if !ok {
		// As the Go resolver does: a name that cannot exist does not.
		return answer{}, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	k := key{strings.ToLower(fqdn), qtype}
	b := budgetOf(ctx)
	if b.spent() {
		return answer{}, b.error(name)
	}
	if a, ok := r.cache.get(k, r.now()); ok {
		return r.result(a, k, b, name)
	}
	r.mu.Lock()
	c, ok := r.flight[k]
	if !ok {
		c = &call{done: make(chan struct{})}
		r.flight[k] = c
		// The query runs for every caller waiting on it, so it must not
		// stop when the first one gives up; the timeout bounds it.
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.timeout)
		go func() {
			defer func() {
				cancel()
				r.mu.Lock()
				delete(r.flight, k)
				r.mu.Unlock()
				close(c.done)
			}()
			defer guard.RecoverErr(r.log, "dns lookup", &c.err)
			c.ans, c.err = r.resolve(qctx, fqdn, qtype, 0)
		}()
	}
	r.mu.Unlock()
	select {
	case <-c.done:
	case <-ctx.Done():
		return answer{}, ctxError(ctx.Err(), name)
	}
	if c.err != nil {
		return answer{}, dnsError(c.err, name)
	}
	return r.result(c.ans, k, b, name)
}

// result charges the answer to the caller's budget and hands it over.
func (r *Resolver) result(a answer, k key, b *budget, name string) (answer, error) {
	if !b.take(a.cost(k.name)) {
		return answer{}, b.error(name)
	}
	if a.nxdomain {
		return answer{}, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	return a, nil
}

func ctxError(err error, name string) *net.DNSError {
	if errors.Is(err, context.DeadlineExceeded) {
		return &net.DNSError{Err: "i/o timeout", Name: name, IsTimeout: true}
	}
	return &net.DNSError{Err: "operation was canceled", Name: name, IsTemporary: true}
}

// maxChain bounds CNAME chains, followed across queries when a server
// hands back a CNAME without chasing it.
const maxChain = 8

// resolve asks the servers and caches the outcome.
func (r *Resolver) resolve(ctx context.Context, fqdn string, qtype uint16, depth int) (answer, error) {
	msg, server, err := r.exchange(ctx, fqdn, qtype)
	if err != nil {
		return answer{}, err
	}
	a, ttl, next, err := interpret(msg, fqdn, qtype, r.maxTTL)
	if err != nil {
		err.(*net.DNSError).Server = server
		return answer{}, err
	}
	if next != "" {
		if depth+1 >= maxChain {
			return answer{}, &net.DNSError{Err: "CNAME chain too long", Name: fqdn, Server: server}
		}
		// Not cached under this name: the target's own answer is.
		return r.resolve(ctx, next, qtype, depth+1)
	}
	r.cache.put(key{strings.ToLower(fqdn), qtype}, a, ttl, r.now())
	return a, nil
}

// interpret reads a response: the records of qtype at the end of the CNAME
// chain that starts at fqdn, how long the answer may be cached, and, when
// the server stopped at a CNAME without saying anything of its target,
// the target to ask about next.
func interpret(m *dns.Msg, fqdn string, qtype uint16, maxTTL time.Duration) (answer, time.Duration, string, error) {
	ttl := uint32(maxTTL / time.Second)
	cur := fqdn
	seen := map[string]bool{strings.ToLower(cur): true}
	var a answer
	found := false
	cnamed := false
	for {
		var target string
		for _, rr := range m.Answer {
			h := rr.Header()
			if !sameName(h.Name, cur) {
				continue
			}
			if h.Rrtype == qtype {
				a.add(rr)
				found = true
				ttl = min(ttl, h.Ttl)
			} else if c, ok := rr.(*dns.CNAME); ok && target == "" {
				target = c.Target
				ttl = min(ttl, h.Ttl)
			}
		}
		if found || target == "" {
			break
		}
		if seen[strings.ToLower(target)] {
			return answer{}, 0, "", &net.DNSError{Err: "CNAME loop", Name: fqdn}
		}
		if len(seen) >= maxChain {
			return answer{}, 0, "", &net.DNSError{Err: "CNAME chain too long", Name: fqdn}
		}
		seen[strings.ToLower(target)] = true
		cur, cnamed = target, true
	}
	if found {
		a.trim()
		return a, time.Duration(ttl) * time.Second, "", nil
	}
	soa := soaTTL(m)
	if m.Rcode == dns.RcodeNameError {
		return answer{nxdomain: true}, min(soa, maxTTL), "", nil
	}
	if cnamed && soa < 0 {
		// A CNAME and nothing of its target, not even a negative
		// answer: a server that does not chase aliases.
		return answer{}, 0, cur, nil
	}
	return answer{}, min(soa, maxTTL), "", nil
}

// soaTTL is how long a negative answer may be cached (RFC 2308 §5): the
// smaller of the SOA's TTL and its minimum; -1 without an SOA, which must
// not be cached.
func soaTTL(m *dns.Msg) time.Duration {
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
		}
	}
	return -1
}

// exchange sends the question to the servers in turn until one gives an
// answer (NOERROR or NXDOMAIN). Each attempt gets an equal share of the
// time left; with one server it is asked twice, since UDP may lose a
// packet.
func (r *Resolver) exchange(ctx context.Context, fqdn string, qtype uint16) (*dns.Msg, string, error) {
	if err := r.limit.Wait(ctx); err != nil {
		return nil, "", &net.DNSError{Err: "query rate limit reached", Name: fqdn, IsTemporary: true}
	}
	q := new(dns.Msg)
	q.SetQuestion(fqdn, qtype)
	q.SetEdns0(ednsSize, false)
	attempts := max(2, len(r.servers))
	var lastErr *net.DNSError
	for i := range attempts {
		server := r.servers[i%len(r.servers)]
		deadline, ok := ctx.Deadline()
		if !ok {
			deadline = time.Now().Add(r.timeout)
		}
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		actx, cancel := context.WithTimeout(ctx, left/time.Duration(attempts-i))
		m, err := r.ask(actx, ctx, server, q)
		cancel()
		if errors.Is(err, ErrTooLarge) {
			// The zone's answer, not a fault of the path to it: another
			// try or server would get the same.
			r.log.Debug("dns answer too large", zap.String("name", fqdn), zap.String("type", dns.TypeToString[qtype]),
				zap.String("server", server), zap.Error(err))
			return nil, server, &net.DNSError{Err: err.Error(), Name: fqdn, Server: server, UnwrapErr: ErrTooLarge}
		}
		if err == nil {
			switch m.Rcode {
			case dns.RcodeSuccess, dns.RcodeNameError:
				return m, server, nil
			}
			lastErr = &net.DNSError{Err: "server misbehaving: " + dns.RcodeToString[m.Rcode], Name: fqdn, Server: server, IsTemporary: true}
		} else {
			lastErr = netError(err, fqdn, server)
		}
		r.log.Debug("dns attempt failed", zap.String("name", fqdn), zap.String("type", dns.TypeToString[qtype]),
			zap.String("server", server), zap.Error(lastErr))
		if ctx.Err() != nil {
			break
		}
	}
	if ctx.Err() != nil || lastErr == nil {
		e := ctxError(context.DeadlineExceeded, fqdn)
		if lastErr != nil {
			e.Server = lastErr.Server
		}
		return nil, "", e
	}
	return nil, "", lastErr
}

// ask sends q to one server over UDP, and again over TCP when the answer
// was truncated; the TCP retry may use the time left of the whole lookup.
func (r *Resolver) ask(actx, ctx context.Context, server string, q *dns.Msg) (*dns.Msg, error) {
	m, err := exchangeOn(actx, "udp", server, q)
	if err != nil || !m.Truncated {
		return m, err
	}
	return exchangeOn(ctx, "tcp", server, q)
}

// ednsSize is the UDP answer size sluice asks for (the DNS flag day 2020
// value): larger answers come truncated, and are asked again over TCP.
const ednsSize = 1232

// MaxMessage bounds the DNS answers sluice reads over TCP. DNS allows 64
// KiB; answers the checks need (an SPF record set, a few addresses, MX
// and PTR names) run to a few KB, and 32 KiB is still 2,000 addresses of
// one family. A longer answer is refused before it is read or parsed.
const MaxMessage = 32 << 10

// ErrTooLarge is the error (through errors.Is) of a lookup whose answer was
// over MaxMessage. It is permanent: the zone serves it so.
var ErrTooLarge = errors.New("DNS answer too large")

func exchangeOn(ctx context.Context, network, server string, q *dns.Msg) (*dns.Msg, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// A closed connection ends a read at once; a deadline alone would not
	// see the caller give up.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	q = q.Copy()
	q.Id = dns.Id()
	m, err := roundTrip(conn, network == "tcp", q)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if len(m.Question) != 1 || !sameName(m.Question[0].Name, q.Question[0].Name) || m.Question[0].Qtype != q.Question[0].Qtype {
		return nil, errors.New("answer for another question")
	}
	return m, nil
}

// roundTrip sends q on conn and reads its answer. Over TCP the answer's
// length comes first, and one over MaxMessage is refused there: miekg/dns
// would allocate and parse whatever the length says, up to 64 KiB.
func roundTrip(conn net.Conn, stream bool, q *dns.Msg) (*dns.Msg, error) {
	co := &dns.Conn{Conn: conn, UDPSize: ednsSize}
	if err := co.WriteMsg(q); err != nil {
		return nil, err
	}
	if !stream {
		for {
			m, err := co.ReadMsg()
			// Answers with another id may be late ones to an earlier query.
			if err != nil || m.Id == q.Id {
				return m, err
			}
		}
	}
	var prefix [2]byte
	if _, err := io.ReadFull(conn, prefix[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(prefix[:]))
	if n > MaxMessage {
		return nil, fmt.Errorf("%w: %d bytes, over sluice's bound of %d", ErrTooLarge, n, MaxMessage)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(conn, buf); err != nil {
		return nil, err
	}
	m := new(dns.Msg)
	if err := m.Unpack(buf); err != nil {
		return nil, err
	}
	if m.Id != q.Id {
		return nil, dns.ErrId
	}
	return m, nil
}

func netError(err error, name, server string) *net.DNSError {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		return &net.DNSError{Err: "i/o timeout", Name: name, Server: server, IsTimeout: true}
	}
	return &net.DNSError{Err: err.Error(), Name: name, Server: server, IsTemporary: true}
}

// wireName returns name fully qualified and in miekg/dns's presentation
// form (so that it compares equal to the names in answers) if it can be a
// DNS name: labels of 1 to 63 bytes, 255 bytes in all on the wire. name is
// raw: a backslash in it is a backslash.
func wireName(name string) (string, bool) {
	if name == "" || name == "." {
		return "", false
	}
	fqdn := name
	if !strings.HasSuffix(fqdn, ".") {
		fqdn += "."
	}
	if len(fqdn) > 254 { // one length byte per label plus the root: len+1
		return "", false
	}
	for l := range strings.SplitSeq(fqdn[:len(fqdn)-1], ".") {
		if len(l) == 0 || len(l) > 63 {
			return "", false
		}
	}
	buf := make([]byte, 256)
	n, err := dns.PackDomainName(strings.ReplaceAll(fqdn, `\`, `\\`), buf, 0, nil, false)
	if err != nil {
		return "", false
	}
	s, _, err := dns.UnpackDomainName(buf[:n], 0)
	return s, err == nil
}

// sameName compares two names in presentation form as DNS does: on the
// wire, ignoring ASCII case.
func sameName(a, b string) bool {
	if strings.EqualFold(a, b) {
		return true
	}
	wa, wb := make([]byte, 256), make([]byte, 256)
	na, err := dns.PackDomainName(a, wa, 0, nil, false)
	if err != nil {
		return false
	}
	nb, err := dns.PackDomainName(b, wb, 0, nil, false)
	return err == nil && bytes.EqualFold(wa[:na], wb[:nb])
}

// unescape turns a character-string from miekg/dns's presentation form
// (\" \\ \DDD) back into raw bytes.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b = append(b, s[i])
			continue
		}
		if i+3 < len(s) && isDDD(s[i+1:i+4]) {
			b = append(b, (s[i+1]-'0')*100+(s[i+2]-'0')*10+(s[i+3]-'0'))
			i += 3
			continue
		}
		i++
		b = append(b, s[i])
	}
	return string(b)
}

func isDDD(s string) bool {
	return len(s) == 3 && s[0] >= '0' && s[0] <= '9' && s[1] >= '0' && s[1] <= '9' && s[2] >= '0' && s[2] <= '9'
}
