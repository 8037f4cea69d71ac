package limits

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"sluice/limits/counter"
	"sluice/policy"
)

// StoreErrorRecorder is told of every store failure that rules answered
// by their on_store_error ("allow", "tempfail" or "local"), with the
// number of requests each policy answered; the Redis store counts them
// for metrics.
type StoreErrorRecorder interface {
	RecordFallback(policy string, requests int, err error)
}

// storeFailures counts and samples store failures: a dead store fails
// every SMTP command, and one log line each would drown the log.
type storeFailures struct {
	rec  StoreErrorRecorder
	lim  *rate.Limiter
	held atomic.Uint64 // failures not reported since the last one
}

func (f *storeFailures) init(rec StoreErrorRecorder, st counter.Store) {
	if rec == nil {
		rec, _ = counter.As[StoreErrorRecorder](st)
	}
	f.rec = rec
	// The first few, then one every 10 seconds.
	f.lim = rate.NewLimiter(rate.Every(10*time.Second), 3)
}

// storeDown is the reply of a rule with on_store_error = "tempfail" when
// the store cannot answer: a temporary failure of the system (RFC 3463
// 4.3.0), not a limit the client crossed.
var storeDown = policy.MustReply("451 4.3.0 Temporary failure, please try again later")

// storeFailed answers every request by its rule's on_store_error, after
// the store applied none of them: allow lets the event through uncounted,
// tempfail refuses it with storeDown whatever the rule's own action and
// reply, local asks the fallback store (allow when there is none). It
// returns err, with what the rules did, when this failure is to be
// logged, else nil.
func (e *Engine) storeFailed(ctx context.Context, s *Session, err error) error {
	local := s.scratch[:0]
	var n [onErrorLocal + 1]int
	var last *rule
	for i := range s.reqs {
		q, r := &s.reqs[i], s.owners[i]
		s.via[i] = nil
		switch r.onError {
		case onErrorTempfail:
			n[onErrorTempfail]++
			// Not a limit: no verdict of the rule's own, one of the store's.
			q.Allowed, q.RetryAfter = true, 0
			if r != last {
				s.verdicts = append(s.verdicts, policy.Verdict{
					Source: r.name, Action: policy.ActionTempfail, Mode: r.mode, Reply: storeDown,
					Key: string(dimKey(q.Key)), Limit: r.limit, Detail: "store=unavailable",
				})
			}
			last = r
		case onErrorLocal:
			if e.fallback != nil {
				n[onErrorLocal]++
				if q.Kind == counter.KindOverride {
					// The local store keeps no runtime overrides: the
					// limits the event was built with stand.
					q.Member = nil
				}
				local = append(local, *q)
				continue
			}
			n[onErrorAllow]++
			q.Allowed = true
		default:
			n[onErrorAllow]++
			q.Allowed = true
		}
	}
	if len(local) > 0 {
		via := make([]counter.Store, len(local))
		if ferr := e.fallback.Do(ctx, local); ferr != nil {
			e.log.Error("fallback store failed", zap.Error(ferr))
			for i := range local {
				local[i].Allowed = true
			}
		} else {
			markApplied(local, via, e.fallback)
		}
		j := 0
		for i := range s.reqs {
			if s.owners[i].onError == onErrorLocal {
				s.reqs[i], s.via[i] = local[j], via[j]
				j++
			}
		}
	}
	s.scratch = local[:0]
	return e.failures.note(n, err)
}

func (f *storeFailures) note(n [onErrorLocal + 1]int, err error) error {
	for p, name := range [...]string{onErrorAllow: "allow", onErrorTempfail: "tempfail", onErrorLocal: "local"} {
		if n[p] > 0 && name != "" && f.rec != nil {
			f.rec.RecordFallback(name, n[p], err)
		}
	}
	if !f.lim.Allow() {
		f.held.Add(1)
		return nil
	}
	return fmt.Errorf("%w; on_store_error answered %d requests with allow, %d with tempfail, %d with local (%d similar failures not logged)",
		err, n[onErrorAllow], n[onErrorTempfail], n[onErrorLocal], f.held.Swap(0))
}
