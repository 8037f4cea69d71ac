// Package guard keeps a panic in one goroutine from ending the daemon: it
// logs the panic with its stack, counts it by place, and lets the caller go on.
package guard

import (
	"fmt"
	"runtime/debug"
	"sort"
	"sync"

	"go.uber.org/zap"
)

// counts holds the panics recovered so far, by the place that recovered
// them; metrics reads it at scrape time.
var counts struct {
	sync.Mutex
	by map[string]uint64
}

// Recover must be deferred directly (defer guard.Recover(log, "where")):
// it stops a panic, logs it with its stack and counts it under where. A nil
// log is allowed (tests, tools).
func Recover(log *zap.Logger, where string) {
	if v := recover(); v != nil {
		record(log, where, v)
	}
}

// RecoverErr is Recover for a function with a named error result: the panic
// becomes an error the caller handles like any other failure of that call.
//
//	func (s *Store) Do(...) (err error) {
//		defer guard.RecoverErr(s.log, "redis do", &err)
func RecoverErr(log *zap.Logger, where string, err *error) {
	if v := recover(); v != nil {
		record(log, where, v)
		if err != nil {
			*err = &PanicError{Where: where, Value: v}
		}
	}
}

// Go runs fn on a new goroutine that recovers from a panic in fn.
func Go(log *zap.Logger, where string, fn func()) {
	go func() {
		defer Recover(log, where)
		fn()
	}()
}

// PanicError is a recovered panic turned into an error.
type PanicError struct {
	Where string
	Value any
}

func (e *PanicError) Error() string { return fmt.Sprintf("%s: internal error: %v", e.Where, e.Value) }

func record(log *zap.Logger, where string, v any) {
	counts.Lock()
	if counts.by == nil {
		counts.by = make(map[string]uint64)
	}
	counts.by[where]++
	counts.Unlock()
	if log != nil {
		log.Error("recovered from a panic", zap.String("where", where), zap.Any("panic", v),
			zap.ByteString("stack", debug.Stack()))
	}
}

// Count is the number of panics recovered at one place.
type Count struct {
	Where string
	N     uint64
}

// Counts returns the panics recovered so far, by place, sorted by place.
func Counts() []Count {
	counts.Lock()
	out := make([]Count, 0, len(counts.by))
	for w, n := range counts.by {
		out = append(out, Count{Where: w, N: n})
	}
	counts.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Where < out[j].Where })
	return out
}
