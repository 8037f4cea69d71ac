// Package auth checks who a client and its sender claim to be — SPF,
// sender and HELO checks, reverse DNS, blocklists, access tables — and
// answers with policy verdicts and RFC 8601 / RFC 7208 headers.
//
// The engine's session drives it:
//
//	c, err := auth.New(&cfg, log)         // loads access tables
//	vs := c.Client(facts, &client)        // at connect: the client tables
//	c.Connect(ctx, facts, &client)        // starts the client's DNS lookups early
//	vs = c.Mail(ctx, facts, &client, &msg) // every other check; verdicts for policy.Decide
//	hs := c.Headers(&msg, mode)           // at end of message: headers to add
//	c.Forged(name, value)                 // incoming Authentication-Results to remove
//
// The client tables (client_access) answer at connect. Every other check
// answers at MAIL FROM, in this order: helo_access, sender_access,
// client_rdns and dnsbl, require_fqdn_helo, helo_syntax, helo_not_ours,
// require_fqdn_sender, sender_domain_exists, then SPF (whose record is
// first checked against the RFC 7208 grammar, since the library stops at
// the first match and misses later syntax errors). An OK entry in a table
// skips the checks of its own kind and no others, as in Postfix, where a
// sender whitelist never lifts a client restriction: client_access OK
// skips client_rdns and dnsbl; helo_access OK the HELO checks;
// sender_access OK require_fqdn_sender, sender_domain_exists and SPF.
// HELO and client checks wait for MAIL FROM, as Postfix's
// smtpd_delay_reject does. The DNS work of one message runs concurrently
// and is bounded by the context. A refusal does not stop the later checks,
// so that in tag mode the headers show everything that would have been
// refused.
//
// Trusted clients (policy.Facts.Trusted) skip everything; authenticated
// ones skip the MAIL FROM checks and SPF unless skip_authenticated =
// false (the client tables answer before any login).
package auth

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-msgauth/authres"
	"go.uber.org/zap"

	"sluice/auth/resolver"
	"sluice/guard"
	"sluice/policy"
)

// Resolver is what the checks ask DNS through; *resolver.Resolver, built
// from [dns], is the real one. Its errors are *net.DNSError: IsNotFound
// for NXDOMAIN, IsTimeout or IsTemporary for answers that may differ on a
// retry.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Checker answers auth's questions for every session. It is safe for
// concurrent use.
type Checker struct {
	id  string
	res Resolver
	log *zap.Logger

	spf *spfChecker // nil when SPF is off

	checksSkipAuth bool
	heloAccess     *accessCheck
	senderAccess   *accessCheck
	clientRDNS     *rdnsCheck
	dnsbl          []*dnsblCheck
	fqdnHelo       *rule
	heloSyntax     *rule
	heloNotOurs    *notOursCheck
	fqdnSender     *rule
	domainExists   *dnsRules
	clientAccess   []*accessCheck
	maxDelay       time.Duration // the longest DELAY a client table may ask; 0: unbounded

	checkBytes int           // DNS answer bytes one check may read for one message
	prefetch   chan struct{} // bounds lookups started at Connect
}

// maxPrefetch bounds the Connect-time lookups in flight, so a connection
// flood cannot pile up goroutines waiting on DNS.
const maxPrefetch = 256

// Option changes how New builds a Checker.
type Option func(*options)

type options struct {
	res      Resolver
	noDNS    bool
	maxDelay time.Duration
}

// WithResolver makes the checks ask r instead of a resolver built from
// [dns]: a log replayed with the answers it recorded, a test.
func WithResolver(r Resolver) Option { return func(o *options) { o.res = r } }

// WithoutDNS leaves out every check that asks DNS — SPF, client_rdns,
// dnsbl, sender_domain_exists — and keeps the tables and the checks that
// read only what the client said (sluice explain -no-dns).
func WithoutDNS() Option { return func(o *options) { o.noDNS = true } }

// WithMaxDelay bounds the pause a client table's DELAY may ask: a longer
// one is an error naming its file and line (the global max_delay).
func WithMaxDelay(d time.Duration) Option { return func(o *options) { o.maxDelay = d } }

// New builds a Checker from a config that passed Validate. It loads the
// access tables; their errors name the file and line.
func New(cfg *Config, log *zap.Logger, opts ...Option) (*Checker, error) {
	if log == nil {
		log = zap.NewNop()
	}
	var o options
	for _, f := range opts {
		f(&o)
	}
	if o.noDNS {
		cfg = withoutDNS(cfg)
	}
	res := o.res
	if k := &cfg.Checks; res == nil && (cfg.SPF.Enabled || k.SenderDomainExists != nil || k.ClientRDNS != nil || len(k.DNSBL) > 0) {
		r, err := resolver.New(&cfg.DNS, log)
		if err != nil {
			return nil, err
		}
		res = r
	}
	return newChecker(cfg, log, res, o.maxDelay)
}

// withoutDNS is a copy of cfg without the checks that ask DNS.
func withoutDNS(cfg *Config) *Config {
	c := *cfg
	c.SPF.Enabled = false
	c.Checks.SenderDomainExists, c.Checks.ClientRDNS, c.Checks.DNSBL = nil, nil, nil
	return &c
}

func newChecker(cfg *Config, log *zap.Logger, res Resolver, maxDelay time.Duration) (*Checker, error) {
	c := &Checker{id: cfg.AuthservID, res: res, log: log, checkBytes: cfg.DNS.CheckBytes, prefetch: make(chan struct{}, maxPrefetch),
		maxDelay: maxDelay}
	var err error
	if cfg.SPF.Enabled {
		if c.spf, err = newSPFChecker(&cfg.SPF); err != nil {
			return nil, fmt.Errorf("spf: %w", err)
		}
	}
	if err := c.compileChecks(&cfg.Checks); err != nil {
		return nil, fmt.Errorf("checks: %w", err)
	}
	return c, nil
}

// Enabled reports whether anything is configured at all, so the milter can
// skip the work (and the events) when nothing is.
func (c *Checker) Enabled() bool {
	return c.spf != nil || c.heloAccess != nil || c.senderAccess != nil || c.clientRDNS != nil ||
		len(c.dnsbl) > 0 || c.fqdnHelo != nil || c.heloSyntax != nil || c.heloNotOurs != nil ||
		c.fqdnSender != nil || c.domainExists != nil || len(c.clientAccess) > 0
}

// AuthservID is our name in Authentication-Results.
func (c *Checker) AuthservID() string { return c.id }

// Result is one check's outcome for a message, for headers, logs and
// metrics.
type Result struct {
	Check  string        // "spf", "dnsbl:zen.example", "require_fqdn_helo"...
	Value  string        // pass, fail, listed, temperror, ok...
	Action policy.Action // what the configuration asks for; none for a pass
	Mode   policy.Mode
	Detail string // the same text as the verdict's Detail
}

// Message is auth's state for one transaction, kept by the session from
// MAIL FROM to end of message. The zero value is ready; Mail resets it.
type Message struct {
	ip      netip.Addr
	results []Result
	spf     *spfOutcome
	more    []authres.Result // checks made elsewhere (DKIM, DMARC), for the one Authentication-Results
}

// Results are the outcomes of the checks that ran for the message, in
// check order.
func (m *Message) Results() []Result { return m.results }

// SPF is the SPF result ("pass", "fail"...) and whether SPF ran.
func (m *Message) SPF() (string, bool) {
	if m.spf == nil {
		return "", false
	}
	return string(m.spf.result), true
}

// outcome is what a check says: a result, and a verdict when the result
// asks for an action.
type outcome struct {
	res Result
	v   *policy.Verdict
}

// Client is auth's state for one session: what the client tables said at
// connect, which holds for every message of the session. The zero value
// is a client no table was asked about.
type Client struct {
	results []Result
	ok      bool // an OK entry: the client checks are skipped
}

// Results are the client tables' results, for a front end that shows
// them at connect.
func (cl *Client) Results() []Result { return cl.results }

// Client asks the client tables about the client that has just
// connected, in order: the first table with an entry for it decides
// (DUNNO, or no entry, goes on to the next). It returns the verdicts of
// an entry that asks for an action, and keeps what it found in cl for the
// checks at MAIL FROM and the headers of every message.
func (c *Checker) Client(f *policy.Facts, cl *Client) []policy.Verdict {
	*cl = Client{}
	if f.Trusted || len(c.clientAccess) == 0 {
		return nil
	}
	for _, a := range c.clientAccess {
		os := a.checkClient(f.ClientIP, f.ClientName)
		if len(os) == 0 {
			continue
		}
		var vs []policy.Verdict
		for _, o := range os {
			cl.results = append(cl.results, o.res)
			if o.v != nil {
				vs = append(vs, *o.v)
			}
		}
		cl.ok = allowed(os)
		return vs
	}
	return nil
}

// Connect starts the lookups the client checks will need (PTR, forward
// confirmation, blocklists), so that their answers are cached or in
// flight by MAIL FROM. It returns at once; nothing is decided here. A
// client a table allowed needs none.
func (c *Checker) Connect(ctx context.Context, f *policy.Facts, cl *Client) {
	if f.Trusted || cl != nil && cl.ok || !f.ClientIP.IsValid() || c.clientRDNS == nil && len(c.dnsbl) == 0 {
		return
	}
	select {
	case c.prefetch <- struct{}{}:
	default:
		return // busy: MAIL FROM will ask
	}
	ip := f.ClientIP.Unmap()
	// Detached from the callback, which returns now; the resolver's own
	// timeout bounds each lookup.
	pctx := context.WithoutCancel(ctx)
	go func() {
		defer func() { <-c.prefetch }()
		defer guard.Recover(c.log, "auth prefetch")
		c.clientOutcomes(pctx, ip)
	}()
}

// Check order: the index of each check's slot in Mail.
const (
	slotClientAccess = iota
	slotHeloAccess
	slotSenderAccess
	slotClientRDNS
	slotDNSBL
	slotFQDNHelo
	slotHeloSyntax
	slotHeloNotOurs
	slotFQDNSender
	slotDomainExists
	slotSPF
	nSlots
)

// Mail runs every check for the transaction that f.Sender starts and
// returns the verdicts that ask for an action. The results are kept in m
// for Headers, the client tables' (which answered at connect, so give no
// verdict here) first. cl is what Client found; nil for a session whose
// client no table was asked about.
func (c *Checker) Mail(ctx context.Context, f *policy.Facts, cl *Client, m *Message) []policy.Verdict {
	*m = Message{ip: f.ClientIP.Unmap()}
	if f.Trusted {
		return nil
	}
	if cl == nil {
		cl = &Client{}
	}
	var slots [nSlots][]outcome
	for _, r := range cl.results {
		slots[slotClientAccess] = append(slots[slotClientAccess], outcome{res: r})
	}
	runChecks := !(f.Authenticated() && c.checksSkipAuth)
	heloOK, senderOK := false, false
	if runChecks {
		slots[slotHeloAccess] = c.heloAccess.check(f.Helo)
		slots[slotSenderAccess] = c.senderAccess.check(f.Sender)
		heloOK, senderOK = allowed(slots[slotHeloAccess]), allowed(slots[slotSenderAccess])
	}
	var wg sync.WaitGroup
	run := func(slot int, fn func() []outcome) {
		wg.Go(func() {
			// A panic in a check leaves its slot empty: it gives no
			// result, and the others go on.
			defer guard.Recover(c.log, "auth check "+checkNames[slot])
			slots[slot] = fn()
		})
	}
	if runChecks && !cl.ok {
		if ip := f.ClientIP.Unmap(); ip.IsValid() {
			run(slotClientRDNS, func() []outcome { return c.rdnsOutcome(ctx, ip) })
			run(slotDNSBL, func() []outcome { return c.dnsblOutcomes(ctx, ip) })
		}
	}
	if runChecks && !heloOK {
		slots[slotFQDNHelo] = c.checkFQDNHelo(f.Helo)
		slots[slotHeloSyntax] = c.checkHeloSyntax(f.Helo)
		slots[slotHeloNotOurs] = c.checkHeloNotOurs(f.Helo, f.ClientIP)
	}
	if runChecks && !senderOK {
		if c.domainExists != nil {
			run(slotDomainExists, func() []outcome { return c.checkDomainExists(ctx, f.Sender) })
		}
		slots[slotFQDNSender] = c.checkFQDNSender(f.Sender)
	}
	if c.spf != nil && !senderOK && f.ClientIP.IsValid() && !(f.Authenticated() && c.spf.skipAuth) {
		run(slotSPF, func() []outcome {
			o := c.checkSPF(ctx, f)
			m.spf = &o
			return o.outcomes(c.spf)
		})
	}
	wg.Wait()
	vs := m.collect(slots[:])
	if ce := c.log.Check(zap.DebugLevel, "auth checks"); ce != nil {
		ce.Write(zap.Stringer("client_ip", f.ClientIP), zap.String("sender", safe(f.Sender)),
			zap.Any("results", m.results), zap.Int("verdicts", len(vs)))
	}
	return vs
}

var checkNames = [nSlots]string{"client_access", "helo_access", "sender_access", "client_rdns", "dnsbl", "require_fqdn_helo",
	"helo_syntax", "helo_not_ours", "require_fqdn_sender", "sender_domain_exists", "spf"}

func allowed(os []outcome) bool {
	return len(os) == 1 && os[0].res.Value == "ok"
}

func (m *Message) collect(slots [][]outcome) []policy.Verdict {
	var vs []policy.Verdict
	for _, s := range slots {
		for _, o := range s {
			m.results = append(m.results, o.res)
			if o.v != nil {
				vs = append(vs, *o.v)
			}
		}
	}
	return vs
}

// Forged reports whether an incoming header is an Authentication-Results
// that claims to come from us: only we may write those, so the milter
// removes them.
func (c *Checker) Forged(name, value string) bool {
	if !strings.EqualFold(name, "Authentication-Results") {
		return false
	}
	id, ok := authservID(value)
	return ok && strings.EqualFold(id, c.id)
}

// authservID reads the authserv-id at the start of an
// Authentication-Results value: a token or a quoted-string, after any
// whitespace and comments.
func authservID(v string) (string, bool) {
	i := skipCFWS(v, 0)
	if i >= len(v) {
		return "", false
	}
	if v[i] == '"' {
		var b strings.Builder
		for i++; i < len(v); i++ {
			switch v[i] {
			case '\\':
				if i+1 < len(v) {
					i++
					b.WriteByte(v[i])
				}
			case '"':
				return b.String(), true
			default:
				b.WriteByte(v[i])
			}
		}
		return "", false
	}
	j := i
	for j < len(v) && v[j] > ' ' && v[j] != ';' && v[j] != '(' && v[j] != '"' {
		j++
	}
	return v[i:j], j > i
}

// skipCFWS skips folding whitespace and (possibly nested) comments.
func skipCFWS(v string, i int) int {
	depth := 0
	for ; i < len(v); i++ {
		switch c := v[i]; {
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case c == '\\' && depth > 0:
			i++
		case depth > 0, c == ' ', c == '\t', c == '\r', c == '\n':
		default:
			return i
		}
	}
	return i
}
