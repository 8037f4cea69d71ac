// Package dmarc evaluates DMARC (RFC 7489) for a message at its end: the
// From domain, the policy record, alignment with SPF and DKIM, the policy.
//
// go-msgauth parses records; the rest is here: one From with one address
// or permerror, the record at the From domain then at its organizational
// domain (public suffix list), several records at one name meaning no
// policy, strict or relaxed alignment, p/sp/pct and the np tag of the
// DMARCbis draft, and the action the config maps the outcome to.
package dmarc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"

	"github.com/emersion/go-msgauth/authres"

	"sluice/auth/resolver"
	"sluice/policy"
	"sluice/smtp"
)

// Resolver is what the evaluation asks DNS through: *resolver.Resolver,
// with its cache, rate cap and *net.DNSError errors.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Config is the [dmarc] table. Every outcome is only tagged until the
// admin maps it to an action: a site adopts DMARC in soft mode first.
type Config struct {
	Enabled bool `toml:"enabled"`
	// SkipAuthenticated skips SMTP AUTH clients (default true): their
	// mail is ours, not someone else's domain's.
	SkipAuthenticated *bool       `toml:"skip_authenticated"`
	Mode              policy.Mode `toml:"mode"`
	// The action for a message that fails, by the policy applied to it
	// (after sp, np and pct): reject (p=reject), quarantine, none; and
	// for the errors. reject, tempfail, hold, tag (default) or none.
	Reject     *policy.Action `toml:"reject"`
	Quarantine *policy.Action `toml:"quarantine"`
	None       *policy.Action `toml:"none"`
	TempError  *policy.Action `toml:"temperror"`
	PermError  *policy.Action `toml:"permerror"`
	Reply      Replies        `toml:"reply"`
}

// Replies are the [dmarc.reply] templates, e.g.
// reject = "550 5.7.1 Rejected by the DMARC policy of {from_domain}".
type Replies struct {
	Reject     *policy.Reply `toml:"reject"`
	Quarantine *policy.Reply `toml:"quarantine"`
	None       *policy.Reply `toml:"none"`
	TempError  *policy.Reply `toml:"temperror"`
	PermError  *policy.Reply `toml:"permerror"`
}

// outcomes are the config's keys, with the enhanced status code and
// default text of each.
func (c *Config) outcomes() []policy.ResultConfig {
	return []policy.ResultConfig{
		{Key: "reject", Action: c.Reject, Reply: c.Reply.Reject, Enh: "7.1", Text: "Rejected by the DMARC policy of {from_domain}"},
		{Key: "quarantine", Action: c.Quarantine, Reply: c.Reply.Quarantine, Enh: "7.1", Text: "Refused: the DMARC policy of {from_domain} asks to quarantine this message"},
		{Key: "none", Action: c.None, Reply: c.Reply.None, Enh: "7.1", Text: "The message fails DMARC for {from_domain}"},
		{Key: "temperror", Action: c.TempError, Reply: c.Reply.TempError, Enh: "7.1", Text: "Cannot check the DMARC policy of {from_domain} now; try again later"},
		{Key: "permerror", Action: c.PermError, Reply: c.Reply.PermError, Enh: "7.1", Text: "DMARC permerror: {key}"},
	}
}

// Defaults fills what the file left out.
func (c *Config) Defaults() {
	if c.SkipAuthenticated == nil {
		t := true
		c.SkipAuthenticated = &t
	}
	for _, a := range []**policy.Action{&c.Reject, &c.Quarantine, &c.None, &c.TempError, &c.PermError} {
		if *a == nil {
			t := policy.ActionTag
			*a = &t
		}
	}
}

var allowed = []policy.Action{policy.ActionReject, policy.ActionTempfail, policy.ActionHold, policy.ActionTag, policy.ActionNone}

// Validate checks the [dmarc] keys.
func (c *Config) Validate() error {
	_, err := c.actions()
	return err
}

func (c *Config) actions() (map[string]policy.ResultAction, error) {
	return policy.ResultActions(c.Mode, allowed, c.outcomes()...)
}

// Evaluator evaluates DMARC for every message. It is safe for concurrent
// use.
type Evaluator struct {
	res      Resolver
	actions  map[string]policy.ResultAction
	skipAuth bool
	budget   int
	sample   func() int // 0..99, for pct
}

// New makes an evaluator from a config that passed Validate; lookups go
// through res, and one message's may read budget bytes of answers
// ([dns] check_bytes).
func New(cfg *Config, res Resolver, budget int) (*Evaluator, error) {
	acts, err := cfg.actions()
	if err != nil {
		return nil, err
	}
	return &Evaluator{res: res, actions: acts, skipAuth: cfg.SkipAuthenticated == nil || *cfg.SkipAuthenticated,
		budget: budget, sample: func() int { return rand.IntN(100) }}, nil
}

// SkipAuthenticated reports whether SMTP AUTH clients are left out.
func (e *Evaluator) SkipAuthenticated() bool { return e.skipAuth }

// Input is what DMARC is evaluated from.
type Input struct {
	// From holds the value of every From field of the message, in order.
	From []string
	// SPF is the SPF result of the MAIL FROM identity and the domain it
	// was checked for; empty when SPF did not run or checked the HELO
	// identity, which DMARC never uses (RFC 7489 §4.1; CVE-2019-20790).
	SPF, SPFDomain string
	// DKIM are the d= of the signatures that passed.
	DKIM []string
}

// Result values.
const (
	Pass      = "pass"
	Fail      = "fail"
	None      = "none"
	TempError = "temperror"
	PermError = "permerror"
)

// Result is one message's DMARC evaluation.
type Result struct {
	Value      string // pass, fail, none, temperror, permerror
	FromDomain string // "" when From gave none
	// Policy is the record's policy for the From domain (p, or sp or np
	// for a subdomain found through its organizational domain); Applied
	// is what is done to a message that fails, after pct.
	Policy, Applied Policy
	Percent         int
	// Domain is where the record was found.
	Domain string
	// SPFAligned and DKIMAligned say which identifiers passed aligned;
	// DKIMDomain is the aligned d= when one did.
	SPFAligned, DKIMAligned bool
	DKIMDomain              string
	Reason                  string // why, for none, temperror and permerror
}

// Evaluate evaluates DMARC for one message.
func (e *Evaluator) Evaluate(ctx context.Context, in *Input) Result {
	from, err := FromDomain(in.From)
	if err != nil {
		return Result{Value: PermError, Reason: err.Error()}
	}
	r := Result{FromDomain: from}
	ctx = resolver.WithBudget(ctx, e.budget)
	rec, at, err := e.discover(ctx, from)
	switch {
	case err == nil:
	case errors.Is(err, errNoRecord):
		r.Value, r.Reason = None, err.Error()
		return r
	case temporary(err):
		r.Value, r.Reason = TempError, "DMARC record lookup: "+err.Error()
		return r
	default:
		r.Value, r.Reason = PermError, "DMARC record of "+at+": "+err.Error()
		return r
	}
	r.Domain, r.Percent = at, rec.Percent()
	r.Policy = rec.Policy
	if at != from {
		switch np := rec.NP; {
		case np != "" && e.nonexistent(ctx, from):
			r.Policy = np
		case rec.SubdomainPolicy != "":
			r.Policy = rec.SubdomainPolicy
		}
	}
	if in.SPF == "pass" {
		r.SPFAligned = Aligned(from, NormalizeDomain(in.SPFDomain), Mode(rec.SPFAlignment[0]))
	}
	for _, d := range in.DKIM {
		if Aligned(from, NormalizeDomain(d), Mode(rec.DKIMAlignment[0])) {
			r.DKIMAligned, r.DKIMDomain = true, NormalizeDomain(d)
			break
		}
	}
	if r.SPFAligned || r.DKIMAligned {
		r.Value, r.Applied = Pass, PolicyNone
		return r
	}
	r.Value, r.Applied = Fail, r.Policy
	if r.Percent < 100 && e.sample() >= r.Percent {
		// RFC 7489 §6.6.4: a message left out of the sample gets the
		// next policy down.
		switch r.Applied {
		case PolicyReject:
			r.Applied = PolicyQuarantine
		case PolicyQuarantine:
			r.Applied = PolicyNone
		}
	}
	return r
}

// discover finds the record for from: at from itself, else at its
// organizational domain (RFC 7489 §6.6.3). Several records at from end
// the search: no policy, not the organization's.
func (e *Evaluator) discover(ctx context.Context, from string) (*Record, string, error) {
	rec, many, err := lookupRecord(ctx, e.res, from)
	if err == nil || many || !errors.Is(err, errNoRecord) {
		if many {
			err = fmt.Errorf("several DMARC records at _dmarc.%s: %w", from, errNoRecord)
		}
		return rec, from, err
	}
	org := OrgDomain(from)
	if org == from {
		return nil, from, fmt.Errorf("%w for %s", errNoRecord, from)
	}
	rec, many, err = lookupRecord(ctx, e.res, org)
	if many {
		err = fmt.Errorf("several DMARC records at _dmarc.%s: %w", org, errNoRecord)
	} else if errors.Is(err, errNoRecord) {
		err = fmt.Errorf("%w for %s or %s", errNoRecord, from, org)
	}
	return rec, org, err
}

// nonexistent reports whether d does not exist in the DMARCbis sense: no
// A, AAAA or MX records. A lookup that fails is not proof, and d is then
// taken to exist.
func (e *Evaluator) nonexistent(ctx context.Context, d string) bool {
	mx, err := e.res.LookupMX(ctx, d)
	if len(mx) > 0 || err != nil && !notFound(err) {
		return false
	}
	ips, err := e.res.LookupNetIP(ctx, "ip", d)
	return len(ips) == 0 && (err == nil || notFound(err))
}

func notFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// Outcome is what the config asks for a result: the verdict when it asks
// for an action (nil otherwise), and the name of the config key the
// result maps to ("reject", "permerror"...; "" for pass and none).
func (e *Evaluator) Outcome(r *Result) (*policy.Verdict, string) {
	key := ""
	switch r.Value {
	case Fail:
		key = string(r.Applied)
	case TempError, PermError:
		key = r.Value
	}
	ra, ok := e.actions[key]
	if !ok {
		return nil, key
	}
	what := r.FromDomain
	if what == "" {
		what = r.Reason
	}
	return ra.Verdict("dmarc", smtp.ASCII(what, 200), r.Detail()), key
}

// Detail is the result for logs and X-Sluice-Check.
func (r *Result) Detail() string {
	var b strings.Builder
	fmt.Fprintf(&b, "dmarc=%s", r.Value)
	if r.FromDomain != "" {
		fmt.Fprintf(&b, " header.from=%s", r.FromDomain)
	}
	if r.Policy != "" {
		fmt.Fprintf(&b, " p=%s", r.Policy)
		if r.Percent < 100 {
			fmt.Fprintf(&b, " pct=%d", r.Percent)
		}
		if r.Value == Fail {
			fmt.Fprintf(&b, " applied=%s spf_aligned=no dkim_aligned=no", r.Applied)
		} else {
			fmt.Fprintf(&b, " spf_aligned=%s dkim_aligned=%s", yesNo(r.SPFAligned), yesNo(r.DKIMAligned))
		}
	}
	if r.Reason != "" {
		b.WriteString(": ")
		b.WriteString(r.Reason)
	}
	return smtp.ASCII(b.String(), 300)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// AuthResult is the result's entry in Authentication-Results: dmarc=
// with header.from and policy.dmarc, the policy applied (RFC 7489 §11.2).
func (r *Result) AuthResult() authres.Result {
	params := map[string]string{"header.from": r.FromDomain}
	if r.Value == Pass || r.Value == Fail {
		params["policy.dmarc"] = string(r.Applied)
	}
	if r.Value == TempError || r.Value == PermError {
		params["reason"] = reasonText(r.Reason)
	}
	return &authres.GenericResult{Method: "dmarc", Value: authres.ResultValue(r.Value), Params: params}
}

// reasonText makes a reason one short line that readers splitting
// Authentication-Results at every ';' (authres.Parse among them) and
// quoted-string parsers both take whole.
var reasonEscaper = strings.NewReplacer(";", ",", `"`, "'", `\`, "/")

func reasonText(s string) string { return reasonEscaper.Replace(smtp.ASCII(s, 120)) }
