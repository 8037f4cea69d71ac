package limits

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"sluice/conf"
	"sluice/lists"
	"sluice/policy"
)

// Config is the limits part of the file: the [[limit]] rules and the
// global trusted list. Where the counts live ([store]) is the wiring's.
type Config struct {
	Rules   []Rule   `toml:"limit"`
	Trusted []string `toml:"trusted"` // networks no rule applies to unless it says apply_to_trusted
}

// Rule is one [[limit]] as written in the file.
//
// What each count counts, and when: connections and concurrent at
// connect (a concurrent slot is held until the MTA connection closes),
// messages at MAIL FROM, recipients at each RCPT TO, bytes at end of
// message — the message as the client sent it, header and body (the MTA's
// own Received header is not in it).
//
// Keys: addresses are lower-cased whole (local part too: Alice@ and
// alice@ must not split a limit), without angle brackets or a trailing
// dot; strip_extension drops "+tag" from the local part (not inside a
// quoted local part). null_sender says what a rule counted per sender or
// sender_domain does with MAIL FROM:<> — "skip" (the default: the rule
// does not apply to bounces) or "count" (all bounces share the key "<>");
// rules keyed on anything else count bounces like any other mail.
//
// count_on = "accepted" takes a reservation at the stage and gives it
// back when the transaction is aborted or refused later, so pending
// reservations count against the limit while the message is in flight.
// An event sluice refuses adds nothing (leaky) unless strict = true.
//
// A words tag names the only values a string key takes; the config loader
// holds the file to it, with the line, before the rule is compiled.
type Rule struct {
	Name              string         `toml:"name"`
	Count             string         `toml:"count" words:"connections concurrent messages recipients bytes distinct"`
	Per               any            `toml:"per"`   // a key name or a list of them
	Max               int64          `toml:"max"`   // concurrent: open connections
	Rate              any            `toml:"rate"`  // "N/period" or a list of them
	Burst             int64          `toml:"burst"` // units at once; default N
	MaxRcptPerMessage int            `toml:"max_rcpt_per_message"`
	Action            *policy.Action `toml:"action"` // default tempfail
	Mode              policy.Mode    `toml:"mode"`   // enforce (default) | tag | dry-run
	Reply             *policy.Reply  `toml:"reply"`
	Delay             conf.Duration  `toml:"delay"`
	Except            []string       `toml:"except"` // client networks, sender addresses or domains, list names, sasl_user:NAME: what the rule skips
	IPv4Prefix        int            `toml:"ipv4_prefix"`
	IPv6Prefix        int            `toml:"ipv6_prefix"`
	StripExtension    bool           `toml:"strip_extension"`
	NullSender        string         `toml:"null_sender" words:"skip count"`
	CountOn           string         `toml:"count_on" words:"attempt accepted"`
	Strict            bool           `toml:"strict"`
	Final             bool           `toml:"final"`
	ApplyToTrusted    bool           `toml:"apply_to_trusted"`
	Match             Match          `toml:"match"`
	OnStoreError      string         `toml:"on_store_error" words:"allow tempfail local"` // default from [store]

	// Of is what count = "distinct" counts different values of.
	Of string `toml:"of" words:"rcpt rcpt_domain client_ip client_net helo"`
	// Overrides gives keys limits of their own: "file:/etc/sluice/quotas"
	// (a table, and runtime overrides) or "runtime" (runtime overrides
	// only, set with sluice counters limit).
	Overrides string `toml:"overrides"`
	// RestrictFor restricts a key that crosses the rule: "24h" (any
	// duration), "today" (until the next midnight in RestrictTimezone)
	// or "until_released". Its later events get RestrictAction.
	RestrictFor      string         `toml:"restrict_for"`
	RestrictAction   *policy.Action `toml:"restrict_action"` // default hold
	RestrictReply    *policy.Reply  `toml:"restrict_reply"`
	RestrictTimezone string         `toml:"restrict_timezone"` // default UTC
}

// Match narrows the sessions a rule applies to; every condition given must hold.
type Match struct {
	Listener      []string `toml:"listener"`      // {daemon_name} values
	Authenticated *bool    `toml:"authenticated"` // SMTP AUTH done or not
	Client        []string `toml:"client"`        // list names or inline networks
	SenderDomain  []string `toml:"sender_domain"` // list names or inline domains
	RcptDomain    []string `toml:"rcpt_domain"`   // list names or inline domains
	Helo          string   `toml:"helo"`          // regexp
	Sender        string   `toml:"sender"`        // regexp
	// DMARC is the DMARC result the message must have: pass, fail,
	// none, temperror or permerror. Known at end of message: a rule that
	// says it counts there.
	DMARC string `toml:"dmarc"`
}

// count is what a rule counts.
type count uint8

const (
	countConnections count = iota
	countConcurrent
	countMessages
	countRecipients
	countBytes
	countDistinct
)

var countNames = [...]string{"connections", "concurrent", "messages", "recipients", "bytes", "distinct"}

// stage is where an event of this kind happens; a distinct rule counts
// where what it counts and its key are known (see rule.stage).
func (c count) stage() policy.Stage {
	switch c {
	case countConnections, countConcurrent, countDistinct:
		return policy.StageConnect
	case countMessages:
		return policy.StageMail
	case countRecipients:
		return policy.StageRcpt
	}
	return policy.StageData
}

// tarpitLimits say what a tarpit delays, by what it counts.
var tarpitLimits = [...]string{countConnections: "every connection", countMessages: "every message", countRecipients: "every recipient", countBytes: "every message's end"}

// maxWindows bounds the rates of one rule: each window's index is one
// digit of its store key.
const maxWindows = 10

var ruleNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// DefaultTrusted is the trusted list when the file does not give one.
var DefaultTrusted = []string{"127.0.0.0/8", "::1"}

// Defaults fills what the file left out.
func (c *Config) Defaults() {
	if c.Trusted == nil {
		c.Trusted = DefaultTrusted
	}
}

// Validate checks the rules without reading list files; a rule that names
// a list is checked against the list names given.
func (c *Config) Validate(listNames map[string]bool) error {
	if _, err := trustedList(c.Trusted, nil, listNames); err != nil {
		return err
	}
	seen := make(map[string]bool)
	for i := range c.Rules {
		r := &c.Rules[i]
		if _, err := compileRule(r, nil, listNames); err != nil {
			return conf.In(err, "limit", conf.Index(i))
		}
		if seen[r.Name] {
			return conf.In(conf.Errorf("name", "rule %q is defined twice", r.Name), "limit", conf.Index(i))
		}
		seen[r.Name] = true
	}
	return nil
}

// FitSpan checks the rules, valid by Validate with the same list names,
// against the longest window a store counts exactly (rate times burst):
// span nanoseconds. bound says so in the error ("the Redis store counts
// windows of up to 52 days").
func (c *Config) FitSpan(listNames map[string]bool, span int64, bound string) error {
	for i := range c.Rules {
		r, err := compileRule(&c.Rules[i], nil, listNames)
		if err != nil {
			return conf.In(err, "limit", conf.Index(i))
		}
		for _, w := range r.windows {
			if w.burst > span/w.interval {
				return conf.In(conf.Errorf("rate", "%s: %s (rate times burst)", w.text, bound), "limit", conf.Index(i))
			}
		}
	}
	return nil
}

// UsesVerified reports whether any rule reads what DKIM (dkim) or DMARC
// (dmarc: the From domain, the result) verified.
func (c *Config) UsesVerified() (dkim, dmarc bool) {
	for i := range c.Rules {
		d, m := c.Rules[i].Verified()
		dkim, dmarc = dkim || d, dmarc || m
	}
	return dkim, dmarc
}

// Verified reports whether the rule reads what DKIM (dkim_domain) or
// DMARC (from_domain, match.dmarc) verified.
func (r *Rule) Verified() (dkim, dmarc bool) {
	names, _ := perNames(r.Per)
	for _, n := range names {
		dkim = dkim || n == dimNames[dimDKIMDomain]
		dmarc = dmarc || n == dimNames[dimFromDomain]
	}
	return dkim, dmarc || r.Match.DMARC != ""
}

// CheckOnStoreError validates an on_store_error value.
func CheckOnStoreError(s string) error {
	_, err := parseStoreErrorPolicy(s)
	return err
}

// rule is a compiled Rule.
type rule struct {
	name     string
	stage    policy.Stage // where it counts: its count's stage, or end of message for what only that knows
	prefix   string       // "name:0:", the start of its first window's store keys
	blocking bool         // a denial refuses the event: set by New, from the global mode
	answers  bool         // the rule may refuse or pause its event: set by New, from the global mode
	count    count
	of       value        // distinct: what it counts different values of
	over     *overrides   // limits of their own for some keys; nil: none
	own      *limitSpec   // the rule's own limit, as overrides give theirs
	restrict *restriction // what a crossing does beyond the rule's action; nil: nothing
	keyer    keyer
	windows  []window
	max      int64 // concurrent slots
	maxRcpt  int
	action   policy.Action
	mode     policy.Mode
	reply    *policy.Reply
	delay    time.Duration
	except   *lists.List
	// exceptUsers are the SASL logins of except (sasl_user:NAME), lower
	// case.
	exceptUsers map[string]bool
	// tarpit: action delay and no limit, so every event the rule applies
	// to is delayed (a class's pause, Postfix's sleep).
	tarpit   bool
	accepted bool // count_on = accepted
	strict   bool
	final    bool
	trusted  bool // apply_to_trusted
	match    matcher
	onError  storeErrorPolicy
	limit    string // the limit as people read it: "10/1h", "3 at once"
	// rcptLimit is the max_rcpt_per_message cap as people read it.
	rcptLimit string
}

// compileRule checks a Rule and builds its compiled form. With set nil,
// list names are only checked for existence in names. Its overrides
// table is not read: see loadRule.
func compileRule(r *Rule, set *lists.Set, names map[string]bool) (*rule, error) {
	return buildRule(r, set, names, false)
}

// loadRule is compileRule that reads the rule's overrides table too.
func loadRule(r *Rule, set *lists.Set, names map[string]bool) (*rule, error) {
	return buildRule(r, set, names, true)
}

func buildRule(r *Rule, set *lists.Set, names map[string]bool, load bool) (*rule, error) {
	if !ruleNameRE.MatchString(r.Name) {
		if r.Name == "" {
			return nil, conf.Errorf("name", "every [[limit]] needs a name")
		}
		return nil, conf.Errorf("name", "%q: use letters, digits, '-', '_' or '.'", r.Name)
	}
	c := &rule{name: r.Name, prefix: r.Name + ":0:"}
	switch {
	case r.Count != "":
		found := false
		for i, n := range countNames {
			if n == r.Count {
				c.count, found = count(i), true
			}
		}
		if !found {
			return nil, conf.Errorf("count", "unknown count %q (want connections, concurrent, messages, recipients, bytes or distinct)", r.Count)
		}
	case r.MaxRcptPerMessage > 0:
		c.count = countRecipients
	default:
		return nil, conf.Errorf("count", "missing: what does rule %q count (connections, concurrent, messages, recipients, bytes or distinct)?", r.Name)
	}
	c.stage = c.count.stage()
	if err := c.compileOf(r); err != nil {
		return nil, err
	}
	if err := c.compileLimit(r); err != nil {
		return nil, err
	}
	if err := c.compileKey(r); err != nil {
		return nil, err
	}
	c.own = &limitSpec{windows: c.windows, text: c.limit}
	if err := c.compileOverrides(r, load); err != nil {
		return nil, conf.In(err, "overrides")
	}
	if err := c.compileRestrict(r); err != nil {
		return nil, err
	}
	if err := c.compileAction(r); err != nil {
		return nil, err
	}
	if len(r.Except) > 0 {
		if err := c.compileExcept(r.Except, set, names); err != nil {
			return nil, conf.In(err, "except")
		}
	}
	switch r.CountOn {
	case "", "attempt":
	case "accepted":
		if c.count != countMessages && c.count != countRecipients {
			if c.count == countDistinct {
				return nil, conf.Errorf("count_on", "a distinct rule counts the values it sees, not messages: it takes no count_on")
			}
			return nil, conf.Errorf("count_on", "\"accepted\" applies to messages and recipients; %s are counted when they happen", countNames[c.count])
		}
		c.accepted = true
	default:
		return nil, conf.Errorf("count_on", "unknown value %q (want attempt or accepted)", r.CountOn)
	}
	c.strict, c.final, c.trusted = r.Strict, r.Final, r.ApplyToTrusted
	if r.Match.DMARC != "" {
		if err := c.countAtEnd("match.dmarc"); err != nil {
			return nil, conf.In(err, "match")
		}
	}
	m, err := compileMatch(&r.Match, c.stage, set, names)
	if err != nil {
		return nil, conf.In(err, "match")
	}
	c.match = m
	if c.onError, err = parseStoreErrorPolicy(r.OnStoreError); err != nil {
		return nil, conf.In(err, "on_store_error")
	}
	return c, nil
}

// compileExcept reads a rule's except: names of [lists], inline networks,
// addresses and domains, and SASL logins written sasl_user:NAME. A bare
// word must name a list, as in trusted and match.client: a list that
// was never defined must not pass for a login that never comes.
func (c *rule) compileExcept(entries []string, set *lists.Set, names map[string]bool) error {
	var rest []string
	for i, e := range entries {
		user, ok := strings.CutPrefix(e, "sasl_user:")
		if !ok {
			rest = append(rest, e)
			continue
		}
		if user == "" {
			return conf.Errorf(conf.Index(i), "sasl_user: names no login")
		}
		if c.exceptUsers == nil {
			c.exceptUsers = make(map[string]bool)
		}
		c.exceptUsers[strings.ToLower(user)] = true
	}
	for i, e := range entries {
		if !names[e] && e != "" && !strings.ContainsAny(e, ".:/@") {
			return conf.Errorf(conf.Index(i), "no list named %q in [lists] (an inline entry is a network, an address, a domain with a dot, or sasl_user:NAME for a SASL login)", e)
		}
	}
	if len(rest) == 0 {
		return nil
	}
	l, err := namedOrInline(c.name+".except", rest, set, names, true)
	if err != nil {
		return err
	}
	c.except = l
	return nil
}

// hasExcept reports whether the rule has an except of any kind.
func (c *rule) hasExcept() bool { return c.except != nil || len(c.exceptUsers) > 0 }

func (c *rule) compileLimit(r *Rule) error {
	if r.Action != nil && *r.Action == policy.ActionDelay && r.Rate == nil && r.Max == 0 && r.MaxRcptPerMessage == 0 && c.count != countConcurrent {
		// No limit: a tarpit, which delays every event it applies to.
		if r.Burst != 0 {
			return conf.Errorf("burst", "a rule with no rate has no burst (action delay with no rate delays every event)")
		}
		c.tarpit, c.limit = true, tarpitLimits[c.count]
		return nil
	}
	if c.count == countConcurrent {
		if r.Rate != nil {
			return conf.Errorf("rate", "a concurrent limit takes max, not rate")
		}
		if r.Max <= 0 {
			return conf.Errorf("max", "a concurrent limit needs max > 0 (open connections at once)")
		}
		c.max = r.Max
		c.limit = fmt.Sprintf("%d at once", r.Max)
		return nil
	}
	if r.Max != 0 {
		return conf.Errorf("max", "max is for count = \"concurrent\"; %s take rate = \"N/period\"", countNames[c.count])
	}
	if c.count == countDistinct {
		return c.compileDistinctLimit(r)
	}
	var rates []string
	switch v := r.Rate.(type) {
	case nil:
	case string:
		rates = []string{v}
	case []any:
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return conf.Errorf("rate", "each rate is a string like \"30/1m\"")
			}
			rates = append(rates, s)
		}
		if len(rates) == 0 {
			return conf.Errorf("rate", "empty list")
		}
	default:
		return conf.Errorf("rate", "a rate is a string like \"120/1m\" or a list of them")
	}
	if r.MaxRcptPerMessage < 0 {
		return conf.Errorf("max_rcpt_per_message", "must not be negative")
	}
	if r.MaxRcptPerMessage > 0 {
		if c.count != countRecipients {
			return conf.Errorf("max_rcpt_per_message", "applies to count = \"recipients\"")
		}
		c.maxRcpt = r.MaxRcptPerMessage
		c.rcptLimit = fmt.Sprintf("%d recipients a message", r.MaxRcptPerMessage)
	}
	if len(rates) == 0 {
		if c.maxRcpt > 0 {
			c.limit = c.rcptLimit
			return nil
		}
		return conf.Errorf("rate", "missing: how many %s per period (e.g. rate = \"120/1m\")?", countNames[c.count])
	}
	if r.Burst < 0 {
		return conf.Errorf("burst", "must not be negative")
	}
	if len(rates) > maxWindows {
		return conf.Errorf("rate", "%d windows; a rule takes at most %d", len(rates), maxWindows)
	}
	if r.Burst > 0 && len(rates) > 1 {
		return conf.Errorf("burst", "a rule with several windows takes each window's N as its burst")
	}
	for _, s := range rates {
		w, err := parseRate(s, c.count == countBytes)
		if err != nil {
			return conf.Errorf("rate", "%v", err)
		}
		if r.Burst > 0 {
			w.burst = r.Burst
		}
		if w.interval > (1<<62)/w.burst {
			return conf.Errorf("burst", "%d at %s overflows the counter", w.burst, s)
		}
		c.windows = append(c.windows, w)
	}
	if c.limit == "" {
		c.limit = rates[0]
		for _, s := range rates[1:] {
			c.limit += "," + s
		}
	}
	return nil
}

// dimWords names the keys a rule may count per, for errors.
var dimWords = strings.Join(dimNames[:len(dimNames)-1], ", ") + " or " + dimNames[len(dimNames)-1]

// countAtEnd moves a rule that reads what only the end of the message
// knows (what DKIM and DMARC verified) there: messages and bytes can be
// counted then, the rest happen before.
func (c *rule) countAtEnd(what string) error {
	if c.count != countMessages && c.count != countBytes {
		return fmt.Errorf("%s is known at end of message, where only messages and bytes are counted, not %s", what, countNames[c.count])
	}
	c.stage = policy.StageData
	return nil
}

// perNames reads per: a key name or a list of them.
func perNames(per any) ([]string, error) {
	switch v := per.(type) {
	case nil:
		return nil, nil
	case string:
		return []string{v}, nil
	case []any:
		var names []string
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, conf.Errorf("per", "each key is a word in quotes (%s)", dimWords)
			}
			names = append(names, s)
		}
		if len(names) == 0 {
			return nil, conf.Errorf("per", "empty list")
		}
		return names, nil
	}
	return nil, conf.Errorf("per", "want a key name in quotes or a list of them (%s)", dimWords)
}

func (c *rule) compileKey(r *Rule) error {
	names, err := perNames(r.Per)
	if err != nil {
		return err
	}
	if names == nil {
		if c.maxRcpt > 0 && len(c.windows) == 0 || c.tarpit {
			return nil // a per-message cap or a tarpit needs no key
		}
		return conf.Errorf("per", "missing: what is counted per (client_ip, sender, sasl_user, ...)?")
	}
	k := &c.keyer
	for _, n := range names {
		d, err := parseDim(n)
		if err != nil {
			return conf.Errorf("per", "%v", err)
		}
		for _, prev := range k.dims {
			if prev == d {
				return conf.Errorf("per", "%s given twice", n)
			}
		}
		if d.stage() == policy.StageData {
			if err := c.countAtEnd(n); err != nil {
				return conf.In(err, "per")
			}
		} else if c.count == countDistinct {
			c.stage = max(c.stage, d.stage()) // counted once the key is known too
		} else if d.stage() > c.count.stage() || c.count == countBytes && (d == dimRcpt || d == dimRcptDomain) {
			return conf.Errorf("per", "%s is not known when %s are counted (at %s)", n, countNames[c.count], c.count.stage())
		}
		k.dims = append(k.dims, d)
		label := d.String() + ":"
		if len(k.labels) > 0 {
			label = "," + label
		}
		k.labels = append(k.labels, label)
	}
	k.ipv4Prefix, k.ipv6Prefix = 32, 64
	if r.IPv4Prefix != 0 {
		if r.IPv4Prefix < 1 || r.IPv4Prefix > 32 {
			return conf.Errorf("ipv4_prefix", "must be 1..32")
		}
		k.ipv4Prefix = r.IPv4Prefix
	}
	if r.IPv6Prefix != 0 {
		if r.IPv6Prefix < 1 || r.IPv6Prefix > 128 {
			return conf.Errorf("ipv6_prefix", "must be 1..128")
		}
		k.ipv6Prefix = r.IPv6Prefix
	}
	k.stripExtension = r.StripExtension
	if r.StripExtension && !k.has(dimSender) && !k.has(dimRcpt) && c.of != ofRcpt {
		return conf.Errorf("strip_extension", "applies to rules counted per sender or rcpt, or counting different rcpt")
	}
	if (r.IPv4Prefix != 0 || r.IPv6Prefix != 0) && !k.has(dimClientIP) {
		return conf.Errorf(map[bool]string{true: "ipv4_prefix", false: "ipv6_prefix"}[r.IPv4Prefix != 0], "applies to rules counted per client_ip")
	}
	// The null sender has no address and no domain: only a key made of
	// them must say whether a bounce skips the rule or counts as "<>". A
	// rule per client_ip (or sasl_user...) counts bounces like any other
	// mail; skipping them there would let anyone walk around it with
	// MAIL FROM:<>.
	switch r.NullSender {
	case "", "skip":
	case "count":
		k.countNull = true
	default:
		return conf.Errorf("null_sender", "unknown value %q (want skip or count)", r.NullSender)
	}
	if r.NullSender != "" && !k.has(dimSender) && !k.has(dimSenderDomain) {
		return conf.Errorf("null_sender", "applies to rules counted per sender or sender_domain; this rule counts bounces like any other mail")
	}
	return nil
}

func (c *rule) compileAction(r *Rule) error {
	c.action = policy.ActionTempfail
	if r.Action != nil {
		if *r.Action == policy.ActionNone {
			return conf.Errorf("action", "\"none\" would make the rule do nothing; use mode = \"dry-run\" to only log")
		}
		c.action = *r.Action
	}
	c.mode = r.Mode
	if r.Reply != nil {
		if err := r.Reply.Fits(c.action); err != nil {
			return conf.Errorf("reply", "%v", err)
		}
		c.reply = r.Reply
	}
	if c.action == policy.ActionDelay {
		if r.Delay <= 0 {
			return conf.Errorf("delay", "action delay needs delay = \"5s\" (how long to wait before answering)")
		}
		c.delay = r.Delay.D()
	} else if r.Delay != 0 {
		return conf.Errorf("delay", "only for action = \"delay\"")
	}
	return nil
}

// matcher is a compiled Match.
type matcher struct {
	listeners     []string
	authenticated *bool
	client        []*lists.List // named lists, then the inline entries as one list
	senderDomain  []*lists.List
	rcptDomain    []*lists.List
	helo, sender  *regexp.Regexp
	dmarc         string
}

// has reports whether the key includes dimension d.
func (k *keyer) has(d dim) bool {
	for _, x := range k.dims {
		if x == d {
			return true
		}
	}
	return false
}

// compileMatch compiles a rule's match for a rule that counts at stage
// at. Every condition must be decidable there: a HELO is not known at
// connect, nor a sender before MAIL FROM, and only a rule that counts
// recipients sees one recipient.
func compileMatch(m *Match, at policy.Stage, set *lists.Set, names map[string]bool) (matcher, error) {
	var c matcher
	for i, l := range m.Listener {
		if l == "" {
			return c, conf.In(conf.Errorf(conf.Index(i), "empty listener name"), "listener")
		}
	}
	c.listeners = m.Listener
	c.authenticated = m.Authenticated
	var err error
	if c.client, err = listRefs("client", m.Client, set, names); err != nil {
		return c, err
	}
	if c.senderDomain, err = listRefs("sender_domain", m.SenderDomain, set, names); err != nil {
		return c, err
	}
	if c.rcptDomain, err = listRefs("rcpt_domain", m.RcptDomain, set, names); err != nil {
		return c, err
	}
	if c.helo, err = compilePattern("helo", m.Helo); err != nil {
		return c, err
	}
	if c.sender, err = compilePattern("sender", m.Sender); err != nil {
		return c, err
	}
	switch m.DMARC {
	case "", "pass", "fail", "none", "temperror", "permerror":
		c.dmarc = m.DMARC
	default:
		return c, conf.Errorf("dmarc", "unknown result %q (want pass, fail, none, temperror or permerror)", m.DMARC)
	}
	for _, need := range []struct {
		given bool
		key   string
		st    policy.Stage
	}{
		{m.Helo != "", "helo", policy.StageHelo},
		{m.Authenticated != nil, "authenticated", policy.StageMail},
		{len(m.SenderDomain) > 0, "sender_domain", policy.StageMail},
		{m.Sender != "", "sender", policy.StageMail},
	} {
		if need.given && need.st > at {
			return c, conf.Errorf(need.key, "not known at %s, where this rule counts (it is known from %s on)", at, need.st)
		}
	}
	if len(m.RcptDomain) > 0 && at != policy.StageRcpt {
		return c, conf.Errorf("rcpt_domain", "only a rule that counts recipients sees one recipient; this one counts at %s", at)
	}
	return c, nil
}

// compilePattern compiles a match regexp. Like Postfix's regexp tables,
// it ignores case: HELO names and addresses are case-insensitive in
// practice, and a pattern that Alice@ escapes is a hole. (?-i) turns
// that off.
func compilePattern(key, pattern string) (*regexp.Regexp, error) {
	if pattern == "" {
		return nil, nil
	}
	re, err := regexp.Compile("(?i)" + pattern)
	if err != nil {
		return nil, conf.Errorf(key, "bad regexp %q: %s", pattern, lists.RegexpWhy(err))
	}
	return re, nil
}

// listRefs resolves entries that name a list; the rest form one inline
// list. A bare word that names no list is an error, not a domain that
// never matches: it is almost always a list name mistyped or not defined.
func listRefs(key string, entries []string, set *lists.Set, names map[string]bool) ([]*lists.List, error) {
	var out []*lists.List
	var inline []string
	for i, e := range entries {
		if names[e] {
			if set != nil {
				out = append(out, set.Get(e))
			}
			continue
		}
		if e != "" && !strings.ContainsAny(e, ".:/@") {
			return nil, conf.In(conf.Errorf(conf.Index(i), "no list named %q in [lists] (an inline entry is a network, an address, a domain with a dot, or a /regexp/)", e), key)
		}
		inline = append(inline, e)
	}
	if len(inline) > 0 {
		l, err := lists.Parse(key+" (inline)", inline, nil)
		if err != nil {
			return nil, conf.In(fmt.Errorf("%w (or name a list defined in [lists])", err), key)
		}
		out = append(out, l)
	}
	return out, nil
}

// condition names one of a Match's conditions.
type condition uint8

const (
	condNone condition = iota
	condListener
	condAuthenticated
	condClient
	condSenderDomain
	condRcptDomain
	condHelo
	condSender
	condDMARC
)

var conditionKeys = [...]string{"", "listener", "authenticated", "client", "sender_domain", "rcpt_domain", "helo", "sender", "dmarc"}

func (m *matcher) matches(f *policy.Facts) bool { return m.failed(f) == condNone }

// failed returns the first condition f does not meet, or condNone when
// every condition given holds. It allocates nothing.
func (m *matcher) failed(f *policy.Facts) condition {
	if len(m.listeners) > 0 && !slices.Contains(m.listeners, f.Listener) {
		return condListener
	}
	if m.authenticated != nil && *m.authenticated != f.Authenticated() {
		return condAuthenticated
	}
	if m.client != nil && !anyList(m.client, func(l *lists.List) bool { return l.ContainsIP(f.ClientIP) || l.MatchHost(f.ClientName) }) {
		return condClient
	}
	if m.senderDomain != nil && !anyList(m.senderDomain, func(l *lists.List) bool { return l.MatchDomain(domainOf(trimPath(f.Sender))) }) {
		return condSenderDomain
	}
	if m.rcptDomain != nil && !anyList(m.rcptDomain, func(l *lists.List) bool { return l.MatchDomain(domainOf(trimPath(f.Rcpt))) }) {
		return condRcptDomain
	}
	if m.helo != nil && !m.helo.MatchString(f.Helo) {
		return condHelo
	}
	if m.sender != nil && !m.sender.MatchString(trimPath(f.Sender)) {
		return condSender
	}
	if m.dmarc != "" && m.dmarc != f.DMARC {
		return condDMARC
	}
	return condNone
}

func anyList(ls []*lists.List, f func(*lists.List) bool) bool {
	for _, l := range ls {
		if f(l) {
			return true
		}
	}
	return false
}

// storeErrorPolicy is what a rule does when the store cannot answer.
type storeErrorPolicy uint8

const (
	onErrorDefault storeErrorPolicy = iota // the [store] default
	onErrorAllow
	onErrorTempfail
	onErrorLocal
)

func parseStoreErrorPolicy(s string) (storeErrorPolicy, error) {
	switch s {
	case "":
		return onErrorDefault, nil
	case "allow":
		return onErrorAllow, nil
	case "tempfail":
		return onErrorTempfail, nil
	case "local":
		return onErrorLocal, nil
	}
	return 0, errors.New("want allow, tempfail or local")
}

// trustedList compiles the global trusted networks: inline networks, or
// names of lists in [lists] (trusted = ["mynetworks"]).
func trustedList(entries []string, set *lists.Set, names map[string]bool) (*lists.List, error) {
	l, err := namedOrInline("trusted", entries, set, names, true)
	if err != nil {
		return nil, conf.In(err, "trusted")
	}
	return l, nil
}

// namedOrInline compiles entries that name lists in [lists] and inline
// entries into one list. With bareIsList, a bare word (no dot, colon,
// slash or @) that names no list is an error: where only networks belong
// it can only be a list name mistyped or not defined.
func namedOrInline(name string, entries []string, set *lists.Set, names map[string]bool, bareIsList bool) (*lists.List, error) {
	var inline []string
	var named []*lists.List
	for i, e := range entries {
		switch {
		case names[e]:
			named = append(named, set.Get(e))
		case bareIsList && e != "" && !strings.ContainsAny(e, ".:/@"):
			return nil, conf.Errorf(conf.Index(i), "no list named %q in [lists] (an inline entry is a network or an address)", e)
		default:
			inline = append(inline, e)
		}
	}
	l, err := lists.Parse(name, inline, nil)
	if err != nil {
		return nil, err
	}
	if len(named) == 0 {
		return l, nil
	}
	return lists.Union(name, append(named, l)...), nil
}

// Trusted reports whether ip is on the compiled trusted list.
func isTrusted(l *lists.List, ip netip.Addr) bool { return l.ContainsIP(ip) }
