package auth

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"sluice/auth/access"
	"sluice/auth/resolver"
	"sluice/conf"
	"sluice/policy"
)

// Config is auth's part of the file: the top-level key authserv_id and the
// tables [dns], [spf] and [checks].
type Config struct {
	// AuthservID names this host in Authentication-Results (RFC 8601).
	// Default: the host name.
	AuthservID string          `toml:"authserv_id"`
	DNS        resolver.Config `toml:"dns"`
	SPF        SPFConfig       `toml:"spf"`
	Checks     ChecksConfig    `toml:"checks"`
}

// SPFConfig is the [spf] table. Every result is only tagged (headers, no
// refusal) until the admin maps it to reject or tempfail.
type SPFConfig struct {
	Enabled bool `toml:"enabled"`
	// SkipAuthenticated skips SPF for SMTP AUTH clients, who send from
	// wherever their users are (default true).
	SkipAuthenticated *bool       `toml:"skip_authenticated"`
	Mode              policy.Mode `toml:"mode"`
	// Timeout bounds one whole evaluation, up to the RFC's 10 lookups
	// and what they lead to (default 10s).
	Timeout conf.Duration `toml:"timeout"`
	// The action for each result: "reject", "tempfail", "tag" (default)
	// or "none". pass never acts.
	Fail      *policy.Action `toml:"fail"`
	SoftFail  *policy.Action `toml:"softfail"`
	Neutral   *policy.Action `toml:"neutral"`
	None      *policy.Action `toml:"none"`
	TempError *policy.Action `toml:"temperror"`
	PermError *policy.Action `toml:"permerror"`
	// Reply holds optional reply templates per result.
	Reply SPFReplies `toml:"reply"`
}

// SPFReplies are the [spf.reply] templates, e.g.
// fail = "550 5.7.23 SPF check failed for {sender}".
type SPFReplies struct {
	Fail      *policy.Reply `toml:"fail"`
	SoftFail  *policy.Reply `toml:"softfail"`
	Neutral   *policy.Reply `toml:"neutral"`
	None      *policy.Reply `toml:"none"`
	TempError *policy.Reply `toml:"temperror"`
	PermError *policy.Reply `toml:"permerror"`
}

// ChecksConfig is the [checks] table. A check runs when its key is present.
type ChecksConfig struct {
	// SkipAuthenticated skips every check for SMTP AUTH clients (default
	// true), as permit_sasl_authenticated placed first does in Postfix.
	SkipAuthenticated *bool `toml:"skip_authenticated"`

	RequireFQDNSender  *Check       `toml:"require_fqdn_sender"`  // reject_non_fqdn_sender
	SenderDomainExists *DNSCheck    `toml:"sender_domain_exists"` // reject_unknown_sender_domain
	RequireFQDNHelo    *Check       `toml:"require_fqdn_helo"`    // reject_non_fqdn_helo_hostname
	HeloSyntax         *Check       `toml:"helo_syntax"`          // reject_invalid_helo_hostname
	HeloNotOurs        *HeloNotOurs `toml:"helo_not_ours"`
	ClientRDNS         *ClientRDNS  `toml:"client_rdns"`   // reject_unknown_(reverse_)client_hostname
	DNSBL              []DNSBL      `toml:"dnsbl"`         // reject_rbl_client
	SenderAccess       *AccessList  `toml:"sender_access"` // check_sender_access
	HeloAccess         *AccessList  `toml:"helo_access"`   // check_helo_access
	// ClientAccess are check_client_access tables, asked in order at
	// connect; one table is client_access = "cidr:/path", several are
	// [[checks.client_access]].
	ClientAccess AccessTables `toml:"client_access"`
}

// Check is the common part of a check's table. In the file a check is
// either a table or just its action: require_fqdn_sender = "reject".
type Check struct {
	Action *policy.Action `toml:"action"` // reject (default), tempfail, tag or none
	Mode   policy.Mode    `toml:"mode"`
	Reply  *policy.Reply  `toml:"reply"`
}

// UnmarshalText reads the short form: the action alone.
func (c *Check) UnmarshalText(b []byte) error { return c.setAction(b) }

func (c *Check) setAction(b []byte) error {
	a, err := policy.ParseAction(string(b))
	if err != nil {
		return err
	}
	c.Action = &a
	return nil
}

// DNSCheck is a check that asks DNS, and so may not get an answer.
type DNSCheck struct {
	Check
	// TempError is the action when DNS fails temporarily (timeout,
	// SERVFAIL). Default: tempfail when Action refuses, else Action.
	TempError *policy.Action `toml:"temperror"`
}

// UnmarshalText reads the short form: the action alone.
func (c *DNSCheck) UnmarshalText(b []byte) error { return c.setAction(b) }

// HeloNotOurs refuses a HELO that claims to be this host.
type HeloNotOurs struct {
	Check
	// Names are our host names and addresses; a HELO equal to one of
	// them, or an address literal of one, is forged. Default: the host
	// name.
	Names []string `toml:"names"`
}

// UnmarshalText reads the short form: the action alone.
func (c *HeloNotOurs) UnmarshalText(b []byte) error { return c.setAction(b) }

// ClientRDNS asks that the client's address has a name.
type ClientRDNS struct {
	DNSCheck
	// Require is "exists" (a PTR record, Postfix's
	// reject_unknown_reverse_client_hostname, the default) or "fcrdns"
	// (a PTR name that resolves back to the address,
	// reject_unknown_client_hostname).
	Require string `toml:"require" words:"exists fcrdns"`
}

// UnmarshalText reads the short form: client_rdns = "fcrdns".
func (c *ClientRDNS) UnmarshalText(b []byte) error { c.Require = string(b); return nil }

// DNSBL is one DNS blocklist zone.
type DNSBL struct {
	DNSCheck
	Zone string `toml:"zone"`
	// Codes, if given, are the answers (addresses or prefixes inside
	// 127.0.0.0/8) that count as listed; by default any answer in
	// 127.0.0.0/8 does, except 127.255.255.0/24, which lists use for
	// errors such as "query refused".
	Codes []string `toml:"codes"`
}

// UnmarshalText reads the short form: the zone alone.
func (c *DNSBL) UnmarshalText(b []byte) error { c.Zone = string(b); return nil }

// AccessList is an access table file; its entries carry their actions.
// File is a path, or "type:path" as Postfix names a table in main.cf
// (hash:, cidr:, regexp:, pcre:).
type AccessList struct {
	File string      `toml:"file"`
	Mode policy.Mode `toml:"mode"`
}

// UnmarshalText reads the short form: the file name alone.
func (c *AccessList) UnmarshalText(b []byte) error { c.File = string(b); return nil }

// AccessTables are access tables asked in order.
type AccessTables []AccessList

// UnmarshalText reads the short form: one table's file name alone.
func (c *AccessTables) UnmarshalText(b []byte) error {
	*c = AccessTables{{File: string(b)}}
	return nil
}

// hostname is os.Hostname, replaceable in tests.
var hostname = os.Hostname

// Defaults fills what the file left out.
func (c *Config) Defaults() {
	if c.AuthservID == "" {
		if h, err := hostname(); err == nil {
			c.AuthservID = h
		}
	}
	c.DNS.Defaults()
	s := &c.SPF
	if s.SkipAuthenticated == nil {
		s.SkipAuthenticated = ptr(true)
	}
	if s.Timeout == 0 {
		s.Timeout = conf.Duration(10 * time.Second)
	}
	for _, a := range []**policy.Action{&s.Fail, &s.SoftFail, &s.Neutral, &s.None, &s.TempError, &s.PermError} {
		if *a == nil {
			*a = ptr(policy.ActionTag)
		}
	}
	k := &c.Checks
	if k.SkipAuthenticated == nil {
		k.SkipAuthenticated = ptr(true)
	}
	for _, ch := range []*Check{k.RequireFQDNSender, k.RequireFQDNHelo, k.HeloSyntax} {
		if ch != nil {
			ch.defaults()
		}
	}
	if k.SenderDomainExists != nil {
		k.SenderDomainExists.defaults(nil)
	}
	if k.HeloNotOurs != nil {
		k.HeloNotOurs.defaults()
		if len(k.HeloNotOurs.Names) == 0 {
			if h, err := hostname(); err == nil && h != "" {
				k.HeloNotOurs.Names = []string{h}
			}
		}
	}
	if k.ClientRDNS != nil {
		k.ClientRDNS.DNSCheck.defaults(nil)
		if k.ClientRDNS.Require == "" {
			k.ClientRDNS.Require = "exists"
		}
	}
	for i := range k.DNSBL {
		// a blocklist that does not answer must not stop mail
		k.DNSBL[i].defaults(ptr(policy.ActionNone))
	}
}

func ptr[T any](v T) *T { return &v }

func (c *Check) defaults() {
	if c.Action == nil {
		c.Action = ptr(policy.ActionReject)
	}
}

// defaults fills the check's; temp, when not nil, is what a lookup that
// failed for now does, else the check's own action softened to tempfail.
func (c *DNSCheck) defaults(temp *policy.Action) {
	c.Check.defaults()
	switch {
	case c.TempError != nil:
	case temp != nil:
		c.TempError = temp
	case c.Action.Refuses():
		c.TempError = ptr(policy.ActionTempfail)
	default:
		c.TempError = ptr(*c.Action)
	}
}

// Validate checks auth's keys. Errors carry key paths such as
// "checks.dnsbl.0.zone".
func (c *Config) Validate() error {
	if c.AuthservID == "" {
		return conf.Errorf("authserv_id", "is empty and the host name is unknown")
	}
	for i := 0; i < len(c.AuthservID); i++ {
		if ch := c.AuthservID[i]; ch <= ' ' || ch >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?=`, ch) >= 0 {
			return conf.Errorf("authserv_id", "%q is not a valid authserv-id: use a host name", c.AuthservID)
		}
	}
	if err := c.DNS.Validate(); err != nil {
		return conf.In(err, "dns")
	}
	if err := c.SPF.validate(); err != nil {
		return conf.In(err, "spf")
	}
	return conf.In(c.Checks.validate(), "checks")
}

func (s *SPFConfig) validate() error {
	if s.Timeout.D() <= 0 || s.Timeout.D() > 25*time.Second {
		return conf.Errorf("timeout", "%s must be between 0 and 25s, inside the MTA's milter timeout", s.Timeout.D())
	}
	for _, r := range s.results() {
		a, err := checkable(*r.action)
		if err != nil {
			return conf.Errorf(r.name, "%v", err)
		}
		if err := replyMatches(a, r.reply); err != nil {
			return conf.In(err, "reply", r.name)
		}
	}
	return nil
}

type spfResultConfig struct {
	name   string
	action **policy.Action
	reply  *policy.Reply
}

func (s *SPFConfig) results() []spfResultConfig {
	return []spfResultConfig{
		{"fail", &s.Fail, s.Reply.Fail},
		{"softfail", &s.SoftFail, s.Reply.SoftFail},
		{"neutral", &s.Neutral, s.Reply.Neutral},
		{"none", &s.None, s.Reply.None},
		{"temperror", &s.TempError, s.Reply.TempError},
		{"permerror", &s.PermError, s.Reply.PermError},
	}
}

func (k *ChecksConfig) validate() error {
	for _, c := range []struct {
		name string
		c    *Check
	}{
		{"require_fqdn_sender", k.RequireFQDNSender},
		{"require_fqdn_helo", k.RequireFQDNHelo},
		{"helo_syntax", k.HeloSyntax},
	} {
		if c.c != nil {
			if err := c.c.validate(); err != nil {
				return conf.In(err, c.name)
			}
		}
	}
	if k.SenderDomainExists != nil {
		if err := k.SenderDomainExists.validate(); err != nil {
			return conf.In(err, "sender_domain_exists")
		}
	}
	if h := k.HeloNotOurs; h != nil {
		if err := h.validate(); err != nil {
			return conf.In(err, "helo_not_ours")
		}
		if len(h.Names) == 0 {
			return conf.Errorf("helo_not_ours", "no names: the host name is unknown, list them in names")
		}
		for i, n := range h.Names {
			if _, err := netip.ParseAddr(n); err == nil {
				continue
			}
			if !validHostname(n) {
				return conf.In(fmt.Errorf("%q is neither a host name nor an address", n), "helo_not_ours", "names", conf.Index(i))
			}
		}
	}
	if r := k.ClientRDNS; r != nil {
		if err := r.DNSCheck.validate(); err != nil {
			return conf.In(err, "client_rdns")
		}
		if r.Require != "exists" && r.Require != "fcrdns" {
			return conf.In(fmt.Errorf("%q: want exists or fcrdns", r.Require), "client_rdns", "require")
		}
	}
	zones := make(map[string]int)
	for i := range k.DNSBL {
		b := &k.DNSBL[i]
		at := func(err error) error { return conf.In(err, "dnsbl", conf.Index(i)) }
		if err := b.DNSCheck.validate(); err != nil {
			return at(err)
		}
		z := strings.ToLower(strings.TrimSuffix(b.Zone, "."))
		if z == "" || !validHostname(z) {
			return at(conf.Errorf("zone", "%q is not a DNS zone", b.Zone))
		}
		if j, ok := zones[z]; ok {
			return at(conf.Errorf("zone", "%s is already listed as dnsbl %d", z, j))
		}
		zones[z] = i
		if _, err := parseCodes(b.Codes); err != nil {
			return at(conf.In(err, "codes"))
		}
	}
	for _, a := range []struct {
		name string
		l    *AccessList
		kind access.Kind
	}{{"sender_access", k.SenderAccess, access.Senders}, {"helo_access", k.HeloAccess, access.HELONames}} {
		if a.l != nil {
			if err := a.l.validate(a.kind); err != nil {
				return conf.In(err, a.name)
			}
		}
	}
	for i := range k.ClientAccess {
		if err := k.ClientAccess[i].validate(access.Clients); err != nil {
			return conf.In(err, "client_access", conf.Index(i))
		}
	}
	return nil
}

func (l *AccessList) validate(kind access.Kind) error {
	if l.File == "" {
		return conf.Errorf("file", "no file given")
	}
	if _, _, err := access.ParseSpec(l.File, kind); err != nil {
		return conf.Errorf("file", "%v", err)
	}
	return nil
}

func (c *Check) validate() error {
	a, err := checkable(c.Action)
	if err != nil {
		return conf.Errorf("action", "%v", err)
	}
	return conf.In(replyMatches(a, c.Reply), "reply")
}

func (c *DNSCheck) validate() error {
	if err := c.Check.validate(); err != nil {
		return err
	}
	if _, err := checkable(c.TempError); err != nil {
		return conf.Errorf("temperror", "%v", err)
	}
	return nil
}

// checkable refuses the actions a check cannot take: a check answers at
// MAIL FROM with a refusal, a tag, or nothing. Defaults fill every action,
// so nil is a caller that skipped them.
func checkable(a *policy.Action) (policy.Action, error) {
	if a == nil {
		return 0, fmt.Errorf("no action")
	}
	switch *a {
	case policy.ActionReject, policy.ActionTempfail, policy.ActionTag, policy.ActionNone:
		return *a, nil
	}
	return 0, fmt.Errorf("action %s is not for checks (want reject, tempfail, tag or none)", *a)
}

// replyMatches refuses a reply whose class contradicts the action: a 5xx
// for tempfail would turn a temporary refusal into a bounce.
func replyMatches(a policy.Action, r *policy.Reply) error {
	if r == nil {
		return nil
	}
	switch {
	case a == policy.ActionTempfail && !r.Temporary():
		return fmt.Errorf("reply code %s is permanent but the action is tempfail (use a 4xx code)", r.Code())
	case a == policy.ActionReject && r.Temporary():
		return fmt.Errorf("reply code %s is temporary but the action is reject (use a 5xx code)", r.Code())
	}
	return nil
}

// parseCodes reads a DNSBL's answer codes.
func parseCodes(codes []string) ([]netip.Prefix, error) {
	loopback := netip.MustParsePrefix("127.0.0.0/8")
	var out []netip.Prefix
	for i, c := range codes {
		var p netip.Prefix
		if strings.Contains(c, "/") {
			var err error
			if p, err = netip.ParsePrefix(c); err != nil {
				return nil, conf.Errorf(conf.Index(i), "%q is not an address or prefix", c)
			}
		} else {
			ip, err := netip.ParseAddr(c)
			if err != nil {
				return nil, conf.Errorf(conf.Index(i), "%q is not an address or prefix", c)
			}
			p = netip.PrefixFrom(ip, ip.BitLen())
		}
		if !p.Addr().Is4() || !loopback.Contains(p.Addr()) || p.Bits() < 8 {
			return nil, conf.Errorf(conf.Index(i), "%q is outside 127.0.0.0/8, where blocklists answer", c)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
