package limits

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"sluice/limits/counter"
	"sluice/policy"
)

// What an admin asks about counters: a dimension key as sluice logs it
// ("sender:alice@example.org", "client_ip:192.0.2.7",
// "sasl_user:bob,rcpt_domain:gmail.com") names the store keys of every rule
// that counts per those dimensions ("msgs-per-sender:0:sender:alice@...",
// one per window). The methods below map one to the other, so the admin
// never needs to know how keys are laid out.

// Counter is one store key of one rule, as an admin reads it.
type Counter struct {
	Rule       string        // rule name
	Limit      string        // the window as written ("10/1h") or "20 at once"
	Key        string        // dimension key
	StoreKey   string        // the key in the store
	Concurrent bool          // slots held at once rather than a rate
	Count      int64         // units in the bucket, or slots held
	Max        int64         // burst, or slots
	RetryAfter time.Duration // until one more is admitted; 0 when it is now
	Known      bool          // the rule is in the config in force
	Distinct   bool          // different values within a window rather than a rate
	From       string        // where the limit comes from: "rule", "table FILE:LINE", "runtime, set by ..."
}

// ErrNoRule is returned when no rule counts per the dimensions of a key.
var ErrNoRule = errors.New("no rule counts per")

// KeyError is a key or rule name that names no counter: the asker's
// mistake, not the store's.
type KeyError struct{ Err error }

func (e *KeyError) Error() string { return e.Err.Error() }
func (e *KeyError) Unwrap() error { return e.Err }

// Show reads every counter of key, for one rule or all.
func (e *Engine) Show(ctx context.Context, key, rule string) ([]Counter, error) {
	e.syncRuntime(ctx)
	cs, reqs, err := e.counters(key, rule)
	if err != nil {
		return nil, err
	}
	if err := e.store.Do(ctx, reqs); err != nil {
		return nil, fmt.Errorf("read counters of %s: %w", key, err)
	}
	for i := range cs {
		cs[i].Count, cs[i].RetryAfter = reqs[i].Level, reqs[i].RetryAfter
	}
	return cs, nil
}

// Reset forgets every counter of key, for one rule or all, and returns
// them as they were.
func (e *Engine) Reset(ctx context.Context, key, rule string) ([]Counter, error) {
	cs, err := e.Show(ctx, key, rule)
	if err != nil {
		return nil, err
	}
	keys := make([][]byte, len(cs))
	for i := range cs {
		keys[i] = []byte(cs[i].StoreKey)
	}
	if err := counter.Reset(ctx, e.store, keys); err != nil {
		return nil, fmt.Errorf("reset counters of %s: %w", key, err)
	}
	return cs, nil
}

// Allow exempts key from every rule until the given time (a zero time
// lifts the exemption), and returns the dimension keys exempted: one per
// way the rules normalise it. The exemption is in the store, so it reaches
// every host sharing it and expires by itself.
func (e *Engine) Allow(ctx context.Context, key string, until time.Time) ([]string, error) {
	cs, _, err := e.counters(key, "")
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, c := range cs {
		if !slices.Contains(keys, c.Key) {
			keys = append(keys, c.Key)
		}
	}
	for _, k := range keys {
		if err := counter.SetAllow(ctx, e.store, k, until); err != nil {
			return nil, fmt.Errorf("exempt %s: %w", k, err)
		}
	}
	// Take effect now on this host rather than at the next refresh.
	if m, err := counter.Allows(ctx, e.store); err == nil {
		e.setExemptions(m)
	}
	return keys, nil
}

// Exemptions lists the exemptions in force.
func (e *Engine) Exemptions(ctx context.Context) (map[string]time.Time, error) {
	return counter.Allows(ctx, e.store)
}

// Top lists up to n counters closest to or over their limit, fullest
// first, for one rule or all.
func (e *Engine) Top(ctx context.Context, rule string, n int) ([]Counter, error) {
	ask := n
	if rule != "" {
		ask = maxTop // the store cannot filter by rule: ask for all it names
	}
	hot, err := counter.Hot(ctx, e.store, ask)
	if err != nil {
		return nil, fmt.Errorf("list hot counters: %w", err)
	}
	var out []Counter
	for _, h := range hot {
		c := e.describe(h)
		if rule != "" && c.Rule != rule {
			continue
		}
		out = append(out, c)
		if n >= 0 && len(out) >= n {
			break
		}
	}
	return out, nil
}

// maxTop is the most hot keys a store is asked for at once.
const maxTop = 10_000

// describe names a hot store key "rule:w:dimension".
func (e *Engine) describe(h counter.HotKey) Counter {
	c := Counter{StoreKey: h.Key, Key: h.Key, Concurrent: h.Kind == counter.KindConcurrent,
		Count: h.Level, Max: h.Burst, RetryAfter: h.RetryAfter}
	name, rest, ok := strings.Cut(h.Key, ":")
	if !ok {
		return c
	}
	win, dimKey, ok := strings.Cut(rest, ":")
	if !ok {
		return c
	}
	c.Rule, c.Key = name, dimKey
	r := e.rule(name)
	if r == nil {
		return c
	}
	c.Known = true
	switch {
	case win == "c", win == "d":
		c.Limit = r.limit
		c.Distinct = win == "d"
	case len(win) == 1 && win[0] >= '0' && int(win[0]-'0') < len(r.windows):
		c.Limit = r.windows[win[0]-'0'].text
	}
	return c
}

func (e *Engine) rule(name string) *rule {
	for _, r := range e.rules {
		if r.name == name {
			return r
		}
	}
	return nil
}

// counters lists the store keys of key for the rules that count per its
// dimensions (only rule, when given), each with a peek request.
func (e *Engine) counters(key, rule string) ([]Counter, []counter.Request, error) {
	dims, f, err := parseDimKey(key)
	if err != nil {
		return nil, nil, &KeyError{err}
	}
	var cs []Counter
	var reqs []counter.Request
	found := false
	for _, r := range e.rules {
		if rule != "" && r.name != rule {
			continue
		}
		if !sameDims(r.keyer.dims, dims) {
			continue
		}
		found = true
		dk, ok := r.keyer.appendKey(nil, &f)
		if !ok {
			continue
		}
		base := Counter{Rule: r.name, Key: string(dk), Known: true, From: "rule"}
		if r.count == countConcurrent {
			c := base
			c.Concurrent, c.Limit, c.Max, c.StoreKey = true, r.limit, r.max, r.name+":c:"+string(dk)
			cs = append(cs, c)
			reqs = append(reqs, counter.Request{Key: []byte(c.StoreKey), Kind: counter.KindConcurrent, Op: counter.OpPeek, Burst: r.max, Cost: 1})
			continue
		}
		sp := r.own
		if r.over != nil {
			var w where
			sp = e.limitFor(r, &f, nil, dk, &w)
			base.From = w.String()
		}
		windows := sp.windows
		if sp.unlimited || sp.zero {
			// What the key used of the rule's own windows, beside the
			// limit it has instead.
			windows = r.windows[:1]
		}
		for i, w := range windows {
			c := base
			c.Limit, c.Max = w.text, w.burst
			if sp.unlimited || sp.zero {
				c.Limit = sp.text
			}
			if r.count == countDistinct {
				c.Distinct, c.Max = true, w.n
				c.StoreKey = r.name + ":d:" + string(dk)
				cs = append(cs, c)
				reqs = append(reqs, counter.Request{Key: []byte(c.StoreKey), Kind: counter.KindDistinct, Op: counter.OpPeek, Interval: int64(w.period), Burst: w.n, Cost: 1})
				continue
			}
			c.StoreKey = fmt.Sprintf("%s:%d:%s", r.name, i, dk)
			cs = append(cs, c)
			reqs = append(reqs, counter.Request{Key: []byte(c.StoreKey), Kind: counter.KindRate, Op: counter.OpPeek, Interval: w.interval, Burst: w.burst, Cost: 1})
		}
	}
	if !found {
		if rule != "" && e.rule(rule) == nil {
			return nil, nil, &KeyError{fmt.Errorf("no rule named %q in the config in force", rule)}
		}
		return nil, nil, &KeyError{fmt.Errorf("%w %s (the rules count per: %s)", ErrNoRule, dimList(dims), e.dimsInUse())}
	}
	return cs, reqs, nil
}

func sameDims(a, b []dim) bool {
	if len(a) != len(b) || len(a) == 0 {
		return false
	}
	for _, d := range a {
		if !slices.Contains(b, d) {
			return false
		}
	}
	return true
}

func dimList(ds []dim) string {
	names := make([]string, len(ds))
	for i, d := range ds {
		names[i] = d.String()
	}
	return strings.Join(names, "+")
}

func (e *Engine) dimsInUse() string {
	var seen []string
	for _, r := range e.rules {
		if len(r.keyer.dims) == 0 {
			continue
		}
		if s := dimList(r.keyer.dims); !slices.Contains(seen, s) {
			seen = append(seen, s)
		}
	}
	if len(seen) == 0 {
		return "none"
	}
	return strings.Join(seen, ", ")
}

// parseDimKey reads a dimension key as sluice logs it into the facts that
// would produce it: "name:value" parts joined by ',' (a ',' inside a value
// is kept unless a dimension name and ':' follow it).
func parseDimKey(key string) ([]dim, policy.Facts, error) {
	var f policy.Facts
	var dims []dim
	if strings.TrimSpace(key) == "" {
		return nil, f, errors.New("empty key (want e.g. sender:alice@example.org or client_ip:192.0.2.7)")
	}
	rest := key
	for rest != "" {
		name, v, ok := strings.Cut(rest, ":")
		if !ok {
			return nil, f, fmt.Errorf("key %q: want name:value, e.g. sender:alice@example.org", key)
		}
		d, err := parseDim(name)
		if err != nil {
			return nil, f, fmt.Errorf("key %q: %w", key, err)
		}
		if slices.Contains(dims, d) {
			return nil, f, fmt.Errorf("key %q: %s given twice", key, name)
		}
		value := v
		rest = ""
		for i := 0; i < len(v); i++ {
			if v[i] == ',' && startsWithDim(v[i+1:]) {
				value, rest = v[:i], v[i+1:]
				break
			}
		}
		if value == "" {
			return nil, f, fmt.Errorf("key %q: %s has no value", key, name)
		}
		if err := setFact(&f, d, value); err != nil {
			return nil, f, fmt.Errorf("key %q: %w", key, err)
		}
		dims = append(dims, d)
	}
	return dims, f, nil
}

func startsWithDim(s string) bool {
	for _, n := range dimNames {
		if strings.HasPrefix(s, n+":") {
			return true
		}
	}
	return false
}

func setFact(f *policy.Facts, d dim, v string) error {
	switch d {
	case dimClientIP:
		if p, err := netip.ParsePrefix(v); err == nil {
			f.ClientIP = p.Addr()
			return nil
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			return fmt.Errorf("client_ip %q is not an address or network", v)
		}
		f.ClientIP = a
	case dimSender:
		f.Sender = strings.TrimSuffix(strings.TrimPrefix(v, "<"), ">") // "<>" is the null sender
	case dimSenderDomain:
		if f.Sender == "" && v != "<>" {
			f.Sender = "postmaster@" + v
		}
	case dimRcpt:
		f.Rcpt = v
	case dimRcptDomain:
		if f.Rcpt == "" {
			f.Rcpt = "postmaster@" + v
		}
	case dimSASLUser:
		f.SASLUser = v
	case dimHelo:
		f.Helo = v
	case dimListener:
		f.Listener = v
	case dimDKIMDomain:
		f.DKIMDomains = []string{v}
	case dimFromDomain:
		f.FromDomain = v
	}
	return nil
}
