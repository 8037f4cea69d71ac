package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"sluice/auth/access"
	"sluice/auth/resolver"
	"sluice/guard"
	"sluice/policy"
	"sluice/smtp"
)

// rule is what one outcome of a check asks for.
type rule struct {
	action policy.Action
	mode   policy.Mode
	reply  *policy.Reply // nil unless the action refuses
	text   string        // default reply text, a template
	delay  time.Duration // for ActionDelay
}

// newRule compiles an action with its reply: the configured one, or ours
// with the enhanced status code enh ("7.1" becomes 5.7.1 or 4.7.1).
func newRule(action *policy.Action, mode policy.Mode, custom *policy.Reply, enh, text string) (rule, error) {
	a, err := checkable(action)
	if err != nil {
		return rule{}, err
	}
	r := rule{action: a, mode: mode, reply: custom, text: text}
	if r.reply == nil && a.Refuses() {
		code := "550 5."
		if a == policy.ActionTempfail {
			code = "451 4."
		}
		if r.reply, err = policy.ParseReply(code + enh + " " + text); err != nil {
			return rule{}, err
		}
	}
	return r, nil
}

// outcome makes a check's outcome: a verdict too when the rule acts.
func (r *rule) outcome(check, value, key, detail string) []outcome {
	o := outcome{res: Result{Check: check, Value: value, Action: r.action, Mode: r.mode, Detail: detail}}
	if r.action != policy.ActionNone {
		o.v = &policy.Verdict{Source: check, Action: r.action, Mode: r.mode, Reply: r.reply, Text: r.text,
			Delay: r.delay, Key: key, Detail: detail, OwnHeader: true}
	}
	return []outcome{o}
}

func pass(check, detail string) []outcome {
	return []outcome{{res: Result{Check: check, Value: "pass", Detail: detail}}}
}

// dnsRules are the rules of a check that asks DNS: one for a failed check,
// one for a lookup that failed temporarily.
type dnsRules struct {
	fail, temp rule
}

func newDNSRules(c *DNSCheck, enh, text, tempText string) (*dnsRules, error) {
	f, err := newRule(c.Action, c.Mode, c.Reply, enh, text)
	if err != nil {
		return nil, err
	}
	t, err := newRule(c.TempError, c.Mode, nil, enh, tempText)
	if err != nil {
		return nil, err
	}
	return &dnsRules{fail: f, temp: t}, nil
}

type accessCheck struct {
	name  string
	table *access.Table
	rules map[*access.Entry]*rule
}

// Access table names, which are also their checks' names.
const (
	senderAccess = "sender_access"
	heloAccess   = "helo_access"
	clientAccess = "client_access"
)

type rdnsCheck struct {
	*dnsRules
	fcrdns bool
}

type dnsblCheck struct {
	*dnsRules
	zone   string
	source string
	codes  []netip.Prefix
}

type notOursCheck struct {
	rule
	names map[string]bool
	addrs map[netip.Addr]bool
}

// safe bounds and escapes what a client sent before it goes into a
// detail, a key or a header.
func safe(s string) string { return smtp.Printable(s, 200) }

func (c *Checker) compileChecks(k *ChecksConfig) error {
	c.checksSkipAuth = k.SkipAuthenticated == nil || *k.SkipAuthenticated
	var err error
	simple := func(ch *Check, name, enh, text string) *rule {
		if ch == nil || err != nil {
			return nil
		}
		var r rule
		if r, err = newRule(ch.Action, ch.Mode, ch.Reply, enh, text); err != nil {
			err = fmt.Errorf("%s: %w", name, err)
			return nil
		}
		return &r
	}
	c.fqdnSender = simple(k.RequireFQDNSender, "require_fqdn_sender", "1.7", "<{sender}>: Sender address rejected: need fully-qualified address")
	c.fqdnHelo = simple(k.RequireFQDNHelo, "require_fqdn_helo", "5.2", "<{key}>: Helo command rejected: need fully-qualified hostname")
	c.heloSyntax = simple(k.HeloSyntax, "helo_syntax", "5.2", "<{key}>: Helo command rejected: Invalid name")
	if err != nil {
		return err
	}
	if h := k.HeloNotOurs; h != nil {
		r, err := newRule(h.Action, h.Mode, h.Reply, "7.1", "<{key}>: Helo command rejected: You are not me")
		if err != nil {
			return fmt.Errorf("helo_not_ours: %w", err)
		}
		n := &notOursCheck{rule: r, names: make(map[string]bool), addrs: make(map[netip.Addr]bool)}
		for _, name := range h.Names {
			if ip, err := netip.ParseAddr(name); err == nil {
				n.addrs[ip.Unmap()] = true
			} else {
				n.names[normName(name)] = true
			}
		}
		c.heloNotOurs = n
	}
	if d := k.SenderDomainExists; d != nil {
		if c.domainExists, err = newDNSRules(d, "1.8", "<{sender}>: Sender address rejected: Domain not found",
			"<{sender}>: Sender address rejected: cannot look up the domain now; try again later"); err != nil {
			return fmt.Errorf("sender_domain_exists: %w", err)
		}
	}
	if r := k.ClientRDNS; r != nil {
		text := "Client host rejected: cannot find your reverse hostname, [{client_ip}]"
		if r.Require == "fcrdns" {
			text = "Client host rejected: cannot find your hostname, [{client_ip}]"
		}
		rules, err := newDNSRules(&r.DNSCheck, "7.25", text, text)
		if err != nil {
			return fmt.Errorf("client_rdns: %w", err)
		}
		c.clientRDNS = &rdnsCheck{dnsRules: rules, fcrdns: r.Require == "fcrdns"}
	}
	for i := range k.DNSBL {
		b := &k.DNSBL[i]
		zone := strings.ToLower(strings.TrimSuffix(b.Zone, "."))
		rules, err := newDNSRules(&b.DNSCheck, "7.1", "Service unavailable; client host [{client_ip}] blocked using "+zone,
			"Client host [{client_ip}] cannot be checked against "+zone+" now; try again later")
		if err != nil {
			return fmt.Errorf("dnsbl %s: %w", zone, err)
		}
		codes, err := parseCodes(b.Codes)
		if err != nil {
			return fmt.Errorf("dnsbl %s: %w", zone, err)
		}
		c.dnsbl = append(c.dnsbl, &dnsblCheck{dnsRules: rules, zone: zone, source: "dnsbl:" + zone, codes: codes})
	}
	if c.senderAccess, err = loadAccess(k.SenderAccess, senderAccess, access.Senders, "<{sender}>: Sender address rejected: ", c.maxDelay); err != nil {
		return err
	}
	if c.heloAccess, err = loadAccess(k.HeloAccess, heloAccess, access.HELONames, "<{key}>: Helo command rejected: ", c.maxDelay); err != nil {
		return err
	}
	for i := range k.ClientAccess {
		a, err := loadAccess(&k.ClientAccess[i], clientAccess, access.Clients, "Client host rejected: ", c.maxDelay)
		if err != nil {
			return err
		}
		c.clientAccess = append(c.clientAccess, a)
	}
	return nil
}

// loadAccess reads an access table and compiles each entry's rule. The
// reply of a refusal is Postfix's: the entry's code (or 550 5.7.1, 451
// 4.7.1), the prefix that says what was rejected, then the entry's text.
// A DELAY longer than maxDelay (when known) is an error.
func loadAccess(l *AccessList, name string, kind access.Kind, prefix string, maxDelay time.Duration) (*accessCheck, error) {
	if l == nil {
		return nil, nil
	}
	t, err := access.Load(l.File, kind)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	a := &accessCheck{name: name, table: t, rules: make(map[*access.Entry]*rule)}
	for _, e := range t.Entries() {
		at := func(err error) error { return fmt.Errorf("%s: %s:%d: %w", name, t.Path(), e.Line, err) }
		var action policy.Action
		switch e.Action {
		case access.Reject:
			action = policy.ActionReject
		case access.Tempfail:
			action = policy.ActionTempfail
		case access.Tag:
			action = policy.ActionTag
		case access.Delay:
			if maxDelay > 0 && e.Delay > maxDelay {
				return nil, at(fmt.Errorf("DELAY %s is above max_delay (%s)", e.Delay, maxDelay))
			}
			a.rules[e] = &rule{action: policy.ActionDelay, mode: l.Mode, delay: e.Delay}
			continue
		default:
			continue
		}
		text := e.Text
		if text == "" {
			text = "Access denied"
		}
		var custom *policy.Reply
		if e.Code != "" {
			enh := e.Enhanced
			if enh == "" {
				enh = string(e.Code[0]) + ".7.1"
			}
			if custom, err = policy.ParseReply(e.Code + " " + enh + " " + prefix + text); err != nil {
				return nil, at(fmt.Errorf("text: %w", err))
			}
		}
		r, err := newRule(&action, l.Mode, custom, "7.1", prefix+text)
		if err != nil {
			return nil, at(fmt.Errorf("text: %w", err))
		}
		a.rules[e] = &r
	}
	return a, nil
}

func (a *accessCheck) check(s string) []outcome {
	if a == nil || a.name == heloAccess && s == "" {
		return nil
	}
	e, ok := a.table.Lookup(s)
	if !ok {
		return nil
	}
	shown := s
	if s == "" {
		shown = "<>"
	}
	return a.outcome(e, safe(shown))
}

// checkClient looks a client up: its address, and its verified name in a
// regexp table.
func (a *accessCheck) checkClient(ip netip.Addr, name string) []outcome {
	e, ok := a.table.LookupClient(ip, name)
	if !ok {
		return nil
	}
	return a.outcome(e, ip.String())
}

func (a *accessCheck) outcome(e *access.Entry, key string) []outcome {
	detail := fmt.Sprintf("%s matched %s at %s:%d", key, safe(e.Pattern), a.table.Path(), e.Line)
	if e.Action == access.OK {
		return []outcome{{res: Result{Check: a.name, Value: "ok", Detail: detail}}}
	}
	if e.Text != "" && e.Action == access.Tag {
		detail += ": " + e.Text
	}
	return a.rules[e].outcome(a.name, strings.ToLower(e.Action.String()), key, detail)
}

// budget bounds the DNS answers one check reads for one message (see
// resolver.WithBudget). Each check has its own, so that a sender's zone
// cannot use up what the client checks need, nor the other way round.
func (c *Checker) budget(ctx context.Context) context.Context {
	if c.checkBytes <= 0 {
		return ctx
	}
	return resolver.WithBudget(ctx, c.checkBytes)
}

// clientOutcomes runs the client checks; Connect uses it to warm the cache.
func (c *Checker) clientOutcomes(ctx context.Context, ip netip.Addr) {
	var wg sync.WaitGroup
	wg.Go(func() {
		defer guard.Recover(c.log, "auth prefetch client_rdns")
		c.rdnsOutcome(ctx, ip)
	})
	c.dnsblOutcomes(ctx, ip)
	wg.Wait()
}

// maxPTRNames is how many PTR names are forward-checked, as RFC 7208 §5.5
// bounds the same work for the ptr mechanism.
const maxPTRNames = 10

func (c *Checker) rdnsOutcome(ctx context.Context, ip netip.Addr) []outcome {
	r := c.clientRDNS
	if r == nil {
		return nil
	}
	const name = "client_rdns"
	key := ip.String()
	ctx = c.budget(ctx)
	names, err := c.res.LookupAddr(ctx, key)
	if err != nil && !isNotFound(err) {
		if temporary(err) {
			return r.temp.outcome(name, "temperror", key, fmt.Sprintf("PTR lookup for %s failed: %v", ip, err))
		}
		return r.fail.outcome(name, "fail", key, fmt.Sprintf("PTR lookup for %s failed: %v", ip, err))
	}
	if len(names) == 0 {
		return r.fail.outcome(name, "fail", key, fmt.Sprintf("%s has no PTR record", ip))
	}
	if !r.fcrdns {
		return pass(name, fmt.Sprintf("%s is %s", ip, safe(names[0])))
	}
	names = names[:min(len(names), maxPTRNames)]
	network := "ip4"
	if ip.Is6() {
		network = "ip6"
	}
	type fwd struct {
		match bool
		err   error
	}
	res := make([]fwd, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Go(func() {
			// A panic leaves this name unconfirmed; the others answer.
			defer guard.Recover(c.log, "auth check client_rdns forward")
			addrs, err := c.res.LookupNetIP(ctx, network, n)
			for _, a := range addrs {
				if a.Unmap() == ip {
					res[i].match = true
				}
			}
			res[i].err = err
		})
	}
	wg.Wait()
	tempErr := false
	for i, f := range res {
		if f.match {
			return pass(name, fmt.Sprintf("%s is %s", ip, safe(names[i])))
		}
		tempErr = tempErr || f.err != nil && temporary(f.err)
	}
	if tempErr {
		return r.temp.outcome(name, "temperror", key, fmt.Sprintf("%s: forward lookup of %s failed", ip, safe(strings.Join(names, ", "))))
	}
	return r.fail.outcome(name, "fail", key, fmt.Sprintf("%s: PTR %s does not resolve back to it", ip, safe(strings.Join(names, ", "))))
}

// dnsblOutcomes asks every zone at once.
func (c *Checker) dnsblOutcomes(ctx context.Context, ip netip.Addr) []outcome {
	if len(c.dnsbl) == 0 {
		return nil
	}
	per := make([][]outcome, len(c.dnsbl))
	var wg sync.WaitGroup
	for i, b := range c.dnsbl {
		wg.Go(func() {
			// A panic leaves this zone without an answer; the others answer.
			defer guard.Recover(c.log, "auth check "+b.source)
			per[i] = c.dnsblOutcome(ctx, b, ip)
		})
	}
	wg.Wait()
	var out []outcome
	for _, o := range per {
		out = append(out, o...)
	}
	return out
}

var (
	loopback8 = netip.MustParsePrefix("127.0.0.0/8")
	// Lists answer from 127.255.255.0/24 to say the query itself was
	// refused (Spamhaus: 127.255.255.254 for queries through a public
	// resolver), which is no listing.
	dnsblErrors = netip.MustParsePrefix("127.255.255.0/24")
)

func (c *Checker) dnsblOutcome(ctx context.Context, b *dnsblCheck, ip netip.Addr) []outcome {
	key := ip.String()
	addrs, err := c.res.LookupNetIP(c.budget(ctx), "ip4", reverseName(ip)+"."+b.zone)
	if err != nil && !isNotFound(err) {
		return b.temp.outcome(b.source, "temperror", key, fmt.Sprintf("%s lookup failed: %v", b.zone, err))
	}
	var listed, refused []string
	for _, a := range addrs {
		switch {
		case !loopback8.Contains(a):
			c.log.Warn("dnsbl answer outside 127.0.0.0/8 ignored", zap.String("zone", b.zone), zap.Stringer("answer", a))
		case dnsblErrors.Contains(a):
			refused = append(refused, a.String())
		case b.matches(a):
			listed = append(listed, a.String())
		}
	}
	if len(listed) > 0 {
		return b.fail.outcome(b.source, "listed", key, fmt.Sprintf("%s listed in %s: %s", ip, b.zone, strings.Join(listed, ",")))
	}
	if len(refused) > 0 {
		c.log.Warn("dnsbl refused the query", zap.String("zone", b.zone), zap.Strings("answer", refused))
		return b.temp.outcome(b.source, "temperror", key, fmt.Sprintf("%s refused the query: %s", b.zone, strings.Join(refused, ",")))
	}
	return pass(b.source, fmt.Sprintf("%s not listed in %s", ip, b.zone))
}

func (b *dnsblCheck) matches(a netip.Addr) bool {
	if len(b.codes) == 0 {
		return true
	}
	for _, p := range b.codes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// reverseName is the address in DNSBL order: 2.0.0.127 for 127.0.0.2,
// nibbles for IPv6 (RFC 5782).
func reverseName(ip netip.Addr) string {
	var b strings.Builder
	if ip.Is4() {
		a := ip.As4()
		fmt.Fprintf(&b, "%d.%d.%d.%d", a[3], a[2], a[1], a[0])
		return b.String()
	}
	const hexdigits = "0123456789abcdef"
	a := ip.As16()
	for i := 15; i >= 0; i-- {
		if i < 15 {
			b.WriteByte('.')
		}
		b.WriteByte(hexdigits[a[i]&15])
		b.WriteByte('.')
		b.WriteByte(hexdigits[a[i]>>4])
	}
	return b.String()
}

func (c *Checker) checkFQDNHelo(helo string) []outcome {
	r := c.fqdnHelo
	if r == nil || helo == "" {
		return nil
	}
	const name = "require_fqdn_helo"
	// An address literal is as qualified as a name can be; whether it is
	// well formed is helo_syntax's business.
	if strings.HasPrefix(helo, "[") || isFQDN(helo) {
		return pass(name, "")
	}
	return r.outcome(name, "fail", safe(helo), fmt.Sprintf("HELO \"%s\" is not a fully-qualified domain name", safe(helo)))
}

func (c *Checker) checkHeloSyntax(helo string) []outcome {
	r := c.heloSyntax
	if r == nil || helo == "" {
		return nil
	}
	const name = "helo_syntax"
	if strings.HasPrefix(helo, "[") {
		if _, ok := access.AddressLiteral(helo); ok {
			return pass(name, "")
		}
		return r.outcome(name, "fail", safe(helo), fmt.Sprintf("HELO \"%s\" is not a valid address literal", safe(helo)))
	}
	if _, err := netip.ParseAddr(helo); err == nil {
		return r.outcome(name, "fail", safe(helo), fmt.Sprintf("HELO \"%s\" is an address without brackets", safe(helo)))
	}
	if !validHostname(helo) {
		return r.outcome(name, "fail", safe(helo), fmt.Sprintf("HELO \"%s\" is not a valid host name", safe(helo)))
	}
	return pass(name, "")
}

func (c *Checker) checkHeloNotOurs(helo string, client netip.Addr) []outcome {
	n := c.heloNotOurs
	if n == nil || helo == "" || n.addrs[client.Unmap()] {
		return nil
	}
	const name = "helo_not_ours"
	ip, isLiteral := access.AddressLiteral(helo)
	if !isLiteral {
		if a, err := netip.ParseAddr(helo); err == nil {
			ip, isLiteral = a, true
		}
	}
	if isLiteral && n.addrs[ip.Unmap()] || !isLiteral && n.names[normName(helo)] {
		return n.outcome(name, "fail", safe(helo), fmt.Sprintf("HELO \"%s\" is our own name or address", safe(helo)))
	}
	return pass(name, "")
}

func (c *Checker) checkFQDNSender(sender string) []outcome {
	r := c.fqdnSender
	if r == nil || sender == "" {
		return nil
	}
	const name = "require_fqdn_sender"
	_, domain, ok := cutLast(sender, '@')
	if ok && strings.HasPrefix(domain, "[") {
		if _, lit := access.AddressLiteral(domain); lit {
			return pass(name, "")
		}
	}
	if ok && isFQDN(domain) {
		return pass(name, "")
	}
	return r.outcome(name, "fail", safe(sender), fmt.Sprintf("sender \"%s\" is not a fully-qualified address", safe(sender)))
}

func (c *Checker) checkDomainExists(ctx context.Context, sender string) []outcome {
	r := c.domainExists
	if r == nil || sender == "" {
		return nil
	}
	const name = "sender_domain_exists"
	_, domain, ok := cutLast(sender, '@')
	if !ok || domain == "" || strings.HasPrefix(domain, "[") {
		return nil // no domain to look up: require_fqdn_sender's business
	}
	key := safe(sender)
	d := safe(domain)
	ctx = c.budget(ctx)
	mxs, err := c.res.LookupMX(ctx, domain)
	switch {
	case isNotFound(err):
		return r.fail.outcome(name, "fail", key, fmt.Sprintf("%s does not exist", d))
	case errors.Is(err, resolver.ErrTooLarge):
		// The domain answered, with more than sluice reads: it exists.
		return pass(name, fmt.Sprintf("%s has MX records (an answer too large to read)", d))
	case err != nil:
		return r.temp.outcome(name, "temperror", key, fmt.Sprintf("MX lookup for %s failed: %v", d, err))
	case len(mxs) == 1 && mxs[0].Host == ".":
		return r.fail.outcome(name, "fail", key, fmt.Sprintf("%s accepts no mail (null MX)", d))
	case len(mxs) > 0:
		return pass(name, fmt.Sprintf("%s has MX records", d))
	}
	addrs, err := c.res.LookupNetIP(ctx, "ip", domain)
	switch {
	case len(addrs) > 0:
		return pass(name, fmt.Sprintf("%s has addresses", d))
	case errors.Is(err, resolver.ErrTooLarge):
		return pass(name, fmt.Sprintf("%s has addresses (an answer too large to read)", d))
	case err != nil && !isNotFound(err):
		return r.temp.outcome(name, "temperror", key, fmt.Sprintf("address lookup for %s failed: %v", d, err))
	}
	return r.fail.outcome(name, "fail", key, fmt.Sprintf("%s has no MX, A or AAAA record", d))
}

func isNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

func temporary(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && (de.IsTimeout || de.IsTemporary)
}

func normName(s string) string { return strings.ToLower(strings.TrimSuffix(s, ".")) }

// isFQDN reports whether s is a name of at least two labels.
func isFQDN(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if !strings.Contains(s, ".") {
		return false
	}
	for l := range strings.SplitSeq(s, ".") {
		if l == "" {
			return false
		}
	}
	return true
}

// validHostname checks host name syntax as Postfix's valid_hostname does:
// labels of letters, digits, '-' and '_', not starting or ending with '-',
// at most 63 bytes each and 255 in all.
func validHostname(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 255 {
		return false
	}
	for l := range strings.SplitSeq(s, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			ch := l[i]
			if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_') {
				return false
			}
		}
	}
	return true
}

func cutLast(s string, c byte) (string, string, bool) {
	i := strings.LastIndexByte(s, c)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}
