package redisstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"sluice/guard"
	"sluice/limits/counter"
)

// Restrictions, runtime overrides and alert claims live in Redis beside
// the counters, so every host of a fleet sees them at once. A
// restriction (hash "x:rule:x:{dim}", see takeScript) and the queue ids
// held meanwhile (list "q:rule:x:{dim}") share their key's slot; so does
// an override ("o:rule:o:{dim}"). Two indexes name them for listing:
// "{restricted}" (a sorted set written in the background from what the
// take script reports, since a script under Cluster may not touch
// another slot) and "{overrides}" (a hash written by SetOverride). A
// name in an index whose key is gone is dropped when listed.

// Places of recovered panics, for guard's counts.
const (
	placeRestrictions = "redis store restrictions"
	placeRelease      = "redis store release"
	placeNoteHeld     = "redis store note held"
	placeSetOverride  = "redis store set override"
	placeOverrides    = "redis store overrides"
	placeClaim        = "redis store claim"
)

func (s *Store) restrictedKey() string { return s.prefix + "{restricted}" }
func (s *Store) overridesKey() string  { return s.prefix + "{overrides}" }
func (s *Store) heldKey(key []byte) string {
	return "q:" + strings.TrimPrefix(s.redisKey(counter.KindRestrict, key), s.prefix+"x:")
}

// clockArgs are the now_s, now_ns of a script: the test clock's, or ""
// for Redis's TIME.
func (s *Store) clockArgs() []any {
	if s.now == nil {
		return []any{"", ""}
	}
	now := s.now()
	return []any{now / 1e9, now % 1e9}
}

// The scripts below start with what takeScript has for the clock.
const clockLua = `
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now_s, now_ns = tonumber(t[1]), tonumber(t[2]) * 1000
if ARGV[1] ~= '' then now_s, now_ns = tonumber(ARGV[1]), tonumber(ARGV[2]) end
` + relLua

// readRestrictionScript reads a restriction in force or in its grace:
// KEYS the hash and the held list; returns {} when there is none, else
// st, since, until, count, then the held queue ids.
var readRestrictionScript = newScript(clockLua + `
local h = redis.call('HMGET', KEYS[1], 'st', 'since', 'until', 'count')
if not h[1] or not until_live(h[3]) then return {} end
local out = {h[1], h[2], h[3], h[4]}
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do out[#out + 1] = id end
return out
`)

// releaseScript lifts a restriction in force: KEYS the hash and the held
// list, ARGV[3] the grace's end (Unix ns, "" for none), ARGV[4] min_ttl
// ms. Returns {} when the key was not restricted, else what
// readRestrictionScript returns of it as it was.
var releaseScript = newScript(clockLua + `
local h = redis.call('HMGET', KEYS[1], 'st', 'since', 'until', 'count')
if h[1] ~= 'r' or not until_live(h[3]) then return {} end
local out = {h[1], h[2], h[3], h[4]}
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do out[#out + 1] = id end
redis.call('DEL', KEYS[1], KEYS[2])
local g = ARGV[3]
if g ~= '' and rel(g) > 0 then
  redis.call('HSET', KEYS[1], 'st', 'g', 'since', h[2], 'until', g, 'count', h[4])
  local ttl = math.ceil(rel(g) / 1000000) + 1
  if ttl < tonumber(ARGV[4]) then ttl = tonumber(ARGV[4]) end
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return out
`)

// noteHeldScript adds a queue id to a restriction's list, once, keeping
// the last ARGV[4]: KEYS the hash and the list, ARGV[3] the id. The list
// expires with the restriction.
var noteHeldScript = newScript(clockLua + `
local h = redis.call('HMGET', KEYS[1], 'st', 'until')
if not h[1] or not until_live(h[2]) then return 0 end
if redis.call('LPOS', KEYS[2], ARGV[3]) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) else redis.call('PERSIST', KEYS[2]) end
return 1
`)

// readOverrideScript reads an override in force: KEYS the hash; returns
// {} or {value, until}.
var readOverrideScript = newScript(clockLua + `
local h = redis.call('HMGET', KEYS[1], 'v', 'u')
if not h[1] or not until_live(h[2]) then return {} end
return {h[1], h[2]}
`)

// claimScript takes KEYS[1] until ARGV[3] (Unix ns) unless it is taken;
// ARGV[4] is the key's TTL in ms. Returns 1 when taken now.
var claimScript = newScript(clockLua + `
local v = redis.call('GET', KEYS[1])
if v and rel(v) > 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
`)

// outboundScripts are loaded with the others at start.
var outboundScripts = []*script{readRestrictionScript, releaseScript, noteHeldScript, readOverrideScript, claimScript}

// nameQueue is the restricted keys a host saw restricted and has not
// written to the index yet; bounded like the hot notes.
type nameQueue struct {
	mu      sync.Mutex
	pending map[string]struct{}
}

func (q *nameQueue) note(name string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.pending == nil {
		q.pending = make(map[string]struct{})
	}
	if len(q.pending) < hotPending {
		q.pending[name] = struct{}{}
	}
}

func (q *nameQueue) take() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]string, 0, len(q.pending))
	for k := range q.pending {
		out = append(out, k)
	}
	q.pending = nil
	return out
}

// flushRestricted writes the pending names to the index; what fails to
// be written is noted again for the next try.
func (s *Store) flushRestricted(ctx context.Context) {
	names := s.restricted.take()
	if len(names) == 0 {
		return
	}
	now := float64(time.Now().Unix())
	zs := make([]redis.Z, len(names))
	for i, n := range names {
		zs[i] = redis.Z{Score: now, Member: n}
	}
	err := s.call(ctx, placeRestrictions, func(ctx context.Context) error {
		return s.client.ZAdd(ctx, s.restrictedKey(), zs...).Err()
	})
	if err != nil {
		for _, n := range names {
			s.restricted.note(n)
		}
	}
}

// evalOne runs a script on one key set, on the key's node.
func (s *Store) evalOne(ctx context.Context, sc *script, keys []string, args ...any) *redis.Cmd {
	return s.eval(ctx, sc, []group{{keys: keys, args: append(s.clockArgs(), args...)}})[0]
}

// Restrictions lists the restrictions in force and in a grace.
func (s *Store) Restrictions(ctx context.Context) (_ []counter.Restriction, err error) {
	defer guard.RecoverErr(s.plog, placeRestrictions, &err)
	if s.closed.Load() {
		return nil, ErrClosed
	}
	var out []counter.Restriction
	err = s.call(ctx, placeRestrictions, func(ctx context.Context) error {
		// Names noted on this host and not written yet are listed too.
		pending := s.restricted.take()
		for _, n := range pending {
			s.restricted.note(n)
		}
		names, err := s.client.ZRange(ctx, s.restrictedKey(), 0, -1).Result()
		if err != nil {
			return err
		}
		for _, n := range pending {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
		var gone []any
		for _, part := range chunks(names, 1000) {
			gs := make([]group, len(part))
			for i, n := range part {
				gs[i] = group1(s.clockArgs(), s.redisKey(counter.KindRestrict, []byte(n)), s.heldKey([]byte(n)))
			}
			for i, c := range s.eval(ctx, readRestrictionScript, gs) {
				vals, err := c.StringSlice()
				if err != nil {
					return err
				}
				if len(vals) == 0 {
					gone = append(gone, part[i])
					continue
				}
				r, err := parseRestriction(part[i], vals)
				if err != nil {
					return err
				}
				out = append(out, r)
			}
		}
		if len(gone) > 0 {
			return s.client.ZRem(ctx, s.restrictedKey(), gone...).Err()
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redis store: restrictions: %w", err)
	}
	slices.SortFunc(out, func(a, b counter.Restriction) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

func group1(clock []any, keys ...string) group {
	return group{keys: keys, args: clock, idx: []int{0}}
}

func chunks[T any](s []T, n int) [][]T {
	var out [][]T
	for len(s) > 0 {
		k := min(n, len(s))
		out = append(out, s[:k])
		s = s[k:]
	}
	return out
}

// parseRestriction reads st, since, until, count, held ids.
func parseRestriction(key string, v []string) (counter.Restriction, error) {
	if len(v) < 4 {
		return counter.Restriction{}, fmt.Errorf("restriction %q: %d fields", key, len(v))
	}
	since, err1 := strconv.ParseInt(v[1], 10, 64)
	until, err2 := strconv.ParseInt(v[2], 10, 64)
	count, err3 := strconv.ParseInt(v[3], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return counter.Restriction{}, fmt.Errorf("restriction %q: %w", key, err)
	}
	r := counter.Restriction{Key: key, Since: time.Unix(0, since), Count: count, Grace: v[0] == "g", Held: v[4:]}
	if until != 0 {
		r.Until = time.Unix(0, until)
	}
	return r, nil
}

// Release lifts key's restriction and gives it a grace until grace.
func (s *Store) Release(ctx context.Context, key []byte, grace time.Time) (r counter.Restriction, ok bool, err error) {
	defer guard.RecoverErr(s.plog, placeRelease, &err)
	if s.closed.Load() {
		return r, false, ErrClosed
	}
	g := ""
	if !grace.IsZero() {
		g = strconv.FormatInt(grace.UnixNano(), 10)
	}
	err = s.call(ctx, placeRelease, func(ctx context.Context) error {
		vals, err := s.evalOne(ctx, releaseScript, []string{s.redisKey(counter.KindRestrict, key), s.heldKey(key)}, g, s.minTTL).StringSlice()
		if err != nil || len(vals) == 0 {
			return err
		}
		r, err = parseRestriction(string(key), vals)
		ok = err == nil
		return err
	})
	if err != nil {
		return r, false, fmt.Errorf("redis store: release: %w", err)
	}
	return r, ok, nil
}

// NoteHeld adds a queue id to key's restriction.
func (s *Store) NoteHeld(ctx context.Context, key []byte, queueID string) (err error) {
	defer guard.RecoverErr(s.plog, placeNoteHeld, &err)
	if s.closed.Load() {
		return ErrClosed
	}
	if queueID == "" || len(queueID) > 64 {
		return nil
	}
	err = s.call(ctx, placeNoteHeld, func(ctx context.Context) error {
		return s.evalOne(ctx, noteHeldScript, []string{s.redisKey(counter.KindRestrict, key), s.heldKey(key)}, queueID, counter.MaxHeld).Err()
	})
	if err != nil {
		return fmt.Errorf("redis store: note held: %w", err)
	}
	return nil
}

// SetOverride stores a runtime override; a nil value removes it.
func (s *Store) SetOverride(ctx context.Context, key, value []byte, until time.Time) (err error) {
	defer guard.RecoverErr(s.plog, placeSetOverride, &err)
	if s.closed.Load() {
		return ErrClosed
	}
	rk := s.redisKey(counter.KindOverride, key)
	err = s.call(ctx, placeSetOverride, func(ctx context.Context) error {
		if value == nil || !until.IsZero() && until.UnixNano() <= s.nowNS() {
			if err := s.client.Del(ctx, rk).Err(); err != nil {
				return err
			}
			return s.client.HDel(ctx, s.overridesKey(), string(key)).Err()
		}
		u := "0"
		if !until.IsZero() {
			u = strconv.FormatInt(until.UnixNano(), 10)
		}
		_, err := s.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Del(ctx, rk)
			p.HSet(ctx, rk, "v", string(value), "u", u)
			if !until.IsZero() {
				p.PExpire(ctx, rk, max(until.Sub(time.Unix(0, s.nowNS())), time.Duration(s.minTTL)*time.Millisecond)+time.Millisecond)
			}
			return nil
		})
		if err != nil {
			return err
		}
		return s.client.HSet(ctx, s.overridesKey(), string(key), u).Err()
	})
	if err != nil {
		return fmt.Errorf("redis store: set override: %w", err)
	}
	return nil
}

// Overrides lists the runtime overrides in force.
func (s *Store) Overrides(ctx context.Context) (_ []counter.Override, err error) {
	defer guard.RecoverErr(s.plog, placeOverrides, &err)
	if s.closed.Load() {
		return nil, ErrClosed
	}
	var out []counter.Override
	err = s.call(ctx, placeOverrides, func(ctx context.Context) error {
		names, err := s.client.HKeys(ctx, s.overridesKey()).Result()
		if err != nil {
			return err
		}
		var gone []string
		for _, part := range chunks(names, 1000) {
			gs := make([]group, len(part))
			for i, n := range part {
				gs[i] = group1(s.clockArgs(), s.redisKey(counter.KindOverride, []byte(n)))
			}
			for i, c := range s.eval(ctx, readOverrideScript, gs) {
				vals, err := c.StringSlice()
				if err != nil {
					return err
				}
				if len(vals) != 2 {
					gone = append(gone, part[i])
					continue
				}
				o := counter.Override{Key: part[i], Value: []byte(vals[0])}
				if u, err := strconv.ParseInt(vals[1], 10, 64); err == nil && u != 0 {
					o.Until = time.Unix(0, u)
				}
				out = append(out, o)
			}
		}
		if len(gone) > 0 {
			return s.client.HDel(ctx, s.overridesKey(), gone...).Err()
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redis store: overrides: %w", err)
	}
	slices.SortFunc(out, func(a, b counter.Override) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// staleOverrides reads the overrides in force for the override requests
// of an event the take script found stale, and returns ErrStale.
func (s *Store) staleOverrides(ctx context.Context, reqs []counter.Request) error {
	var gs []group
	var which []int
	for i := range reqs {
		if reqs[i].Kind == counter.KindOverride {
			gs = append(gs, group1(s.clockArgs(), s.redisKey(counter.KindOverride, reqs[i].Key)))
			which = append(which, i)
		}
	}
	for j, c := range s.eval(ctx, readOverrideScript, gs) {
		vals, err := c.StringSlice()
		if err != nil {
			return fmt.Errorf("redis store: read overrides: %w", err)
		}
		r := &reqs[which[j]]
		r.Member, r.Until = nil, 0
		if len(vals) == 2 {
			r.Member = []byte(vals[0])
			r.Until, _ = strconv.ParseInt(vals[1], 10, 64)
		}
	}
	return fmt.Errorf("redis store: %w", counter.ErrStale)
}

// Claim takes key for ttl, across the fleet.
func (s *Store) Claim(ctx context.Context, key string, ttl time.Duration) (ok bool, err error) {
	defer guard.RecoverErr(s.plog, placeClaim, &err)
	if s.closed.Load() {
		return false, ErrClosed
	}
	until := s.nowNS() + int64(ttl)
	ms := max(int64(ttl/time.Millisecond), s.minTTL) + 1
	err = s.call(ctx, placeClaim, func(ctx context.Context) error {
		n, err := s.evalOne(ctx, claimScript, []string{s.prefix + "claim:" + key}, strconv.FormatInt(until, 10), ms).Int()
		ok = n == 1
		return err
	})
	if err != nil {
		return false, fmt.Errorf("redis store: claim: %w", err)
	}
	return ok, nil
}
