// Package limits counts what clients and senders do, rule by rule, and says
// which limits an SMTP event crosses; it knows nothing of the milter protocol.
package limits

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"sluice/limits/counter"
	"sluice/lists"
	"sluice/policy"
)

// Engine answers, for each SMTP event, which rules it crosses. It is safe
// for concurrent use; per-connection state lives in a Session.
type Engine struct {
	rules    []*rule
	byStage  [policy.StageData + 1][]*rule
	trusted  *lists.List
	store    counter.Store
	fallback counter.Store // for rules with on_store_error = "local"
	mode     policy.Mode   // the global mode: a denial only refuses in enforce mode
	onError  storeErrorPolicy
	log      *zap.Logger

	allows      atomic.Pointer[allowCache]
	refreshing  atomic.Bool
	sessionSeq  atomic.Uint64
	allowMaxAge time.Duration
}

// Options are the parts of an Engine that outlive a reload.
type Options struct {
	Store    counter.Store
	Fallback counter.Store // may be nil: "local" then behaves like "allow"
	Mode     policy.Mode
	Log      *zap.Logger
}

// New compiles the rules. The store is shared: a reload makes a new Engine
// on the same store, so counters survive it.
func New(cfg *Config, set *lists.Set, opt Options) (*Engine, error) {
	e := &Engine{store: opt.Store, fallback: opt.Fallback, mode: opt.Mode, log: opt.Log, allowMaxAge: 2 * time.Second}
	if e.log == nil {
		e.log = zap.NewNop()
	}
	var err error
	if e.trusted, err = trustedList(cfg.Trusted); err != nil {
		return nil, err
	}
	if e.onError, err = parseStoreErrorPolicy(cfg.Store.OnStoreError); err != nil {
		return nil, err
	}
	names := make(map[string]bool)
	if set != nil {
		for _, n := range set.Names() {
			names[n] = true
		}
	}
	for i := range cfg.Rules {
		r, err := compileRule(&cfg.Rules[i], set, names)
		if err != nil {
			return nil, fmt.Errorf("limit %q: %w", cfg.Rules[i].Name, err)
		}
		if r.onError == onErrorDefault {
			r.onError = e.onError
		}
		e.rules = append(e.rules, r)
		st := r.count.stage()
		e.byStage[st] = append(e.byStage[st], r)
	}
	e.allows.Store(&allowCache{})
	return e, nil
}

// Trusted reports whether the client is on the global trusted list.
func (e *Engine) Trusted(ip netip.Addr) bool { return isTrusted(e.trusted, ip) }

// Needs reports whether any rule counts at the stage, so the milter can
// leave unneeded events out of the negotiation.
func (e *Engine) Needs(st policy.Stage) bool { return len(e.byStage[st]) > 0 }

// Session is one MTA connection's counting state: the slots it holds, the
// reservations of its transaction, and scratch space reused by every check.
type Session struct {
	holder   []byte
	buf      []byte
	reqs     []counter.Request
	owners   []*rule
	refused  bool // the store refused the last checked event
	verdicts []policy.Verdict
	scratch  []counter.Request
	leases   []held // concurrent slots, released at Close
	reserved []held // count_on = accepted: released unless the message is accepted
}

type held struct {
	key  []byte
	kind counter.Kind
	iv   int64
	cost int64
	b    int64
}

// NewSession starts the state of one MTA connection.
func (e *Engine) NewSession() *Session {
	id := e.sessionSeq.Add(1)
	return &Session{holder: strconv.AppendUint(nil, id, 36)}
}

// Check counts the event at stage st and returns the verdicts of the rules
// it crosses (nil when none). Call Settle once the stage's decision is known.
// A store failure is handled by each rule's on_store_error; the error is
// returned only for logging.
func (e *Engine) Check(ctx context.Context, st policy.Stage, f *policy.Facts, s *Session) ([]policy.Verdict, error) {
	s.buf, s.reqs, s.owners, s.verdicts, s.refused = s.buf[:0], s.reqs[:0], s.owners[:0], s.verdicts[:0], false
	for _, r := range e.byStage[st] {
		if !e.applies(r, f) {
			continue
		}
		if r.maxRcpt > 0 && f.RcptCount >= r.maxRcpt {
			s.verdicts = append(s.verdicts, r.verdict(fmt.Sprintf("message:%d rcpt", f.RcptCount+1), 0, int64(f.RcptCount+1)))
		}
		if len(r.windows) > 0 || r.count == countConcurrent {
			e.addRequests(r, f, s)
		}
		if r.final {
			break
		}
	}
	if len(s.reqs) == 0 {
		return s.result(), nil
	}
	err := e.store.Do(ctx, s.reqs)
	if err != nil {
		e.storeFailed(ctx, s, err)
	}
	for i := range s.reqs {
		q := &s.reqs[i]
		if !q.Allowed && q.Blocking {
			s.refused = true
		}
	}
	for i := 0; i < len(s.reqs); {
		r := s.owners[i]
		j, denied := i, -1
		for ; j < len(s.reqs) && s.owners[j] == r; j++ {
			if !s.reqs[j].Allowed && (denied < 0 || s.reqs[j].RetryAfter > s.reqs[denied].RetryAfter) {
				denied = j
			}
		}
		if denied >= 0 {
			q := &s.reqs[denied]
			s.verdicts = append(s.verdicts, r.verdict(string(dimKey(q.Key)), q.RetryAfter, q.Level+q.Cost))
		}
		i = j
	}
	return s.result(), err
}

func (s *Session) result() []policy.Verdict {
	if len(s.verdicts) == 0 {
		return nil
	}
	return s.verdicts
}

// addRequests appends one request per window of r ("name:0:key", "name:1:key"),
// or one concurrency request ("name:c:key").
func (e *Engine) addRequests(r *rule, f *policy.Facts, s *Session) {
	start := len(s.buf)
	s.buf = append(s.buf, r.name...)
	s.buf = append(s.buf, ':', '0', ':')
	dimStart := len(s.buf)
	var ok bool
	if s.buf, ok = r.keyer.appendKey(s.buf, f); !ok || e.exempt(s.buf[dimStart:]) {
		s.buf = s.buf[:start]
		return
	}
	blocking := r.action.Refuses() && r.mode.Soften(e.mode) == policy.ModeEnforce
	if r.count == countConcurrent {
		s.buf[dimStart-2] = 'c'
		s.reqs = append(s.reqs, counter.Request{Key: s.buf[start:], Kind: counter.KindConcurrent, Burst: r.max, Cost: 1, Blocking: blocking, Strict: r.strict, Holder: s.holder})
		s.owners = append(s.owners, r)
		return
	}
	cost := int64(1)
	if r.count == countBytes {
		cost = max(f.Size, 1)
	}
	end := len(s.buf)
	for i, w := range r.windows {
		key := s.buf[start:end]
		if i > 0 {
			ks := len(s.buf)
			s.buf = append(s.buf, s.buf[start:end]...)
			s.buf[ks+dimStart-start-2] = byte('0' + i)
			key = s.buf[ks:]
		}
		s.reqs = append(s.reqs, counter.Request{Key: key, Kind: counter.KindRate, Interval: w.interval, Burst: w.burst, Cost: cost, Blocking: blocking, Strict: r.strict})
		s.owners = append(s.owners, r)
	}
}

// dimKey strips "rule:w:" from a store key.
func dimKey(key []byte) []byte {
	n := 0
	for i, c := range key {
		if c == ':' {
			if n++; n == 2 {
				return key[i+1:]
			}
		}
	}
	return key
}

func (e *Engine) applies(r *rule, f *policy.Facts) bool {
	if f.Trusted && !r.trusted {
		return false
	}
	if r.except != nil && r.except.ContainsIP(f.ClientIP) {
		return false
	}
	return r.match.matches(f)
}

func (r *rule) verdict(key string, retry time.Duration, seen int64) policy.Verdict {
	v := policy.Verdict{
		Source: r.name, Action: r.action, Mode: r.mode, Reply: r.reply, Delay: r.delay,
		Key: key, Limit: r.limit, RetryAfter: retry,
	}
	switch {
	case r.count == countConcurrent:
		v.Detail = fmt.Sprintf("open=%d", seen)
	case r.maxRcpt > 0 && len(r.windows) == 0:
		v.Detail = fmt.Sprintf("rcpt=%d", seen)
		if r.reply == nil && r.action == policy.ActionTempfail {
			v.Reply = tooManyRcpts
		}
		v.Text = "Too many recipients ({limit})"
	default:
		v.Detail = fmt.Sprintf("count=%d", seen)
	}
	return v
}

// Postfix answers its own smtpd_recipient_limit with this code.
var tooManyRcpts = policy.MustReply("452 4.5.3 Too many recipients ({limit})")

// storeFailed answers every request by its rule's on_store_error.
func (e *Engine) storeFailed(ctx context.Context, s *Session, err error) {
	local := s.scratch[:0]
	for i := range s.reqs {
		q := &s.reqs[i]
		switch s.owners[i].onError {
		case onErrorTempfail:
			q.Allowed, q.RetryAfter = false, 0
		case onErrorLocal:
			if e.fallback != nil {
				local = append(local, *q)
				continue
			}
			q.Allowed = true
		default:
			q.Allowed = true
		}
	}
	if len(local) > 0 {
		if ferr := e.fallback.Do(ctx, local); ferr != nil {
			e.log.Error("fallback store failed", zap.Error(ferr))
			for i := range local {
				local[i].Allowed = true
			}
		}
		j := 0
		for i := range s.reqs {
			if s.owners[i].onError == onErrorLocal {
				s.reqs[i] = local[j]
				j++
			}
		}
	}
	s.scratch = local[:0]
	// A tempfail for an unreachable store must not be mistaken for a limit.
	for i := range s.reqs {
		if s.owners[i].onError == onErrorTempfail {
			s.reqs[i].Blocking = true
		}
	}
}

// Settle applies the stage's decision: a refused event gives back what it
// took (unless its rule is strict); an accepted one keeps its concurrency
// slots until Close and its count_on = "accepted" reservations until
// EndMessage.
func (e *Engine) Settle(ctx context.Context, s *Session, refused bool) {
	refunds := s.scratch[:0]
	for i := range s.reqs {
		q := &s.reqs[i]
		if !(q.Strict || q.Allowed && !s.refused) {
			continue // the store did not apply it
		}
		r := s.owners[i]
		switch {
		case q.Kind == counter.KindConcurrent:
			if refused && !q.Strict {
				refunds = append(refunds, refund(q))
			} else {
				s.leases = append(s.leases, hold(q))
			}
		case refused && !q.Strict:
			refunds = append(refunds, refund(q))
		case !refused && r.accepted:
			s.reserved = append(s.reserved, hold(q))
		}
	}
	s.reqs, s.owners = s.reqs[:0], s.owners[:0]
	e.refund(ctx, refunds)
	s.scratch = refunds[:0]
}

// EndMessage closes the transaction: an accepted message keeps what it
// counted; an aborted or refused one gives its reservations back.
func (e *Engine) EndMessage(ctx context.Context, s *Session, accepted bool) {
	if !accepted && len(s.reserved) > 0 {
		e.release(ctx, s, s.reserved)
	}
	s.reserved = s.reserved[:0]
}

// Close ends the session: its slots are freed and open reservations given back.
func (e *Engine) Close(ctx context.Context, s *Session) {
	e.release(ctx, s, s.reserved)
	e.release(ctx, s, s.leases)
	s.reserved, s.leases = nil, nil
}

func (e *Engine) release(ctx context.Context, s *Session, hs []held) {
	if len(hs) == 0 {
		return
	}
	reqs := make([]counter.Request, len(hs))
	for i, h := range hs {
		reqs[i] = counter.Request{Key: h.key, Kind: h.kind, Op: counter.OpRefund, Interval: h.iv, Burst: h.b, Cost: h.cost, Holder: s.holder}
	}
	e.refund(ctx, reqs)
}

func (e *Engine) refund(ctx context.Context, reqs []counter.Request) {
	if len(reqs) == 0 {
		return
	}
	if err := e.store.Do(ctx, reqs); err != nil {
		e.log.Warn("could not give back counted events", zap.Int("keys", len(reqs)), zap.Error(err))
		if e.fallback != nil {
			_ = e.fallback.Do(ctx, reqs)
		}
	}
}

func refund(q *counter.Request) counter.Request {
	return counter.Request{Key: q.Key, Kind: q.Kind, Op: counter.OpRefund, Interval: q.Interval, Burst: q.Burst, Cost: q.Cost, Holder: q.Holder}
}

func hold(q *counter.Request) held {
	return held{key: append([]byte(nil), q.Key...), kind: q.Kind, iv: q.Interval, cost: q.Cost, b: q.Burst}
}

// allowCache is the exemptions in force, refreshed from the store now and
// then so that an exemption set on one host reaches the others.
type allowCache struct {
	at    time.Time
	until map[string]time.Time
}

func (e *Engine) exempt(key []byte) bool {
	c := e.allows.Load()
	if time.Since(c.at) > e.allowMaxAge && e.refreshing.CompareAndSwap(false, true) {
		go e.refreshAllows()
	}
	if len(c.until) == 0 {
		return false
	}
	t, ok := c.until[string(key)]
	return ok && time.Now().Before(t)
}

func (e *Engine) refreshAllows() {
	defer e.refreshing.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := e.store.Allows(ctx)
	if err != nil {
		e.log.Warn("could not read exemptions", zap.Error(err))
		m = e.allows.Load().until
	}
	e.allows.Store(&allowCache{at: time.Now(), until: m})
}

// UsesHelo reports whether any rule reads the HELO name.
func (e *Engine) UsesHelo() bool {
	for _, r := range e.rules {
		if r.match.helo != nil {
			return true
		}
		for _, d := range r.keyer.dims {
			if d == dimHelo {
				return true
			}
		}
	}
	return false
}

// MayTag reports whether any rule can end in a header under the global
// mode: an action tag, a rule in tag mode, or any rule when the server is
// in tag mode.
func (e *Engine) MayTag(global policy.Mode) bool {
	for _, r := range e.rules {
		if r.action == policy.ActionTag || r.mode.Soften(global) == policy.ModeTag {
			return true
		}
	}
	return false
}
