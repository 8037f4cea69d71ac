package redisstore

import (
	"context"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// leaseSet is the concurrency slots this process holds, refreshed in the
// background while their sessions live. A slot of a process that stopped
// (crash, SIGKILL, lost network) is not refreshed and expires after
// lease_time: the other hosts take it back by themselves.
type leaseSet struct {
	mu sync.Mutex
	m  map[lease]struct{}
}

type lease struct{ key, holder string }

func (l *leaseSet) add(key, holder string) {
	l.mu.Lock()
	if l.m == nil {
		l.m = make(map[lease]struct{})
	}
	l.m[lease{key, holder}] = struct{}{}
	l.mu.Unlock()
}

// remove forgets a lease and reports whether it was held.
func (l *leaseSet) remove(key, holder string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.m[lease{key, holder}]
	delete(l.m, lease{key, holder})
	return ok
}

func (l *leaseSet) list() []lease {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]lease, 0, len(l.m))
	for k := range l.m {
		out = append(out, k)
	}
	return out
}

// Leases is the number of concurrency slots this process holds in Redis.
func (s *Store) Leases() int {
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	return len(s.leases.m)
}

// leaseGroups splits leases into script calls, by slot under Cluster;
// each group's idx says which of ls it holds.
func (s *Store) leaseGroups(ls []lease, args func(g *group)) []group {
	bySlot := make(map[uint16]int)
	var gs []group
	for i, l := range ls {
		slot := uint16(0)
		if s.cluster {
			slot = slotOf(l.key)
		}
		gi, ok := bySlot[slot]
		if !ok {
			gi = len(gs)
			bySlot[slot] = gi
			gs = append(gs, group{})
			args(&gs[gi])
		}
		gs[gi].keys = append(gs[gi].keys, l.key)
		gs[gi].args = append(gs[gi].args, l.holder)
		gs[gi].idx = append(gs[gi].idx, i)
	}
	return gs
}

// refreshLeases extends every lease this process holds: one round trip.
// A lease found gone is counted lost once and no longer held: its session
// is not counted until it reconnects.
func (s *Store) refreshLeases(ctx context.Context) {
	ls := s.leases.list()
	if len(ls) == 0 {
		return
	}
	gs := s.leaseGroups(ls, func(g *group) { g.args = []any{s.leaseMS} })
	var gone []lease
	err := s.call(ctx, placeRefresh, func(ctx context.Context) error {
		var first error
		for gi, c := range s.eval(ctx, refreshScript, gs) {
			found, err := c.Int64Slice()
			if err == nil && len(found) != len(gs[gi].idx) {
				err = fmt.Errorf("refresh script returned %d values for %d leases", len(found), len(gs[gi].idx))
			}
			if err != nil {
				if first == nil {
					first = err
				}
				continue
			}
			for j, i := range gs[gi].idx {
				if found[j] == 0 {
					gone = append(gone, ls[i])
				}
			}
		}
		return first
	})
	if err != nil {
		s.stats.refreshErrors.Add(1)
		if ok, n := s.warn.ok(); ok {
			s.log.Warn("redis store: could not refresh concurrency leases; they expire unless Redis answers within lease_time",
				zap.Int("leases", len(ls)), zap.Uint64("suppressed", n), zap.Error(err))
		}
		return
	}
	for _, l := range gone {
		// Gone from Redis: a restart without persistence, an outage
		// longer than lease_time, a reset. A lease released meanwhile is
		// out of the set already (unless the release is still between
		// its script and its bookkeeping: then it is counted too).
		if s.leases.remove(l.key, l.holder) {
			s.stats.leasesLost.Add(1)
		}
	}
}

// releaseAll gives back the leases still held, at Close.
func (s *Store) releaseAll(ctx context.Context) {
	ls := s.leases.list()
	if len(ls) == 0 || !s.brk.allow() {
		return
	}
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, l := range ls {
			p.ZRem(ctx, l.key, l.holder)
		}
		return nil
	})
	if err != nil {
		s.log.Warn("redis store: could not give back concurrency slots at close; they expire after lease_time",
			zap.Int("leases", len(ls)), zap.Error(err))
	}
}
