package redisstore

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"sluice/limits/counter"
)

// group is one script call: keys on one slot (any keys without Cluster),
// and which requests of the event they are.
type group struct {
	keys []string
	args []any
	idx  []int
}

// eval runs sc once per group, all in one pipeline: one round trip (under
// Cluster, one to each node involved, in parallel). Groups whose server
// lacked the script (NOSCRIPT, after a restart or SCRIPT FLUSH) are sent
// again with the source, which the server then keeps.
func (s *Store) eval(ctx context.Context, sc *script, groups []group) []*redis.Cmd {
	cmds := s.send(ctx, groups, func(c redis.Scripter, g group) *redis.Cmd {
		return c.EvalSha(ctx, sc.sha, g.keys, g.args...)
	})
	var again []group
	var where []int
	for i, c := range cmds {
		if c.Err() != nil && redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			again, where = append(again, groups[i]), append(where, i)
		}
	}
	if len(again) > 0 {
		s.stats.reloads.Add(1)
		re := s.send(ctx, again, func(c redis.Scripter, g group) *redis.Cmd {
			return c.Eval(ctx, sc.src, g.keys, g.args...)
		})
		for j, i := range where {
			cmds[i] = re[j]
		}
	}
	return cmds
}

func (s *Store) send(ctx context.Context, groups []group, f func(redis.Scripter, group) *redis.Cmd) []*redis.Cmd {
	s.stats.roundTrips.Add(1)
	cmds := make([]*redis.Cmd, len(groups))
	if len(groups) == 1 {
		cmds[0] = f(s.client, groups[0])
		return cmds
	}
	pipe := s.client.Pipeline()
	for i, g := range groups {
		cmds[i] = f(pipe, g)
	}
	pipe.Exec(ctx) // each command holds its own error
	return cmds
}

// groups builds the take script's calls for reqs: one, or one per slot
// under Cluster.
func (s *Store) groups(reqs []counter.Request) []group {
	keys := make([]string, len(reqs))
	for i := range reqs {
		keys[i] = s.redisKey(reqs[i].Kind, reqs[i].Key)
	}
	if !s.cluster {
		idx := make([]int, len(reqs))
		for i := range idx {
			idx[i] = i
		}
		return []group{s.group(reqs, keys, idx)}
	}
	var gs []group
	slots := make([]uint16, len(reqs))
	done := make([]bool, len(reqs))
	for i := range reqs {
		slots[i] = slotOf(keys[i])
	}
	for i := range reqs {
		if done[i] {
			continue
		}
		var idx []int
		for j := i; j < len(reqs); j++ {
			if !done[j] && slots[j] == slots[i] {
				idx, done[j] = append(idx, j), true
			}
		}
		gs = append(gs, s.group(reqs, keys, idx))
	}
	return gs
}

func (s *Store) group(reqs []counter.Request, keys []string, idx []int) group {
	g := group{keys: make([]string, len(idx)), args: make([]any, argHeader, argHeader+argStride*len(idx)), idx: idx}
	g.args[0], g.args[1] = "", ""
	if s.now != nil {
		now := s.now()
		g.args[0], g.args[1] = now/1e9, now%1e9
	}
	g.args[2], g.args[3] = s.leaseMS, s.minTTL
	for j, i := range idx {
		r := &reqs[i]
		g.keys[j] = keys[i]
		flags := 0
		if r.Blocking {
			flags |= 1
		}
		if r.Strict {
			flags |= 2
		}
		text := ""
		switch r.Kind {
		case counter.KindConcurrent:
			text = s.holder(r.Holder)
		case counter.KindDistinct, counter.KindOverride:
			text = string(r.Member)
		}
		g.args = append(g.args, int(r.Kind), int(r.Op), r.Interval, r.Burst, r.Cost, flags, text, int(r.Group), r.Until)
	}
	return g
}

// result is what the take script said about one request.
type result struct{ allowed, retry, level, applied, changed, prev int64 }

// do runs an event's requests and fills their results.
func (s *Store) do(ctx context.Context, reqs []counter.Request) error {
	groups := s.groups(reqs)
	if len(groups) > 1 && mixed(reqs) {
		return s.doRefundsLast(ctx, reqs)
	}
	res, ok, err := s.run1(ctx, takeScript, groups, len(reqs))
	stale := false
	for i := range reqs {
		stale = stale || ok[i] && reqs[i].Kind == counter.KindOverride && res[i].allowed == 0
	}
	if len(groups) > 1 {
		refused := false
		for i := range reqs {
			if ok[i] && res[i].allowed == 0 && reqs[i].Op == counter.OpTake && reqs[i].Blocking {
				refused = true
			}
		}
		if err != nil || refused || stale {
			s.compensate(ctx, reqs, res, err != nil || stale)
		}
	}
	if err != nil {
		return fmt.Errorf("redis store: %w", err)
	}
	if stale {
		return s.staleOverrides(ctx, reqs)
	}
	for i := range reqs {
		s.fill(&reqs[i], res[i])
	}
	return nil
}

// run1 evaluates the take script for groups and gathers the results by
// request; ok tells which requests got one. err is the first failure.
func (s *Store) run1(ctx context.Context, sc *script, groups []group, n int) (res []result, ok []bool, err error) {
	res, ok = make([]result, n), make([]bool, n)
	for gi, c := range s.eval(ctx, sc, groups) {
		g := groups[gi]
		out, e := c.Int64Slice()
		if e == nil && len(out) != resStride*len(g.idx) {
			e = fmt.Errorf("script returned %d values for %d requests", len(out), len(g.idx))
		}
		if e != nil {
			if err == nil {
				err = e
			}
			continue
		}
		for j, i := range g.idx {
			o := out[resStride*j:]
			res[i] = result{o[0], o[1], o[2], o[3], o[4], o[5]}
			ok[i] = true
		}
	}
	return res, ok, err
}

// compensate undoes, across slots, what an event must not keep: after an
// error everything that was applied (an error means nothing was), after
// a refusal the non-strict requests that slots other than the refusing
// one applied. A take is undone by a refund and a refund by a forced take.
// It costs a second round trip, only on those paths.
func (s *Store) compensate(ctx context.Context, reqs []counter.Request, res []result, all bool) {
	var undo []counter.Request
	var which []int
	for i := range reqs {
		r := reqs[i]
		if res[i].applied != 1 || r.Op == counter.OpPeek || (r.Strict && !all) {
			continue
		}
		switch r.Kind {
		case counter.KindRestrict:
			// The crossing that set it was real: a restriction stays.
			continue
		case counter.KindDistinct:
			if r.Op != counter.OpTake {
				continue
			}
			if res[i].changed != 1 {
				r.Until = res[i].prev // renewed: back to when it was seen before
			}
		}
		if r.Op == counter.OpTake {
			r.Op = counter.OpRefund
		} else {
			r.Op = counter.OpTake
		}
		r.Blocking, r.Strict = false, true
		undo, which = append(undo, r), append(which, i)
	}
	if len(undo) == 0 {
		return
	}
	s.stats.compensations.Add(1)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	out, ok, err := s.run1(ctx, takeScript, s.groups(undo), len(undo))
	// Undone or not, the event does not hold what it took: a slot that
	// could not be given back expires with its lease, units drain.
	for j, i := range which {
		res[i].applied, res[i].changed = 0, 0
		if ok[j] {
			res[i].level = out[j].level
		}
	}
	if err != nil {
		s.stats.errors.Add(1)
		if ok, n := s.warn.ok(); ok {
			s.log.Warn("redis store: could not give back what a refused event counted on another slot; it drains with time",
				zap.Int("requests", len(undo)), zap.Uint64("suppressed", n), zap.Error(err))
		}
	}
}

// mixed reports an event with both refunds and blocking takes. Across
// slots, a refund applied by one slot cannot be undone exactly when
// another refuses the event (it may have stopped at zero), so such events
// run their refunds after the takes. The engine never mixes them: it
// gives back in calls of their own.
func mixed(reqs []counter.Request) bool {
	var refund, take bool
	for i := range reqs {
		refund = refund || reqs[i].Op == counter.OpRefund
		take = take || reqs[i].Op == counter.OpTake && reqs[i].Blocking
	}
	return refund && take
}

// doRefundsLast runs the takes and peeks of reqs, then the refunds: as
// refunds when the event was not refused (or they are strict), else as
// peeks, which report the level without applying.
func (s *Store) doRefundsLast(ctx context.Context, reqs []counter.Request) error {
	var first, last []counter.Request
	var fi, li []int
	for i := range reqs {
		if reqs[i].Op == counter.OpRefund {
			last, li = append(last, reqs[i]), append(li, i)
		} else {
			first, fi = append(first, reqs[i]), append(fi, i)
		}
	}
	if err := s.do(ctx, first); err != nil {
		return err
	}
	refused := false
	for j, i := range fi {
		reqs[i] = first[j]
		if !first[j].Allowed && first[j].Op == counter.OpTake && first[j].Blocking {
			refused = true
		}
	}
	if refused {
		for j := range last {
			if !last[j].Strict {
				last[j].Op = counter.OpPeek
			}
		}
	}
	if err := s.do(ctx, last); err != nil {
		// The takes stay applied: the event is reported failed, and what
		// it counted drains with time.
		return err
	}
	for j, i := range li {
		op := reqs[i].Op
		reqs[i] = last[j]
		reqs[i].Op, reqs[i].Allowed, reqs[i].RetryAfter = op, true, 0
	}
	return nil
}
