package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"blitiri.com.ar/go/spf"

	"sluice/auth/resolver"
	"sluice/policy"
)

type spfChecker struct {
	skipAuth bool
	timeout  time.Duration
	rules    map[spf.Result]*rule
}

// spfTexts are the default reply texts and enhanced codes (RFC 7372:
// x.7.23 validation failed, x.7.24 validation error) per result.
var spfTexts = map[spf.Result][2]string{
	spf.Fail:      {"7.23", "SPF fail: [{client_ip}] is not allowed to send mail as {key}"},
	spf.SoftFail:  {"7.23", "SPF softfail: [{client_ip}] is probably not allowed to send mail as {key}"},
	spf.Neutral:   {"7.23", "SPF neutral: the domain of {key} says nothing about [{client_ip}]"},
	spf.None:      {"7.23", "SPF none: the domain of {key} publishes no SPF policy"},
	spf.TempError: {"7.24", "SPF temperror: cannot check {key} now; try again later"},
	spf.PermError: {"7.24", "SPF permerror: the SPF policy for {key} is broken"},
}

func newSPFChecker(cfg *SPFConfig) (*spfChecker, error) {
	s := &spfChecker{
		skipAuth: cfg.SkipAuthenticated == nil || *cfg.SkipAuthenticated,
		timeout:  cfg.Timeout.D(),
		rules:    make(map[spf.Result]*rule),
	}
	for _, rc := range cfg.results() {
		res := spf.Result(rc.name)
		t := spfTexts[res]
		r, err := newRule(*rc.action, cfg.Mode, rc.reply, t[0], t[1])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rc.name, err)
		}
		s.rules[res] = &r
	}
	return s, nil
}

// spfOutcome is one SPF evaluation, what the headers are made from.
type spfOutcome struct {
	result    spf.Result
	identity  string // "mailfrom" or "helo"
	checked   string // the address checked: the sender, or postmaster@helo
	sender    string // MAIL FROM as given, "" for the null sender
	helo      string
	ip        netip.Addr
	mechanism string // what matched, when something did
	problem   string // why, for temperror and permerror
}

func (c *Checker) checkSPF(ctx context.Context, f *policy.Facts) spfOutcome {
	o := spfOutcome{identity: "mailfrom", sender: f.Sender, helo: f.Helo, ip: f.ClientIP.Unmap()}
	local, domain, ok := cutLast(f.Sender, '@')
	if !ok || domain == "" {
		// RFC 7208 §2.4: the null sender is checked as postmaster@helo;
		// a sender without a domain has nothing else to offer either.
		o.identity, local, domain = "helo", "postmaster", f.Helo
	}
	if local == "" {
		local = "postmaster" // RFC 7208 §4.3
	}
	o.checked = local + "@" + domain
	if !spfDomain(domain) {
		// RFC 7208 §4.3: a malformed or single-label domain is "none"
		// without asking DNS.
		o.result = spf.None
		o.problem = "no valid domain to check"
		return o
	}
	ctx, cancel := context.WithTimeout(ctx, c.spf.timeout)
	defer cancel()
	ctx = c.budget(ctx)
	if bad := c.recordSyntax(ctx, domain); bad != "" {
		o.result, o.problem = spf.PermError, bad
		return o
	}
	var res spf.DNSResolver = c.res
	if o.ip.Is4() {
		res = ip4Resolver{c.res}
	}
	result, err := spf.CheckHostWithSender(o.ip.AsSlice(), f.Helo, o.checked,
		spf.WithContext(ctx), spf.WithResolver(res))
	o.result = result
	switch result {
	case spf.TempError, spf.PermError:
		if err != nil {
			o.problem = err.Error()
		}
		switch {
		case ctx.Err() != nil:
			o.result, o.problem = spf.TempError, "SPF evaluation timed out"
		case errors.Is(err, resolver.ErrTooLarge), errors.Is(err, resolver.ErrBudget):
			// The library calls any DNS failure of a term a temperror,
			// but these are the zone's own doing and a retry would meet
			// them again: the policy needs more DNS than a receiver
			// reads, as RFC 7208 §4.6.4 says of too many lookups. Only
			// the policy's own terms get here: the library ignores the
			// failures of a ptr term's lookups (§5.5), and check_bytes
			// leaves room for all a ptr term can read, so a client's
			// reverse zone cannot turn a fail into a permerror.
			o.result = spf.PermError
		}
	case spf.Pass, spf.Fail, spf.SoftFail, spf.Neutral:
		o.mechanism = matched(err)
	}
	return o
}

func (o *spfOutcome) outcomes(s *spfChecker) []outcome {
	detail := fmt.Sprintf("spf=%s identity=%s %s client-ip=%s", o.result, o.identity, safe(o.checked), o.ip)
	if o.problem != "" {
		detail += ": " + safe(o.problem)
	}
	r, ok := s.rules[o.result]
	if !ok {
		return pass("spf", detail)
	}
	return r.outcome("spf", string(o.result), safe(o.checked), detail)
}

// spfDomain reports whether d can be an SPF domain: two labels or more,
// each of 1 to 63 bytes, 253 in all.
func spfDomain(d string) bool {
	d = strings.TrimSuffix(d, ".")
	if len(d) > 253 || !strings.Contains(d, ".") {
		return false
	}
	for l := range strings.SplitSeq(d, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
	}
	return true
}

// matched names the mechanism the library reports as matching.
func matched(err error) string {
	for _, m := range []struct {
		err  error
		name string
	}{
		{spf.ErrMatchedAll, "all"}, {spf.ErrMatchedA, "a"}, {spf.ErrMatchedIP, "ip"},
		{spf.ErrMatchedMX, "mx"}, {spf.ErrMatchedPTR, "ptr"}, {spf.ErrMatchedExists, "exists"},
	} {
		if errors.Is(err, m.err) {
			return m.name
		}
	}
	return ""
}

// ip4Resolver asks only for A records where the SPF library asks for
// addresses: RFC 7208 §5.3 and §5.4 look up the connection's family, and
// "exists" always uses A. An IPv6 client gets both families (the library
// does not tell "exists" from "a").
type ip4Resolver struct{ Resolver }

func (r ip4Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	ips, err := r.LookupNetIP(ctx, "ip4", host)
	out := make([]net.IPAddr, 0, len(ips))
	for _, ip := range ips {
		out = append(out, net.IPAddr{IP: ip.AsSlice()})
	}
	return out, err
}

// SPFMailFrom is the SPF result of the MAIL FROM identity and the domain
// it was checked for, as DMARC reads them; empty when SPF did not run or
// checked the HELO identity (the null sender), which DMARC must never
// use (RFC 7489 §4.1; opendmarc trusted it: CVE-2019-20790).
func (m *Message) SPFMailFrom() (result, domain string) {
	if m.spf == nil || m.spf.identity != "mailfrom" {
		return "", ""
	}
	_, d, _ := cutLast(m.spf.checked, '@')
	return string(m.spf.result), d
}
