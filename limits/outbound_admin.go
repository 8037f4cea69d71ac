package limits

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"sluice/limits/counter"
)

// RuntimeLimit is a runtime override as an admin reads it.
type RuntimeLimit struct {
	Rule  string
	Key   string // dimension key, or a domain key ("sasl_user:@example.com")
	Limit string // "5/1h,50/1d", "unlimited", "0"
	By    string
	At    time.Time
	Until time.Time // zero: until removed
	Known bool      // the rule is in the config in force, with overrides
}

// OverrideTable is a rule's overrides file as loaded.
type OverrideTable struct {
	Rule    string
	Path    string
	Entries int
}

// Restricted is a restricted key as an admin reads it.
type Restricted struct {
	Rule  string
	Key   string // dimension key
	Since time.Time
	Until time.Time // zero: until released
	Count int64     // the count that crossed the limit
	Limit string    // the rule's limit, when it is in the config in force
	Grace bool      // released: not restricted again before Until
	Held  []string  // queue ids of messages held meanwhile
	Known bool
	// GraceUntil is, for a key just released, when it may be restricted
	// again.
	GraceUntil time.Time
}

// overrideRule finds a rule that takes runtime overrides.
func (e *Engine) overrideRule(name string) (*rule, error) {
	r := e.rule(name)
	switch {
	case r == nil:
		return nil, &KeyError{fmt.Errorf("no rule named %q in the config in force", name)}
	case r.over == nil:
		return nil, &KeyError{fmt.Errorf("rule %q takes no overrides: give it overrides = \"runtime\" (or a \"file:\" table)", name)}
	}
	return r, nil
}

// Limit gives key a limit of its own under rule for d (0: until
// Unlimit), from the engine's clock, in the store, so that every host sharing it
// applies it at once. spec is "RATE[, RATE...]", "unlimited" or "0"; by
// says who set it.
func (e *Engine) Limit(ctx context.Context, ruleName, key, spec string, d time.Duration, by string) (RuntimeLimit, error) {
	now := e.now()
	var until time.Time
	switch {
	case d < 0:
		return RuntimeLimit{}, &KeyError{errors.New("the limit would end before it starts")}
	case d > 0:
		until = now.Add(d)
	}
	return e.SetLimit(ctx, ruleName, key, spec, now, until, by)
}

// SetLimit is Limit with when it was set and when it ends (zero: until
// Unlimit) given: for a copy of another sluice's runtime limits (sluice
// explain -admin).
func (e *Engine) SetLimit(ctx context.Context, ruleName, key, spec string, at, until time.Time, by string) (RuntimeLimit, error) {
	r, err := e.overrideRule(ruleName)
	if err != nil {
		return RuntimeLimit{}, err
	}
	dk, err := r.normalKey(key)
	if err != nil {
		return RuntimeLimit{}, &KeyError{err}
	}
	sp, err := r.parseSpec(spec)
	if err != nil {
		return RuntimeLimit{}, &KeyError{fmt.Errorf("limit %q: %w", spec, err)}
	}
	okey := r.name + ":o:" + string(dk)
	value := encodeRuntime(sp.text, at, by)
	if err := counter.SetOverride(ctx, e.store, []byte(okey), value, until); err != nil {
		return RuntimeLimit{}, fmt.Errorf("set the limit of %s: %w", dk, err)
	}
	var u int64
	if !until.IsZero() {
		u = until.UnixNano()
	}
	l := r.decodeRuntime(value, u)
	e.runtime.set(okey, l)
	return runtimeOf(r, string(dk), l), nil
}

func runtimeOf(r *rule, dk string, l runtimeLimit) RuntimeLimit {
	out := RuntimeLimit{Rule: r.name, Key: dk, By: l.by, At: unixTime(l.at), Until: unixTime(l.until), Known: true}
	if l.spec != nil {
		out.Limit = l.spec.text
	}
	return out
}

// Unlimit removes key's runtime override under rule; ok is false when it
// had none.
func (e *Engine) Unlimit(ctx context.Context, ruleName, key string) (was RuntimeLimit, ok bool, err error) {
	r, err := e.overrideRule(ruleName)
	if err != nil {
		return was, false, err
	}
	dk, err := r.normalKey(key)
	if err != nil {
		return was, false, &KeyError{err}
	}
	okey := r.name + ":o:" + string(dk)
	all, err := counter.Overrides(ctx, e.store)
	if err != nil {
		return was, false, fmt.Errorf("read the limits in force: %w", err)
	}
	for _, o := range all {
		if o.Key == okey {
			was, ok = runtimeOf(r, string(dk), r.decodeRuntime(o.Value, unixNano(o.Until))), true
		}
	}
	if err := counter.SetOverride(ctx, e.store, []byte(okey), nil, time.Time{}); err != nil {
		return was, false, fmt.Errorf("remove the limit of %s: %w", dk, err)
	}
	e.runtime.set(okey, runtimeLimit{})
	return was, ok, nil
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// Limits lists the runtime overrides in force (for one rule or all) and
// the overrides tables loaded.
func (e *Engine) Limits(ctx context.Context, ruleName string) ([]RuntimeLimit, []OverrideTable, error) {
	if ruleName != "" && e.rule(ruleName) == nil {
		return nil, nil, &KeyError{fmt.Errorf("no rule named %q in the config in force", ruleName)}
	}
	all, err := counter.Overrides(ctx, e.store)
	if err != nil {
		return nil, nil, fmt.Errorf("read the limits in force: %w", err)
	}
	var out []RuntimeLimit
	for _, o := range all {
		name, dk, ok := splitStoreKey(o.Key, "o")
		if !ok || ruleName != "" && name != ruleName {
			continue
		}
		r := e.rule(name)
		if r == nil || r.over == nil {
			out = append(out, RuntimeLimit{Rule: name, Key: dk, Limit: string(o.Value), Until: o.Until})
			continue
		}
		l := r.decodeRuntime(o.Value, unixNano(o.Until))
		// What the store says is in force is what this host applies next.
		e.runtime.set(o.Key, l)
		out = append(out, runtimeOf(r, dk, l))
	}
	var tables []OverrideTable
	for _, r := range e.rules {
		if r.over != nil && r.over.table != nil && (ruleName == "" || r.name == ruleName) {
			tables = append(tables, OverrideTable{Rule: r.name, Path: r.over.path, Entries: r.over.table.n})
		}
	}
	return out, tables, nil
}

// splitStoreKey splits "rule:w:dimension" whose window letter is w.
func splitStoreKey(key, w string) (rule, dk string, ok bool) {
	rule, rest, ok1 := strings.Cut(key, ":")
	win, dk, ok2 := strings.Cut(rest, ":")
	return rule, dk, ok1 && ok2 && win == w
}

// Restrictions lists the restricted keys (and those in a grace after a
// release), for one rule or all.
func (e *Engine) Restrictions(ctx context.Context, ruleName string) ([]Restricted, error) {
	all, err := counter.Restrictions(ctx, e.store)
	if err != nil {
		return nil, fmt.Errorf("list restrictions: %w", err)
	}
	var out []Restricted
	for _, x := range all {
		name, dk, ok := splitStoreKey(x.Key, "x")
		if !ok || ruleName != "" && name != ruleName {
			continue
		}
		out = append(out, e.restricted(name, dk, x))
	}
	return out, nil
}

func (e *Engine) restricted(name, dk string, x counter.Restriction) Restricted {
	out := Restricted{Rule: name, Key: dk, Since: x.Since, Until: x.Until, Count: x.Count, Grace: x.Grace, Held: x.Held}
	if r := e.rule(name); r != nil {
		out.Known, out.Limit = true, r.limit
	}
	return out
}

// Release lifts the restrictions of key (under one rule, or every rule
// with restrict_for that counts per its dimensions) and gives it a grace
// until the end of the rule's current window (and of the day, for
// "today"), as Microsoft 365 does. It returns the restrictions as they
// were, with the queue ids of the mail held meanwhile.
func (e *Engine) Release(ctx context.Context, key, ruleName string) ([]Restricted, error) {
	dims, f, err := parseDimKey(key)
	if err != nil {
		return nil, &KeyError{err}
	}
	if ruleName != "" && e.rule(ruleName) == nil {
		return nil, &KeyError{fmt.Errorf("no rule named %q in the config in force", ruleName)}
	}
	var out []Restricted
	found := false
	for _, r := range e.rules {
		if r.restrict == nil || ruleName != "" && r.name != ruleName || !sameDims(r.keyer.dims, dims) {
			continue
		}
		found = true
		dk, ok := r.keyer.appendKey(nil, &f)
		if !ok {
			continue
		}
		grace := r.grace(e.now())
		was, ok, err := counter.Release(ctx, e.store, []byte(r.name+":x:"+string(dk)), grace)
		if err != nil {
			return out, fmt.Errorf("release %s: %w", dk, err)
		}
		if ok {
			x := e.restricted(r.name, string(dk), was)
			x.GraceUntil = grace
			out = append(out, x)
		}
	}
	if !found {
		return nil, &KeyError{fmt.Errorf("no rule with restrict_for counts per %s", dimList(dims))}
	}
	return out, nil
}

// syncRuntime takes in the runtime overrides the store holds, so that
// what an admin is shown is what the store says. A store without them,
// or one that fails, leaves the engine's as they are.
func (e *Engine) syncRuntime(ctx context.Context) {
	if !e.overrider {
		return
	}
	all, err := counter.Overrides(ctx, e.store)
	if err != nil {
		return
	}
	m := make(map[string]runtimeLimit)
	for _, o := range all {
		if name, _, ok := splitStoreKey(o.Key, "o"); ok {
			if r := e.rule(name); r != nil && r.over != nil {
				m[o.Key] = r.decodeRuntime(o.Value, unixNano(o.Until))
			}
		}
	}
	e.runtime.replace(m)
}

// RestrictedCounts counts the keys restricted now per rule, for
// metrics: every rule with restrict_for, 0 when none is.
func (e *Engine) RestrictedCounts(ctx context.Context) (map[string]int, error) {
	out := make(map[string]int)
	for _, r := range e.rules {
		if r.restrict != nil {
			out[r.name] = 0
		}
	}
	all, err := counter.Restrictions(ctx, e.store)
	if errors.Is(err, counter.ErrUnsupported) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	for _, x := range all {
		if name, _, ok := splitStoreKey(x.Key, "x"); ok && !x.Grace {
			out[name]++
		}
	}
	return out, nil
}
