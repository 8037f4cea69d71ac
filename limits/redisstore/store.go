// Package redisstore keeps counters in Redis or Valkey, shared by a fleet
// of sluice hosts: GCRA and concurrency leases in Lua, one round trip per event.
package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/time/rate"

	"sluice/guard"
	"sluice/limits/counter"
)

// ErrClosed is returned by a Store used after Close.
var ErrClosed = errors.New("redis store: closed")

// ErrUnavailable is returned without trying while Redis is known to be
// down (the circuit breaker is open).
var ErrUnavailable = errors.New("redis store: unavailable, waiting before the next try")

// Store is the Redis counter.Store.
type Store struct {
	client   redis.UniversalClient
	cluster  bool
	log      *zap.Logger
	prefix   string
	timeout  time.Duration
	leaseMS  int64
	instance string // unique per process: holders are instance/session

	now    func() int64 // for tests: the time GCRA reads instead of Redis's TIME
	minTTL int64        // ms; with a test clock, keys must outlive real time

	brk        *breaker
	leases     leaseSet
	hot        hotQueue
	restricted nameQueue // keys restricted since the last write of the index
	stats      stats
	warn       *sampler    // store errors off the SMTP path
	down       *sampler    // the breaker opening
	back       *sampler    // the breaker closing
	rlog       *zap.Logger // go-redis's own lines, while this store is open
	plog       *zap.Logger // recovered panics: one line per 10 seconds

	closed    atomic.Bool
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

var _ counter.Store = (*Store)(nil)

// Option changes how Open builds a Store; for tests.
type Option func(*Store)

// WithClock makes GCRA read the time from now (Unix nanoseconds) instead
// of Redis's TIME. Leases still use Redis's clock.
func WithClock(now func() int64) Option {
	return func(s *Store) { s.now, s.minTTL = now, int64(time.Hour/time.Millisecond) }
}

// WithHook adds a go-redis hook to the client, e.g. to count round trips.
func WithHook(h redis.Hook) Option {
	return func(s *Store) { s.client.AddHook(h) }
}

// Open makes a store. It does not need Redis to be up: it tries once,
// briefly, and when Redis does not answer it says so loudly and starts
// anyway; calls then fail fast (and rules follow on_store_error) until
// Redis answers.
func Open(cfg Config, log *zap.Logger, opts ...Option) (*Store, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("redis store: %w", err)
	}
	ro, err := cfg.options()
	if err != nil {
		return nil, fmt.Errorf("redis store: %w", err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	rlog := log.Named("go-redis")
	redisLogger.Store(rlog)
	s := &Store{
		cluster:  cfg.Cluster,
		log:      log,
		prefix:   cfg.Prefix,
		timeout:  cfg.Timeout.D(),
		leaseMS:  int64(cfg.LeaseTime.D() / time.Millisecond),
		rlog:     rlog,
		plog:     log.WithOptions(zap.WrapCore(samplePanics)),
		instance: instanceID(),
		brk:      newBreaker(cfg.RetryBackoff.D(), cfg.RetryBackoffMax.D()),
		warn:     newSampler(),
		down:     newSampler(),
		back:     newSampler(),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	ro.Dialer = boundedDialer(redis.NewDialer(&redis.Options{DialTimeout: ro.DialTimeout, TLSConfig: ro.TLSConfig}),
		func(error) { s.stats.refused.Add(1) })
	s.client = redis.NewUniversalClient(ro)
	for _, o := range opts {
		o(s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.DialTimeout.D()+s.timeout)
	err = s.loadScripts(ctx)
	cancel()
	if err != nil {
		s.brk.done(false)
		msg := "REDIS STORE UNREACHABLE at start: sluice runs, and every rule follows its on_store_error until Redis answers"
		if errors.Is(err, ErrReplyRefused) {
			msg = "REDIS STORE REPLY REFUSED at start: the server at the Redis address sent what Redis does not; sluice runs, and every rule follows its on_store_error until Redis answers"
		}
		log.Error(msg, zap.Strings("addrs", cfg.Addrs), zap.Error(err))
	} else {
		log.Info("redis store connected", zap.Strings("addrs", cfg.Addrs), zap.Bool("cluster", cfg.Cluster),
			zap.String("master_name", cfg.MasterName), zap.String("instance", s.instance))
	}
	guard.Go(s.plog, "redis store background", func() { s.run(cfg.LeaseTime.D()/3, cfg.RetryBackoff.D()) })
	return s, nil
}

// samplePanics lets one line about a recovered panic through every 10
// seconds: a reply that makes go-redis panic may come on every call.
func samplePanics(c zapcore.Core) zapcore.Core {
	return zapcore.NewSamplerWithOptions(c, 10*time.Second, 1, 0)
}

// instanceID names this process in lease holders, so that sessions of two
// hosts (whose session numbers both start at 1) never share a slot.
func instanceID() string {
	host, _ := os.Hostname()
	var b [4]byte
	rand.Read(b[:])
	return host + ":" + strconv.Itoa(os.Getpid()) + ":" + hex.EncodeToString(b[:])
}

// loadScripts puts the scripts in every server's cache, so that EVALSHA
// finds them; a server that lost them (restart, SCRIPT FLUSH) answers
// NOSCRIPT and gets the script's source once.
func (s *Store) loadScripts(ctx context.Context) (err error) {
	defer guard.RecoverErr(s.plog, placeLoad, &err)
	load := func(ctx context.Context, c redis.Scripter) error {
		for _, sc := range append([]*script{takeScript, refreshScript, hotScript}, outboundScripts...) {
			if err := c.ScriptLoad(ctx, sc.src).Err(); err != nil {
				return err
			}
		}
		return nil
	}
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return load(ctx, c) })
	}
	return load(ctx, s.client)
}

// redisKey is the Redis key of a counter: prefix, kind, and the key with
// its dimension part ("sender:alice@example.org" in "rule:0:sender:...")
// as the Cluster hash tag, so that every window and rule about the same
// sender, IP or user lives on one slot and is judged by one script.
func (s *Store) redisKey(kind counter.Kind, key []byte) string {
	k := kindPrefix[kind]
	split, colons := 0, 0
	for i, c := range key {
		if c == ':' {
			if colons++; colons == 2 {
				split = i + 1
				break
			}
		}
	}
	b := make([]byte, 0, len(s.prefix)+len(k)+len(key)+2)
	b = append(b, s.prefix...)
	b = append(b, k...)
	b = append(b, key[:split]...)
	b = append(b, '{')
	b = append(b, key[split:]...)
	b = append(b, '}')
	return string(b)
}

// kindPrefix starts the Redis key of each kind; the held queue ids of a
// restriction are under "q:" beside its "x:".
var kindPrefix = [...]string{
	counter.KindRate: "r:", counter.KindConcurrent: "c:", counter.KindDistinct: "d:",
	counter.KindRestrict: "x:", counter.KindOverride: "o:",
}

func (s *Store) holder(h []byte) string { return s.instance + "/" + string(h) }

// validRequest is counter's check plus the Redis store's own bound.
func validRequest(r *counter.Request) error {
	if err := r.Validate(); err != nil {
		return err
	}
	if r.Kind == counter.KindRate && (r.Burst > MaxSpan/r.Interval || r.Cost > MaxSpan/r.Interval) {
		return fmt.Errorf("interval %d times burst %d or cost %d is above the Redis store's 52 days", r.Interval, r.Burst, r.Cost)
	}
	return nil
}

// Do applies the requests of one event. With one server or Sentinel it is
// one script call, all-or-nothing as counter.Store documents. Under
// Cluster the requests are grouped by slot, one script call per slot, all
// in one pipeline (one round trip, to each node in parallel); each slot's
// group is all-or-nothing, and when a group refuses the event, what the
// other groups applied is given back by a second call (see the README).
func (s *Store) Do(ctx context.Context, reqs []counter.Request) (err error) {
	defer guard.RecoverErr(s.plog, placeDo, &err)
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return ErrClosed
	}
	for i := range reqs {
		if err := validRequest(&reqs[i]); err != nil {
			return fmt.Errorf("counter %q: %w", reqs[i].Key, err)
		}
	}
	if len(reqs) == 0 {
		return nil
	}
	return s.call(ctx, placeDo, func(ctx context.Context) error {
		return s.do(ctx, reqs)
	})
}

// Places of recovered panics, for guard's counts.
const (
	placeDo       = "redis store do"
	placeReset    = "redis store reset"
	placeSetAllow = "redis store set exemption"
	placeAllows   = "redis store exemptions"
	placeHot      = "redis store hot keys"
	placeRefresh  = "redis store lease refresh"
	placePing     = "redis store ping"
	placeClose    = "redis store close"
	placeLoad     = "redis store load scripts"
)

// call runs f under the store's timeout and circuit breaker. A panic in
// f is f's error, counted under where: the breaker sees a failure, and
// rules follow on_store_error.
func (s *Store) call(ctx context.Context, where string, f func(context.Context) error) error {
	if !s.brk.allow() {
		s.stats.fastFails.Add(1)
		return ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	s.stats.calls.Add(1)
	err := s.guarded(ctx, where, f)
	switch {
	case err == nil || answered(err) || errors.Is(err, counter.ErrStale):
		if _, closed := s.brk.done(true); closed {
			if ok, n := s.back.ok(); ok {
				s.log.Warn("redis store answers again; counting in Redis resumes", zap.Uint64("suppressed", n))
			}
		}
	case errors.Is(err, context.Canceled) && ctx.Err() == context.Canceled:
		s.brk.abandon()
	default:
		s.stats.errors.Add(1)
		if opened, _ := s.brk.done(false); opened {
			s.stats.opens.Add(1)
			if ok, n := s.down.ok(); ok {
				msg := "REDIS STORE UNREACHABLE: rules follow on_store_error; retrying with backoff"
				if errors.Is(err, ErrReplyRefused) {
					msg = "REDIS STORE REPLY REFUSED: the server at the Redis address sent what Redis does not; rules follow on_store_error; retrying with backoff"
				}
				s.log.Error(msg, zap.Uint64("suppressed", n), zap.Error(err))
			}
		}
	}
	return err
}

func (s *Store) guarded(ctx context.Context, where string, f func(context.Context) error) (err error) {
	defer guard.RecoverErr(s.plog, where, &err)
	return f(ctx)
}

// answered reports an error that Redis itself gave about the request: it
// is up, and the breaker stays closed.
func answered(err error) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	for _, p := range []string{"CLUSTERDOWN", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "NOREPLICAS", "BUSY"} {
		if redis.HasErrorPrefix(err, p) {
			return false
		}
	}
	return true
}

// fill copies a result into its request and keeps the store's own books:
// the leases it holds and the keys worth naming in Hot.
func (s *Store) fill(r *counter.Request, res result) {
	r.Allowed, r.RetryAfter, r.Level, r.Changed = res.allowed == 1, time.Duration(res.retry), res.level, res.changed == 1
	if r.Allowed {
		r.RetryAfter = 0
	}
	switch r.Kind {
	case counter.KindRestrict:
		if r.Changed {
			s.restricted.note(string(r.Key))
		}
		return
	case counter.KindDistinct, counter.KindOverride:
		return
	}
	if r.Kind == counter.KindConcurrent && res.applied == 1 {
		key := s.redisKey(r.Kind, r.Key)
		if r.Op == counter.OpRefund {
			s.leases.remove(key, s.holder(r.Holder))
		} else if r.Op == counter.OpTake {
			s.leases.add(key, s.holder(r.Holder))
		}
	}
	if r.Op == counter.OpTake && (!r.Allowed || r.Level*2 > r.Burst) {
		s.hot.note(r)
	}
}

// Reset forgets the given keys, rate, concurrency or distinct.
func (s *Store) Reset(ctx context.Context, keys [][]byte) (err error) {
	defer guard.RecoverErr(s.plog, placeReset, &err)
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return ErrClosed
	}
	if len(keys) == 0 {
		return nil
	}
	return s.call(ctx, placeReset, func(ctx context.Context) error {
		_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			names := make([]any, 0, 2*len(keys))
			for _, k := range keys {
				for _, kind := range []counter.Kind{counter.KindRate, counter.KindConcurrent} {
					p.Del(ctx, s.redisKey(kind, k))
					names = append(names, hotName(kind, k))
				}
				p.Del(ctx, s.redisKey(counter.KindDistinct, k))
			}
			p.ZRem(ctx, s.hotSeenKey(), names...)
			p.HDel(ctx, s.hotParamsKey(), toStrings(names)...)
			return nil
		})
		return err
	})
}

func toStrings(a []any) []string {
	out := make([]string, len(a))
	for i, v := range a {
		out[i] = v.(string)
	}
	return out
}

// Len is unknown: the keys are in Redis, shared with other hosts.
func (s *Store) Len() int { return -1 }

// Close stops the background work, gives back the slots this process
// still holds and closes the connections. Later calls return nil.
func (s *Store) Close() (err error) {
	defer guard.RecoverErr(s.plog, placeClose, &err)
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		ctx, cancel := context.WithTimeout(context.Background(), 2*s.timeout)
		defer cancel()
		s.flushHot(ctx)
		s.flushRestricted(ctx)
		s.releaseAll(ctx)
		s.closed.Store(true)
		err = s.client.Close()
		redisLogger.CompareAndSwap(s.rlog, nil)
	})
	return err
}

// run refreshes this process's leases, writes hot keys now and then, and
// while Redis is down tries it again with backoff (the breaker spaces the
// tries), so that the first SMTP command after Redis is back does not
// pay for the reconnection.
func (s *Store) run(refreshEvery, probeEvery time.Duration) {
	defer close(s.done)
	refresh := time.NewTicker(refreshEvery)
	defer refresh.Stop()
	hot := time.NewTicker(time.Second)
	defer hot.Stop()
	probe := time.NewTicker(probeEvery)
	defer probe.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-probe.C:
			if s.brk.isOpen() {
				s.Ping(context.Background())
			}
		case <-refresh.C:
			s.tick(refreshEvery, placeRefresh, s.refreshLeases)
		case <-hot.C:
			s.tick(2*s.timeout, placeHot, func(ctx context.Context) { s.flushHot(ctx) })
			s.tick(2*s.timeout, placeRestrictions, s.flushRestricted)
		}
	}
}

// tick runs one piece of background work under a timeout; a panic in it
// is recovered, and the loop goes on.
func (s *Store) tick(timeout time.Duration, where string, f func(context.Context)) {
	defer guard.Recover(s.plog, where)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	f(ctx)
}

// Client is the underlying go-redis client, for tests and benchmarks.
func (s *Store) Client() redis.UniversalClient { return s.client }

// sampler lets a few log lines of a kind through and counts the others.
type sampler struct {
	lim        *rate.Limiter
	suppressed atomic.Uint64
}

func newSampler() *sampler { return &sampler{lim: rate.NewLimiter(rate.Every(10*time.Second), 3)} }

// ok reports whether to log now, and how many lines were held back since
// the last one.
func (m *sampler) ok() (bool, uint64) {
	if !m.lim.Allow() {
		m.suppressed.Add(1)
		return false, 0
	}
	return true, m.suppressed.Swap(0)
}

// Ping checks that Redis answers, through the breaker (while Redis is
// known to be down it fails at once): for readiness probes.
func (s *Store) Ping(ctx context.Context) (err error) {
	defer guard.RecoverErr(s.plog, placePing, &err)
	if s.closed.Load() {
		return ErrClosed
	}
	return s.call(ctx, placePing, func(ctx context.Context) error { return s.client.Ping(ctx).Err() })
}

// crash stops the store as a killed process would: no release, no more
// refreshes. For tests of lease expiry.
func (s *Store) crash() {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		s.closed.Store(true)
		s.client.Close()
		redisLogger.CompareAndSwap(s.rlog, nil)
	})
}

// go-redis logs dial failures on its own, to stderr, through one logger
// for the whole process: they go to the logger of the store opened last,
// at debug level (the store logs outages itself, once per outage), and
// nowhere once that store is closed.
var redisLogger atomic.Pointer[zap.Logger]

func init() { redis.SetLogger(redisLog{}) }

type redisLog struct{}

func (redisLog) Printf(_ context.Context, format string, v ...any) {
	if l := redisLogger.Load(); l != nil {
		l.Debug(fmt.Sprintf(format, v...))
	}
}
