package redisstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"sluice/guard"
	"sluice/limits/counter"
)

// Hot keys are shared by the fleet: each host notes the keys it saw denied
// or more than half full, and writes the notes to Redis in the background
// (a second write on the SMTP path would cost a round trip). Hot reads
// them and each key's state as it is now.

// hotKeys bounds the names kept in Redis; hotPending the notes a host
// keeps between two writes.
const (
	hotKeys    = 10_000
	hotPending = 1000
)

type hotQueue struct {
	mu      sync.Mutex
	pending map[string]string // name -> params
	dropped uint64
}

type hotParams struct {
	kind     counter.Kind
	interval int64
	burst    int64
}

// hotName is a key's name in the hot set: its kind, then the key.
func hotName(kind counter.Kind, key []byte) string {
	if kind == counter.KindConcurrent {
		return "c:" + string(key)
	}
	return "r:" + string(key)
}

func (q *hotQueue) note(r *counter.Request) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.pending == nil {
		q.pending = make(map[string]string)
	}
	name := hotName(r.Kind, r.Key)
	if _, ok := q.pending[name]; !ok && len(q.pending) >= hotPending {
		q.dropped++
		return
	}
	q.pending[name] = fmt.Sprintf("%d:%d:%d", r.Kind, r.Interval, r.Burst)
}

func (q *hotQueue) take() map[string]string {
	q.mu.Lock()
	defer q.mu.Unlock()
	p := q.pending
	q.pending = nil
	return p
}

func (s *Store) hotSeenKey() string   { return s.prefix + "{hot}:seen" }
func (s *Store) hotParamsKey() string { return s.prefix + "{hot}:params" }

// flushHot writes the pending notes.
func (s *Store) flushHot(ctx context.Context) error {
	p := s.hot.take()
	if len(p) == 0 {
		return nil
	}
	seen := time.Now().UnixMilli()
	g := group{keys: []string{s.hotSeenKey(), s.hotParamsKey()}, args: []any{hotKeys}}
	for name, params := range p {
		g.args = append(g.args, name, params, seen)
	}
	err := s.call(ctx, placeHot, func(ctx context.Context) error { return s.eval(ctx, hotScript, []group{g})[0].Err() })
	if err != nil {
		s.log.Debug("redis store: could not write hot keys", zap.Int("keys", len(p)), zap.Error(err))
	}
	return err
}

func parseHotParams(v string) (hotParams, bool) {
	f := strings.Split(v, ":")
	if len(f) != 3 {
		return hotParams{}, false
	}
	k, err1 := strconv.ParseUint(f[0], 10, 8)
	iv, err2 := strconv.ParseInt(f[1], 10, 64)
	b, err3 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return hotParams{}, false
	}
	return hotParams{counter.Kind(k), iv, b}, true
}

// Hot lists up to n keys that some host of the fleet saw denied or more
// than half full and that are not idle yet, fullest first.
func (s *Store) Hot(ctx context.Context, n int) (_ []counter.HotKey, err error) {
	defer guard.RecoverErr(s.plog, placeHot, &err)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.closed.Load() {
		return nil, ErrClosed
	}
	if err := s.flushHot(ctx); err != nil {
		return nil, fmt.Errorf("redis store: hot keys: %w", err)
	}
	var out []counter.HotKey
	err = s.call(ctx, placeHot, func(ctx context.Context) error {
		var hp *redis.MapStringStringCmd
		var tm *redis.TimeCmd
		_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			hp, tm = p.HGetAll(ctx, s.hotParamsKey()), p.Time(ctx)
			return nil
		})
		if err != nil {
			return err
		}
		params, now := hp.Val(), tm.Val()
		type cand struct {
			name string
			p    hotParams
			get  *redis.StringCmd
			cnt  *redis.IntCmd
		}
		var cs []*cand
		_, err = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for name, v := range params {
				hp, ok := parseHotParams(v)
				if !ok || len(name) < 3 {
					continue
				}
				c := &cand{name: name, p: hp}
				key := s.redisKey(hp.kind, []byte(name[2:]))
				if hp.kind == counter.KindConcurrent {
					c.cnt = p.ZCount(ctx, key, strconv.FormatInt(now.UnixMilli(), 10), "+inf")
				} else {
					c.get = p.Get(ctx, key)
				}
				cs = append(cs, c)
			}
			return nil
		})
		if err != nil && err != redis.Nil {
			return err
		}
		nowNS := now.UnixNano()
		if s.now != nil {
			nowNS = s.now()
		}
		var idle []string
		for _, c := range cs {
			k := counter.HotKey{Key: c.name[2:], Kind: c.p.kind, Interval: c.p.interval, Burst: c.p.burst}
			if c.cnt != nil {
				k.Level = c.cnt.Val()
			} else if tat, err := strconv.ParseInt(c.get.Val(), 10, 64); err == nil && tat > nowNS && c.p.interval > 0 {
				r := counter.Request{Kind: counter.KindRate, Op: counter.OpPeek, Interval: c.p.interval, Burst: c.p.burst, Cost: 1}
				_, _, k.RetryAfter, _ = counter.GCRA(nowNS, tat, &r)
				k.Level = (tat - nowNS + c.p.interval - 1) / c.p.interval
			}
			if k.Level == 0 {
				idle = append(idle, c.name)
				continue
			}
			out = append(out, k)
		}
		if len(idle) > 0 {
			s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
				p.HDel(ctx, s.hotParamsKey(), idle...)
				p.ZRem(ctx, s.hotSeenKey(), toAny(idle)...)
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redis store: hot keys: %w", err)
	}
	counter.SortHot(out)
	if n >= 0 && len(out) > n {
		out = out[:n]
	}
	return out, nil
}

func toAny(a []string) []any {
	out := make([]any, len(a))
	for i, v := range a {
		out[i] = v
	}
	return out
}
