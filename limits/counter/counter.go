// Package counter is the seam between counting rules and where counts live:
// the requests of one SMTP event, the Store that answers them, and GCRA.
//
// Besides rates and concurrency slots, a store counts distinct values
// (KindDistinct), keeps restricted keys (KindRestrict) and checks the
// runtime overrides a request was built with (KindOverride), all in the
// same call: one round trip per event.
package counter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Kind is the algorithm behind a key.
type Kind uint8

const (
	// KindRate is a GCRA rate: Burst units at once, then one every Interval.
	KindRate Kind = iota
	// KindConcurrent counts slots held at once, up to Burst.
	KindConcurrent
	// KindDistinct counts the different Members seen within the last
	// Interval nanoseconds (in whole µs), up to Burst. A take of a
	// Member already seen is always allowed and only renews it; a new
	// one is allowed while fewer than Burst are there. A refund takes
	// Member out, or with Until > 0 puts it back as last seen at Until
	// (Unix µs). A store keeps at most Burst+1 members per key, the most
	// recently seen: enough to count exactly up to the limit.
	KindDistinct
	// KindRestrict is a restricted key (a penalty box): a take is denied
	// while Key is restricted. Applied (a restrict request is always
	// Strict), it restricts Key until Until when a take of the same Group
	// in the event is denied, unless Key is restricted already or in its
	// grace after a release; Changed then says it did.
	KindRestrict
	// KindOverride checks that the runtime override stored under Key is
	// Member (nil: none in force), so that the event's other requests
	// were built with the right limits. When one is not, the store
	// applies nothing, sets Member and Until to what is in force, and Do
	// returns an error that wraps ErrStale: the caller builds the event
	// again.
	KindOverride
)

// Op is what a request does to its key.
type Op uint8

const (
	OpTake   Op = iota // rate: admit Cost units if within the limit; concurrent: take one slot
	OpRefund           // rate: give Cost units back (a reservation released); concurrent: free the holder's slot
	OpPeek             // report the state as a Take of Cost would see it, change nothing
)

// Request is one key's part in an event. The engine fills the inputs; the
// store fills the results.
type Request struct {
	Key    []byte // "rule:window:dimension-key", built by the engine
	Holder []byte // concurrent: who holds the slot (session id), for leases
	// Member is, for a distinct key, the value this event adds (a
	// recipient domain, a client network); for an override check, the
	// value the request was built with (nil: none), and on ErrStale the
	// one in force.
	Member   []byte
	Interval int64 // rate: nanoseconds per unit (period / N); distinct: the window
	Burst    int64 // rate: units admitted at once from idle; concurrent: slots; distinct: members
	Cost     int64 // units this event adds (1, or the message size for bytes)
	Until    int64 // restrict: when a restriction set now ends, Unix ns (0: until released); override: out, when it ends; distinct refund: see KindDistinct
	Kind     Kind
	Op       Op
	Blocking bool   // a denial of this request refuses the whole event
	Strict   bool   // add even when denied or when the event is refused
	Group    uint16 // restrict: the takes whose denial restricts Key (0: none); rate, concurrent, distinct: theirs

	// Results.
	Allowed    bool
	Changed    bool          // distinct: Member was new (a refund takes it out); restrict: this event restricted Key
	RetryAfter time.Duration // when a Take of Cost would be admitted; 0 if now (restrict: until the restriction ends, 0 if never)
	Level      int64         // units in the bucket (rate), slots held (concurrent), members (distinct); restrict: the count that crossed
}

// ErrStale is wrapped by the error of a Do that found a runtime override
// other than the one a KindOverride request expected.
var ErrStale = errors.New("counter store: a runtime override changed")

// Store keeps counters: what the engine asks of it for every SMTP event.
// Implementations must be safe for concurrent use. What admins and
// operators ask (Resetter, HotLister, Allower, Lener, Pinger) is optional:
// find it with the functions below, which look through wrappers.
type Store interface {
	// Do applies the requests of one event as one step. Every request is
	// judged first; the event is refused when a Blocking request is denied.
	// Then a request is applied when it was allowed and the event was not
	// refused, or when it is Strict. Refunds and peeks are never denied.
	// An error means nothing was applied.
	Do(ctx context.Context, reqs []Request) error

	// Close flushes what must survive (a snapshot) and frees the store.
	Close() error
}

// Resetter forgets keys.
type Resetter interface {
	Reset(ctx context.Context, keys [][]byte) error
}

// HotLister lists the keys closest to their limits.
type HotLister interface {
	// Hot returns up to n keys that were recently denied or more than
	// half full, fullest first, with the parameters they were last seen
	// with.
	Hot(ctx context.Context, n int) ([]HotKey, error)
}

// Allower keeps exemptions.
type Allower interface {
	// SetAllow exempts a dimension key ("sender:alice@example.org") from
	// every rule until the given time; a zero time removes the exemption.
	SetAllow(ctx context.Context, key string, until time.Time) error
	// Allows lists the exemptions in force.
	Allows(ctx context.Context) (map[string]time.Time, error)
}

// Restricter lists and lifts the restrictions KindRestrict requests set.
type Restricter interface {
	// Restrictions lists the keys restricted now, and those in their
	// grace after a release.
	Restrictions(ctx context.Context) ([]Restriction, error)
	// Release lifts the restriction of key (a KindRestrict key) and lets
	// no take restrict it again before grace. It returns the restriction
	// as it was, with the queue ids noted meanwhile; ok is false when key
	// was not restricted.
	Release(ctx context.Context, key []byte, grace time.Time) (r Restriction, ok bool, err error)
	// NoteHeld adds the queue id of a message held because key is
	// restricted, for Release to return; a store keeps the last
	// MaxHeld.
	NoteHeld(ctx context.Context, key []byte, queueID string) error
}

// MaxHeld bounds the queue ids a store keeps per restriction.
const MaxHeld = 1000

// Restriction is one restricted key.
type Restriction struct {
	Key   string    // the KindRestrict key: "rule:x:dimension"
	Since time.Time // when it was restricted
	Until time.Time // when it ends by itself; zero: when released
	Count int64     // the count that crossed the limit
	Grace bool      // released: not restricted again before Until
	Held  []string  // queue ids of messages held meanwhile, oldest first
}

// Overrider keeps runtime overrides, which KindOverride requests check.
type Overrider interface {
	// SetOverride stores value under key until the given time (zero:
	// until removed); a nil value removes it.
	SetOverride(ctx context.Context, key []byte, value []byte, until time.Time) error
	// Overrides lists the overrides in force.
	Overrides(ctx context.Context) ([]Override, error)
}

// Override is one runtime override as stored.
type Override struct {
	Key   string // "rule:o:dimension"
	Value []byte
	Until time.Time // zero: until removed
}

// Claimer deduplicates across the hosts sharing a store.
type Claimer interface {
	// Claim reports whether key was free and takes it for ttl: of all
	// the claims of one key within ttl, one gets true.
	Claim(ctx context.Context, key string, ttl time.Duration) (bool, error)
}

// Lener reports how many keys a store tracks, for metrics; -1 if unknown.
type Lener interface{ Len() int }

// Pinger checks that a store can answer now, for readiness.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Wrapper is a store that wraps another one, adding something of its own
// (metrics, say). A wrapper that does not offer an optional interface of
// what it wraps still lets callers reach it: the functions below unwrap.
type Wrapper interface {
	Unwrap() Store
}

// ErrUnsupported is what asking a store for what it cannot do returns.
var ErrUnsupported = fmt.Errorf("counter store: %w", errors.ErrUnsupported)

// As finds, in s and then in what it wraps, the first store that is a T.
func As[T any](s Store) (T, bool) {
	for s != nil {
		if t, ok := s.(T); ok {
			return t, true
		}
		w, ok := s.(Wrapper)
		if !ok {
			break
		}
		s = w.Unwrap()
	}
	var zero T
	return zero, false
}

// Reset forgets keys in s, or returns ErrUnsupported.
func Reset(ctx context.Context, s Store, keys [][]byte) error {
	r, ok := As[Resetter](s)
	if !ok {
		return ErrUnsupported
	}
	return r.Reset(ctx, keys)
}

// Hot lists up to n hot keys of s, or returns ErrUnsupported.
func Hot(ctx context.Context, s Store, n int) ([]HotKey, error) {
	h, ok := As[HotLister](s)
	if !ok {
		return nil, ErrUnsupported
	}
	return h.Hot(ctx, n)
}

// SetAllow sets an exemption in s, or returns ErrUnsupported.
func SetAllow(ctx context.Context, s Store, key string, until time.Time) error {
	a, ok := As[Allower](s)
	if !ok {
		return ErrUnsupported
	}
	return a.SetAllow(ctx, key, until)
}

// Allows lists the exemptions in s, or returns ErrUnsupported.
func Allows(ctx context.Context, s Store) (map[string]time.Time, error) {
	a, ok := As[Allower](s)
	if !ok {
		return nil, ErrUnsupported
	}
	return a.Allows(ctx)
}

// Restrictions lists the restrictions in s, or returns ErrUnsupported.
func Restrictions(ctx context.Context, s Store) ([]Restriction, error) {
	r, ok := As[Restricter](s)
	if !ok {
		return nil, ErrUnsupported
	}
	return r.Restrictions(ctx)
}

// Release lifts a restriction in s, or returns ErrUnsupported.
func Release(ctx context.Context, s Store, key []byte, grace time.Time) (Restriction, bool, error) {
	r, ok := As[Restricter](s)
	if !ok {
		return Restriction{}, false, ErrUnsupported
	}
	return r.Release(ctx, key, grace)
}

// NoteHeld notes a held message of a restricted key in s, or returns
// ErrUnsupported.
func NoteHeld(ctx context.Context, s Store, key []byte, queueID string) error {
	r, ok := As[Restricter](s)
	if !ok {
		return ErrUnsupported
	}
	return r.NoteHeld(ctx, key, queueID)
}

// SetOverride stores a runtime override in s, or returns ErrUnsupported.
func SetOverride(ctx context.Context, s Store, key, value []byte, until time.Time) error {
	o, ok := As[Overrider](s)
	if !ok {
		return ErrUnsupported
	}
	return o.SetOverride(ctx, key, value, until)
}

// Overrides lists the runtime overrides in s, or returns ErrUnsupported.
func Overrides(ctx context.Context, s Store) ([]Override, error) {
	o, ok := As[Overrider](s)
	if !ok {
		return nil, ErrUnsupported
	}
	return o.Overrides(ctx)
}

// Claim takes key in s for ttl, or returns ErrUnsupported.
func Claim(ctx context.Context, s Store, key string, ttl time.Duration) (bool, error) {
	c, ok := As[Claimer](s)
	if !ok {
		return false, ErrUnsupported
	}
	return c.Claim(ctx, key, ttl)
}

// Len is how many keys s tracks; -1 when it cannot say.
func Len(s Store) int {
	l, ok := As[Lener](s)
	if !ok {
		return -1
	}
	return l.Len()
}

// Ping checks that s answers, or returns ErrUnsupported.
func Ping(ctx context.Context, s Store) error {
	p, ok := As[Pinger](s)
	if !ok {
		return ErrUnsupported
	}
	return p.Ping(ctx)
}

// HotKey is a key close to or over its limit.
type HotKey struct {
	Key        string
	Kind       Kind
	Interval   int64
	Burst      int64
	Level      int64
	RetryAfter time.Duration
}

// GCRA is the rate algorithm both stores share (Redis runs the same steps in
// Lua). tat is the key's theoretical arrival time in Unix nanoseconds (0 for
// a new key); it returns the tat to store if the request is applied, and the
// request's results.
//
// A bucket of Burst units drains one unit per Interval: new_tat = max(tat,
// now) + Interval*cost, admitted when new_tat - now <= Interval*Burst.
func GCRA(now, tat int64, r *Request) (newTAT int64, allowed bool, retry time.Duration, level int64) {
	if tat < now {
		tat = now
	}
	tolerance := r.Interval * r.Burst
	switch r.Op {
	case OpRefund:
		newTAT = max(tat-r.Interval*r.Cost, now)
		return newTAT, true, 0, ceilDiv(newTAT-now, r.Interval)
	}
	newTAT = tat + r.Interval*r.Cost
	if diff := newTAT - now; diff > tolerance {
		return newTAT, false, time.Duration(diff - tolerance), ceilDiv(tat-now, r.Interval)
	}
	return newTAT, true, 0, ceilDiv(newTAT-now, r.Interval)
}

func ceilDiv(a, b int64) int64 {
	if b <= 0 || a <= 0 {
		return 0
	}
	return (a + b - 1) / b
}

// MaxMember bounds a distinct member: the engine bounds each value it
// counts to a few hundred bytes.
const MaxMember = 1024

// Validate checks what every store needs of a request: a key, a known op
// and kind, no negative burst or cost, a positive rate interval or
// distinct window, and what each kind needs of its own fields.
// Stores add their own bound on Interval×Burst and Interval×Cost.
func (r *Request) Validate() error {
	if len(r.Key) == 0 {
		return errors.New("empty key")
	}
	if r.Op > OpPeek {
		return fmt.Errorf("unknown op %d", r.Op)
	}
	if r.Burst < 0 || r.Cost < 0 {
		return fmt.Errorf("negative burst %d or cost %d", r.Burst, r.Cost)
	}
	switch r.Kind {
	case KindRate:
		if r.Interval <= 0 {
			return fmt.Errorf("interval %d is not positive", r.Interval)
		}
	case KindConcurrent:
	case KindDistinct:
		if r.Interval <= 0 {
			return fmt.Errorf("window %d is not positive", r.Interval)
		}
		if r.Op != OpPeek && len(r.Member) == 0 {
			return errors.New("distinct: empty member")
		}
		if len(r.Member) > MaxMember {
			return fmt.Errorf("distinct: member of %d bytes (at most %d)", len(r.Member), MaxMember)
		}
	case KindRestrict:
		if r.Until < 0 {
			return fmt.Errorf("restrict: negative until %d", r.Until)
		}
		if r.Op == OpRefund {
			return errors.New("restrict: nothing to refund")
		}
	case KindOverride:
		if r.Op != OpPeek {
			return errors.New("override: only a peek checks an override")
		}
	default:
		return fmt.Errorf("unknown kind %d", r.Kind)
	}
	return nil
}

// SortHot puts hot keys in the order Store.Hot returns them: fullest
// first (level over burst), then the longest retry-after, then by name.
func SortHot(keys []HotKey) {
	slices.SortFunc(keys, func(a, b HotKey) int {
		return cmp.Or(
			cmp.Compare(fullness(b), fullness(a)),
			cmp.Compare(b.RetryAfter, a.RetryAfter),
			cmp.Compare(a.Key, b.Key))
	})
}

func fullness(k HotKey) float64 {
	if k.Burst <= 0 {
		return float64(k.Level) + 1 // any use of a zero limit is over it
	}
	return float64(k.Level) / float64(k.Burst)
}
