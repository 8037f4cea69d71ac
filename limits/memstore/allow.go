package memstore

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// allowSet holds the exemptions: few, set by hand, read at every event,
// hence the lock-free "none at all" answer.
type allowSet struct {
	any atomic.Bool
	mu  sync.Mutex
	m   map[string]int64 // key -> until, Unix ns
}

// SetAllow exempts key until the given time; a zero or past time removes
// the exemption.
func (s *Store) SetAllow(ctx context.Context, key string, until time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return ErrClosed
	}
	return s.allow.set(key, until, s.now())
}

// set adds, changes or removes an exemption. Past maxAllows in force, a
// new key is refused.
func (a *allowSet) set(key string, until time.Time, now int64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	defer func() { a.any.Store(len(a.m) > 0) }()
	if until.IsZero() || until.UnixNano() <= now {
		delete(a.m, key)
		return nil
	}
	if _, ok := a.m[key]; !ok && len(a.m) >= maxAllows {
		maps.DeleteFunc(a.m, func(_ string, until int64) bool { return until <= now })
		if len(a.m) >= maxAllows {
			return fmt.Errorf("the memory store keeps at most %d exemptions", maxAllows)
		}
	}
	if a.m == nil {
		a.m = make(map[string]int64)
	}
	a.m[key] = until.UnixNano()
	return nil
}

// Allows lists the exemptions in force; nil when there are none.
func (s *Store) Allows(ctx context.Context) (map[string]time.Time, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.allow.list(s.now()), nil
}

func (a *allowSet) list(now int64) map[string]time.Time {
	if !a.any.Load() {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	maps.DeleteFunc(a.m, func(_ string, until int64) bool { return until <= now })
	a.any.Store(len(a.m) > 0)
	if len(a.m) == 0 {
		return nil
	}
	out := make(map[string]time.Time, len(a.m))
	for k, until := range a.m {
		out[k] = time.Unix(0, until)
	}
	return out
}
