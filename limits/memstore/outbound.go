package memstore

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"sluice/limits/counter"
)

// What the memory store keeps besides counters: restricted keys, runtime
// overrides, alert claims, and the seed of distinct members. They are few
// (set by a crossing or by hand), keyed by name, and kept in the snapshot
// (claims excepted: a restart may send an alert again).

// extState is the store's part for restrictions, overrides and claims.
type extState struct {
	seed   memberSeed
	restr  restrictSet
	over   overrideSet
	claims claimSet
}

// Bounds on what a store, and so a snapshot, holds of each.
const (
	maxRestrictions = 100_000
	maxOverrides    = 100_000
	maxClaims       = 100_000
	maxQueueID      = 64 // longer queue ids are not noted
)

// restriction is one restricted key, or one in its grace after a release.
type restriction struct {
	since, until int64 // Unix ns; until 0: until released (never in a grace)
	count        int64
	grace        bool
	held         []string
}

// active reports whether r restricts now.
func (r *restriction) active(now int64) bool {
	return !r.grace && (r.until == 0 || now < r.until)
}

// blocks reports whether r keeps its key from being restricted now:
// restricted already, or in a grace.
func (r *restriction) blocks(now int64) bool {
	return r != nil && (r.active(now) || r.grace && now < r.until)
}

type restrictSet struct {
	any  atomic.Bool // any entry at all: lets events of a store without restrictions skip the lock
	mu   sync.Mutex
	m    map[string]*restriction
	held int // queue ids in all, at most maxHeldTotal
}

// drop removes key's entry; rs is locked.
func (rs *restrictSet) drop(key string) {
	if r, ok := rs.m[key]; ok {
		rs.held -= len(r.held)
		delete(rs.m, key)
	}
}

func (rs *restrictSet) get(key []byte) *restriction {
	if !rs.any.Load() {
		return nil
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.m[string(key)]
}

// put sets key's restriction; past maxRestrictions, entries that ended go
// first, then the one of a few that ends soonest.
func (rs *restrictSet) put(key string, r *restriction, now int64) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.m == nil {
		rs.m = make(map[string]*restriction)
	}
	if _, ok := rs.m[key]; !ok && len(rs.m) >= maxRestrictions {
		rs.evict(now)
	}
	rs.drop(key)
	if rs.held+len(r.held) > maxHeldTotal {
		r.held = nil
	}
	rs.held += len(r.held)
	rs.m[key] = r
	rs.any.Store(true)
}

func (rs *restrictSet) evict(now int64) {
	victim, seen := "", 0
	for k, r := range rs.m {
		if !r.blocks(now) {
			rs.drop(k)
			return
		}
		if r.until != 0 && (victim == "" || r.until < rs.m[victim].until) {
			victim = k
		}
		if seen++; seen >= evictSets {
			break
		}
	}
	if victim == "" {
		for k := range rs.m { // every one sampled lasts until released
			victim = k
			break
		}
	}
	rs.drop(victim)
}

// judgeRestrict fills r's results: denied while the key is restricted.
// A step's found says, for a restrict request, whether the key may not be
// restricted now (it is, or is in a grace).
func (s *Store) judgeRestrict(r *counter.Request, st *step, now int64) {
	x := s.ext.restr.get(r.Key)
	st.found = x.blocks(now)
	r.Allowed, r.RetryAfter, r.Level, r.Changed = true, 0, 0, false
	if x != nil && x.active(now) {
		r.Allowed = false
		r.Level = x.count
		if x.until > 0 {
			r.RetryAfter = time.Duration(x.until - now)
		}
	}
}

// commitRestrict restricts the key when its group crossed (count is the
// crossing take's count, 0 when none did) and nothing keeps it from it.
func (s *Store) commitRestrict(r *counter.Request, st *step, count, now int64) {
	if r.Op != counter.OpTake || count == 0 || st.found {
		return
	}
	s.ext.restr.put(string(r.Key), &restriction{since: now, until: r.Until, count: count}, now)
	r.Changed, r.Level = true, count
}

// Restrictions lists the keys restricted now and those in a grace.
func (s *Store) Restrictions(ctx context.Context) ([]counter.Restriction, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := s.now()
	rs := &s.ext.restr
	rs.mu.Lock()
	var out []counter.Restriction
	for k, r := range rs.m {
		if !r.blocks(now) {
			rs.drop(k)
			continue
		}
		out = append(out, r.public(k))
	}
	rs.any.Store(len(rs.m) > 0)
	rs.mu.Unlock()
	slices.SortFunc(out, func(a, b counter.Restriction) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

func (r *restriction) public(key string) counter.Restriction {
	out := counter.Restriction{Key: key, Since: time.Unix(0, r.since), Count: r.count, Grace: r.grace,
		Held: slices.Clone(r.held)}
	if r.until != 0 {
		out.Until = time.Unix(0, r.until)
	}
	return out
}

// Release lifts key's restriction and gives it a grace until grace.
func (s *Store) Release(ctx context.Context, key []byte, grace time.Time) (counter.Restriction, bool, error) {
	if err := ctx.Err(); err != nil {
		return counter.Restriction{}, false, err
	}
	if s.closed.Load() {
		return counter.Restriction{}, false, ErrClosed
	}
	now := s.now()
	rs := &s.ext.restr
	rs.mu.Lock()
	defer rs.mu.Unlock()
	r := rs.m[string(key)]
	if r == nil || !r.active(now) {
		return counter.Restriction{}, false, nil
	}
	was := r.public(string(key))
	rs.drop(string(key))
	if g := grace.UnixNano(); !grace.IsZero() && g > now {
		rs.m[string(key)] = &restriction{since: r.since, until: g, count: r.count, grace: true}
	}
	rs.any.Store(len(rs.m) > 0)
	return was, true, nil
}

// NoteHeld adds a queue id to key's restriction, keeping the last
// counter.MaxHeld.
func (s *Store) NoteHeld(ctx context.Context, key []byte, queueID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if queueID == "" || len(queueID) > maxQueueID {
		return nil
	}
	now := s.now()
	rs := &s.ext.restr
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if r := rs.m[string(key)]; r.blocks(now) && !slices.Contains(r.held, queueID) {
		if len(r.held) >= counter.MaxHeld {
			n := len(r.held) - counter.MaxHeld + 1
			r.held = slices.Delete(r.held, 0, n)
			rs.held -= n
		}
		if rs.held < maxHeldTotal {
			r.held = append(r.held, queueID)
			rs.held++
		}
	}
	return nil
}

// override is one runtime override.
type override struct {
	value []byte
	until int64 // 0: until removed
}

func (o override) live(now int64) bool { return o.until == 0 || now < o.until }

type overrideSet struct {
	any atomic.Bool
	mu  sync.Mutex
	m   map[string]override
}

// checkOverrides compares every override request of an event with what
// is in force, filling in the ones that differ; it reports whether all
// agreed.
func (s *Store) checkOverrides(reqs []counter.Request) bool {
	ok := true
	ov := &s.ext.over
	if !ov.any.Load() {
		for i := range reqs {
			if r := &reqs[i]; r.Kind == counter.KindOverride {
				r.Allowed = true
				if r.Member != nil {
					r.Member, r.Until, ok = nil, 0, false
				}
			}
		}
		return ok
	}
	now := s.now()
	ov.mu.Lock()
	defer ov.mu.Unlock()
	for i := range reqs {
		r := &reqs[i]
		if r.Kind != counter.KindOverride {
			continue
		}
		r.Allowed = true
		o, found := ov.m[string(r.Key)]
		found = found && o.live(now)
		if found == (r.Member != nil) && (!found || bytes.Equal(o.value, r.Member)) {
			continue
		}
		ok = false
		r.Member, r.Until = nil, 0
		if found {
			r.Member, r.Until = slices.Clone(o.value), o.until
		}
	}
	return ok
}

// SetOverride stores a runtime override; a nil value removes it.
func (s *Store) SetOverride(ctx context.Context, key, value []byte, until time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return ErrClosed
	}
	var u int64
	if !until.IsZero() {
		u = until.UnixNano()
	}
	return s.ext.over.set(string(key), value, u, s.now())
}

func (ov *overrideSet) set(key string, value []byte, until, now int64) error {
	ov.mu.Lock()
	defer ov.mu.Unlock()
	defer func() { ov.any.Store(len(ov.m) > 0) }()
	if value == nil || until != 0 && until <= now {
		delete(ov.m, key)
		return nil
	}
	if _, ok := ov.m[key]; !ok && len(ov.m) >= maxOverrides {
		for k, o := range ov.m {
			if !o.live(now) {
				delete(ov.m, k)
			}
		}
		if len(ov.m) >= maxOverrides {
			return fmt.Errorf("the memory store keeps at most %d runtime overrides", maxOverrides)
		}
	}
	if ov.m == nil {
		ov.m = make(map[string]override)
	}
	ov.m[key] = override{value: slices.Clone(value), until: until}
	return nil
}

// Overrides lists the runtime overrides in force.
func (s *Store) Overrides(ctx context.Context) ([]counter.Override, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := s.now()
	ov := &s.ext.over
	ov.mu.Lock()
	var out []counter.Override
	for k, o := range ov.m {
		if !o.live(now) {
			delete(ov.m, k)
			continue
		}
		c := counter.Override{Key: k, Value: slices.Clone(o.value)}
		if o.until != 0 {
			c.Until = time.Unix(0, o.until)
		}
		out = append(out, c)
	}
	ov.any.Store(len(ov.m) > 0)
	ov.mu.Unlock()
	slices.SortFunc(out, func(a, b counter.Override) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// claimSet holds alert claims: key -> until, Unix ns.
type claimSet struct {
	mu sync.Mutex
	m  map[string]int64
}

// Claim takes key for ttl unless it is taken.
func (s *Store) Claim(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if s.closed.Load() {
		return false, ErrClosed
	}
	now := s.now()
	c := &s.ext.claims
	c.mu.Lock()
	defer c.mu.Unlock()
	if until, ok := c.m[key]; ok && now < until {
		return false, nil
	}
	if c.m == nil {
		c.m = make(map[string]int64)
	}
	if len(c.m) >= maxClaims {
		for k, until := range c.m {
			if until <= now {
				delete(c.m, k)
			}
		}
		if len(c.m) >= maxClaims {
			// Claims only spare duplicates: forgetting them all costs
			// at most one more alert each.
			clear(c.m)
		}
	}
	c.m[key] = now + int64(ttl)
	return true, nil
}

// groupCount is the count that crossed a group's limit in an event.
type groupCount struct {
	group uint16
	count int64
}

// crossings lists, per group, the count of its first denied take: what a
// restriction of the group records.
func crossings(reqs []counter.Request) []groupCount {
	var out []groupCount
	for i := range reqs {
		r := &reqs[i]
		if r.Group == 0 || r.Allowed || r.Op != counter.OpTake || r.Kind == counter.KindRestrict || r.Kind == counter.KindOverride {
			continue
		}
		if crossingOf(out, r.Group) == 0 {
			out = append(out, groupCount{r.Group, max(r.Level+r.Cost, 1)})
		}
	}
	return out
}

func crossingOf(gs []groupCount, g uint16) int64 {
	for _, c := range gs {
		if c.group == g {
			return c.count
		}
	}
	return 0
}
