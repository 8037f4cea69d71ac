// Package limits counts what clients and senders do, rule by rule, and says
// which limits an SMTP event crosses; it knows nothing of the milter protocol.
package limits

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"sluice/guard"
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
	onError  storeErrorPolicy
	log      *zap.Logger
	failures storeFailures // on_store_error bookkeeping

	allows      atomic.Pointer[allowCache]
	refreshing  atomic.Bool
	allowsWarn  rate.Sometimes // a dead store must not log every refresh
	sessionSeq  atomic.Uint64
	allowMaxAge time.Duration

	now       func() time.Time // restrictions' ends and graces
	overrider bool             // the store keeps runtime overrides: events check theirs
	runtime   runtimeCache
}

// Options are the parts of an Engine that outlive a reload.
type Options struct {
	Store    counter.Store
	Fallback counter.Store // may be nil: "local" then behaves like "allow"
	// Mode gives the mode a rule is applied in from its own: the caller
	// (the engine) applies the global mode there. A crossed rule refuses
	// the event only in enforce mode, which the store must know to count
	// all or nothing. nil: each rule's own mode.
	Mode func(policy.Mode) policy.Mode
	Log  *zap.Logger
	// Recorder is told of every store failure that rules answered by
	// on_store_error; nil: the store itself, if it is a StoreErrorRecorder.
	Recorder StoreErrorRecorder
	// OnStoreError is what rules that do not say do when the store fails
	// ([store] on_store_error): allow (the default), tempfail or local.
	OnStoreError string
	// Now is the clock restrictions are set and released by ("today"
	// ends at the next midnight of this clock); nil: time.Now.
	Now func() time.Time
}

// New compiles the rules. The store is shared: a reload makes a new Engine
// on the same store, so counters survive it.
func New(cfg *Config, set *lists.Set, opt Options) (*Engine, error) {
	e := &Engine{store: opt.Store, fallback: opt.Fallback, log: opt.Log, allowMaxAge: 2 * time.Second,
		allowsWarn: rate.Sometimes{Interval: time.Minute}, now: opt.Now}
	if e.now == nil {
		e.now = time.Now
	}
	_, e.overrider = counter.As[counter.Overrider](opt.Store)
	e.failures.init(opt.Recorder, opt.Store)
	if e.log == nil {
		e.log = zap.NewNop()
	}
	var err error
	if e.onError, err = parseStoreErrorPolicy(opt.OnStoreError); err != nil {
		return nil, err
	}
	names := make(map[string]bool)
	if set != nil {
		for _, n := range set.Names() {
			names[n] = true
		}
	}
	if e.trusted, err = trustedList(cfg.Trusted, set, names); err != nil {
		return nil, err
	}
	for i := range cfg.Rules {
		r, err := loadRule(&cfg.Rules[i], set, names)
		if err != nil {
			return nil, fmt.Errorf("limit %q: %w", cfg.Rules[i].Name, err)
		}
		if r.onError == onErrorDefault {
			r.onError = e.onError
		}
		mode := r.mode
		if opt.Mode != nil {
			mode = opt.Mode(mode)
		}
		r.blocking = r.action.Refuses() && mode == policy.ModeEnforce
		// A store that cannot answer refuses the event of an on_store_error
		// = "tempfail" rule, whatever the rule's action.
		r.answers = mode == policy.ModeEnforce && (r.blocking || r.action == policy.ActionDelay || r.onError == onErrorTempfail)
		if x := r.restrict; x != nil {
			// A crossing restricts only where the rule is enforced; in tag
			// or dry-run mode it says it would (an Event), and nothing
			// is kept.
			x.on = mode == policy.ModeEnforce
			x.blocking = x.on && x.action.Refuses()
			r.answers = r.answers || x.blocking
		}
		e.rules = append(e.rules, r)
		e.byStage[r.stage] = append(e.byStage[r.stage], r)
	}
	// Stale from the start: the first check reads the store's exemptions.
	c := &allowCache{}
	c.stale.Store(true)
	e.allows.Store(c)
	return e, nil
}

// Trusted reports whether the client is on the global trusted list.
func (e *Engine) Trusted(ip netip.Addr) bool { return isTrusted(e.trusted, ip) }

// Needs reports whether any rule counts at the stage, so the milter can
// leave unneeded events out of the negotiation.
func (e *Engine) Needs(st policy.Stage) bool { return len(e.byStage[st]) > 0 }

// Answers reports whether a rule counting at the stage may change its
// answer, refusing the event or pausing before the reply, under the global
// mode: the milter needs no reply to an event no rule answers.
func (e *Engine) Answers(st policy.Stage) bool {
	for _, r := range e.byStage[st] {
		if r.answers {
			return true
		}
	}
	return false
}

// Session is one MTA connection's counting state: the slots it holds, the
// reservations of its transaction, and scratch space reused by every check.
type Session struct {
	holder   []byte
	buf      []byte
	reqs     []counter.Request
	owners   []*rule
	via      []counter.Store // the store that applied reqs[i]; nil: none did
	verdicts []policy.Verdict
	scratch  []counter.Request
	leases   []held // concurrent slots, released at Close
	reserved []held // count_on = accepted: released unless the message is accepted

	events     []Event  // of the last Check
	restricted []string // restrict keys that gave this transaction a verdict
}

// Events are what the last Check did beyond its verdicts: keys it
// restricted, or would have in tag or dry-run mode. They live until the
// next Check.
func (s *Session) Events() []Event { return s.events }

// Reserved reports whether the transaction holds count_on = "accepted"
// reservations, which only the end of the message settles.
func (s *Session) Reserved() bool { return len(s.reserved) > 0 }

// held is a count kept past its stage, with the store that holds it, so it
// is given back where it was taken (the fallback store after a failure).
type held struct {
	store counter.Store
	req   counter.Request // the refund, with its own copy of the key
}

// NewSession starts the state of one MTA connection.
func (e *Engine) NewSession() *Session {
	id := e.sessionSeq.Add(1)
	return &Session{holder: strconv.AppendUint(nil, id, 36)}
}

// Check counts the event at stage st and returns the verdicts of the rules
// it crosses (nil when none). Call Settle once the stage's decision is known.
// A store failure is handled by each rule's on_store_error; the error is
// returned only for logging, and only now and then while the store stays
// down (the rest are counted).
func (e *Engine) Check(ctx context.Context, st policy.Stage, f *policy.Facts, s *Session) ([]policy.Verdict, error) {
	s.events = s.events[:0]
	rules := e.byStage[st]
	if len(rules) == 0 {
		return nil, nil
	}
	allows := e.exemptions()
	e.build(rules, f, s, allows)
	if len(s.reqs) == 0 {
		return s.result(), nil
	}
	err := e.store.Do(ctx, s.reqs)
	// A runtime override changed since this engine last saw it: learn it
	// and build the event again. The store applied nothing.
	for try := 0; try < maxStale && errors.Is(err, counter.ErrStale); try++ {
		e.learn(s)
		e.build(rules, f, s, allows)
		err = e.store.Do(ctx, s.reqs)
	}
	if err != nil {
		err = e.storeFailed(ctx, s, err)
	} else {
		markApplied(s.reqs, s.via, e.store)
	}
	e.judge(f, s)
	return s.result(), err
}

// maxStale bounds the builds of one event whose overrides keep changing
// under it; past it, the store's error is a store failure.
const maxStale = 3

// build makes the requests (and the verdicts that need no store) of the
// rules that apply to the event.
func (e *Engine) build(rules []*rule, f *policy.Facts, s *Session, allows map[string]time.Time) {
	s.buf, s.reqs, s.owners, s.via, s.verdicts = s.buf[:0], s.reqs[:0], s.owners[:0], s.via[:0], s.verdicts[:0]
	group := uint16(0)
	for _, r := range rules {
		if !e.applies(r, f) {
			continue
		}
		if r.tarpit {
			s.verdicts = append(s.verdicts, r.tarpitVerdict(f))
		}
		if r.maxRcpt > 0 && f.RcptCount >= r.maxRcpt {
			s.verdicts = append(s.verdicts, r.rcptVerdict(f.RcptCount+1))
		}
		if len(r.windows) > 0 || r.count == countConcurrent {
			group++
			e.addRequests(r, f, s, allows, group)
		}
		if r.final {
			break
		}
	}
}

// judge turns the store's answers into verdicts, rule by rule: a
// restricted key gets the restriction's verdict; else the window that
// denied the event longest gives the rule's.
func (e *Engine) judge(f *policy.Facts, s *Session) {
	for i := 0; i < len(s.reqs); {
		r := s.owners[i]
		j, denied, rx := i, -1, -1
		for ; j < len(s.reqs) && s.owners[j] == r; j++ {
			switch q := &s.reqs[j]; {
			case q.Kind == counter.KindOverride:
			case q.Kind == counter.KindRestrict:
				rx = j
			case !q.Allowed && (denied < 0 || q.RetryAfter > s.reqs[denied].RetryAfter):
				denied = j
			}
		}
		switch {
		case rx >= 0 && !s.reqs[rx].Allowed:
			q := &s.reqs[rx]
			s.verdicts = append(s.verdicts, r.restrictedVerdict(string(dimKey(q.Key)), q.RetryAfter, q.Level))
			s.noteRestricted(q.Key)
		case denied >= 0:
			q := &s.reqs[denied]
			key := string(dimKey(q.Key))
			limit := r.limit
			if r.over != nil {
				limit = e.limitText(r, f, q.Key)
			}
			s.verdicts = append(s.verdicts, r.verdict(key, q.RetryAfter, r.detail(q, s.via[denied] != nil), limit))
			switch {
			case rx >= 0 && s.reqs[rx].Changed:
				x := &s.reqs[rx]
				s.events = append(s.events, Event{Kind: EventRestricted, Action: r.restrict.action, Mode: r.mode, Rule: r.name, Key: key,
					Limit: limit, Count: x.Level, Until: unixTime(x.Until)})
			case r.restrict != nil && !r.restrict.on:
				s.events = append(s.events, Event{Kind: EventWouldRestrict, Action: r.restrict.action, Mode: r.mode, Rule: r.name, Key: key,
					Limit: limit, Count: q.Level + q.Cost, Until: unixTime(r.restrict.until(e.now()))})
			}
		}
		i = j
	}
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// noteRestricted remembers a restrict key that gave the transaction a
// verdict, for NoteHeld.
func (s *Session) noteRestricted(key []byte) {
	for _, k := range s.restricted {
		if k == string(key) {
			return
		}
	}
	s.restricted = append(s.restricted, string(key))
}

// NoteHeld tells the store the queue id of a message that was held while
// keys the transaction met were restricted, so that releasing them can
// say which mail to release. Failures are only logged.
func (e *Engine) NoteHeld(ctx context.Context, s *Session, queueID string) {
	for _, k := range s.restricted {
		if err := counter.NoteHeld(ctx, e.store, []byte(k), queueID); err != nil && !errors.Is(err, counter.ErrUnsupported) {
			e.log.Warn("could not note a held message of a restricted key", zap.String("key", k), zap.String("queue_id", queueID), zap.Error(err))
		}
	}
}

// markApplied records which requests st applied, by the rule of
// counter.Store.Do: a request is applied when it is strict, or allowed in
// an event no blocking request refused. Only what a refund can give back
// counts: rates, slots, and distinct members that were new.
func markApplied(reqs []counter.Request, via []counter.Store, st counter.Store) {
	refused := false
	for i := range reqs {
		if q := &reqs[i]; !q.Allowed && q.Blocking {
			refused = true
		}
	}
	for i := range reqs {
		via[i] = nil
		q := &reqs[i]
		switch q.Kind {
		case counter.KindRestrict, counter.KindOverride:
			continue
		case counter.KindDistinct:
			if !q.Changed {
				continue
			}
		}
		if q.Op == counter.OpTake && (q.Strict || q.Allowed && !refused) {
			via[i] = st
		}
	}
}

func (s *Session) result() []policy.Verdict {
	if len(s.verdicts) == 0 {
		return nil
	}
	return s.verdicts
}

// addRequests appends r's requests of the event, all of group g: one per
// window ("name:0:key", "name:1:key"), or one concurrency request
// ("name:c:key"), or one distinct request ("name:d:key"); with overrides,
// the checks of the runtime overrides the limit was taken from
// ("name:o:key"); with restrict_for, the restriction ("name:x:key").
func (e *Engine) addRequests(r *rule, f *policy.Facts, s *Session, allows map[string]time.Time, g uint16) {
	for alt := range r.keyer.keys(f) {
		e.addKeyRequests(r, f, alt, s, allows, g)
	}
}

// addKeyRequests appends the requests of the alt-th key of f.
func (e *Engine) addKeyRequests(r *rule, f *policy.Facts, alt int, s *Session, allows map[string]time.Time, g uint16) {
	start := len(s.buf)
	s.buf = append(s.buf, r.prefix...)
	dimStart := len(s.buf)
	var ok bool
	if s.buf, ok = r.keyer.appendKeyAt(s.buf, f, alt); !ok || len(allows) > 0 && exempt(allows, s.buf[dimStart:]) {
		s.buf = s.buf[:start]
		return
	}
	if r.count == countConcurrent {
		s.buf[dimStart-2] = 'c'
		s.reqs = append(s.reqs, counter.Request{Key: s.buf[start:], Kind: counter.KindConcurrent, Burst: r.max, Cost: 1, Blocking: r.blocking, Strict: r.strict, Holder: s.holder})
		s.owners = append(s.owners, r)
		s.via = append(s.via, nil)
		return
	}
	end := len(s.buf)
	windows := r.windows
	if r.over != nil {
		sp := e.limitFor(r, f, s, s.buf[dimStart:end], nil)
		switch {
		case sp.unlimited:
			return
		case sp.zero:
			s.verdicts = append(s.verdicts, r.verdict(string(s.buf[dimStart:end]), 0, r.detail(&counter.Request{Cost: 1}, false), sp.text))
			return
		}
		windows = sp.windows
	}
	if r.count == countDistinct {
		ms := len(s.buf)
		if s.buf, ok = r.appendMember(s.buf, f); !ok {
			return
		}
		member := s.buf[ms:]
		w := windows[0]
		s.reqs = append(s.reqs, counter.Request{Key: s.storeKey(start, end, dimStart, 'd'), Kind: counter.KindDistinct,
			Interval: int64(w.period), Burst: w.n, Cost: 1, Member: member, Blocking: r.blocking, Strict: r.strict, Group: g})
		s.owners = append(s.owners, r)
		s.via = append(s.via, nil)
	} else {
		cost := int64(1)
		if r.count == countBytes {
			cost = max(f.Size, 1)
		}
		for i, w := range windows {
			key := s.buf[start:end]
			if i > 0 {
				key = s.storeKey(start, end, dimStart, byte('0'+i))
			}
			s.reqs = append(s.reqs, counter.Request{})
			q := &s.reqs[len(s.reqs)-1]
			// A message bigger than a bytes window's whole burst could never
			// pass, and a tempfail would have its client retry it for days: it
			// takes the whole window instead, so it passes when the window is
			// empty and then nothing else does until it drains.
			q.Key, q.Kind, q.Interval, q.Burst, q.Cost, q.Blocking, q.Strict, q.Group = key, counter.KindRate, w.interval, w.burst, min(cost, w.burst), r.blocking, r.strict, g
			s.owners = append(s.owners, r)
			s.via = append(s.via, nil)
		}
	}
	if x := r.restrict; x != nil && x.on {
		s.reqs = append(s.reqs, counter.Request{Key: s.storeKey(start, end, dimStart, 'x'), Kind: counter.KindRestrict,
			Group: g, Until: x.until(e.now()), Blocking: x.blocking, Strict: true})
		s.owners = append(s.owners, r)
		s.via = append(s.via, nil)
	}
}

// storeKey appends a copy of the store key at buf[start:end] with its
// window letter (the one before the dimension key at dimStart) set to w.
func (s *Session) storeKey(start, end, dimStart int, w byte) []byte {
	ks := len(s.buf)
	s.buf = append(s.buf, s.buf[start:end]...)
	s.buf[ks+dimStart-start-2] = w
	return s.buf[ks:]
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

// applies reports whether r counts this session's event: the client is
// not trusted (unless the rule says so), not excepted, and the match holds.
func (e *Engine) applies(r *rule, f *policy.Facts) bool {
	if f.Trusted && !r.trusted {
		return false
	}
	if r.hasExcept() && r.excepted(f) {
		return false
	}
	return r.match.matches(f)
}

// excepted reports whether the rule's except list names the client's
// address or network, the sender (address or domain) or the SASL user.
func (r *rule) excepted(f *policy.Facts) bool {
	if f.SASLUser != "" && r.exceptUsers[strings.ToLower(f.SASLUser)] {
		return true
	}
	l := r.except
	if l == nil {
		return false
	}
	if l.ContainsIP(f.ClientIP) {
		return true
	}
	if s := trimPath(f.Sender); s != "" && l.MatchAddress(s) {
		return true
	}
	// A list of [lists] may hold SASL users as bare names ("relayuser"),
	// which it holds as it holds a domain.
	return f.SASLUser != "" && (l.MatchAddress(f.SASLUser) || l.MatchDomain(f.SASLUser))
}

// verdict is the verdict of a crossing of r at key, whose store said
// detail, under the limit text limit.
func (r *rule) verdict(key string, retry time.Duration, detail, limit string) policy.Verdict {
	return policy.Verdict{
		Source: r.name, Action: r.action, Mode: r.mode, Reply: r.reply, Delay: r.delay,
		Key: key, Limit: limit, RetryAfter: retry, Detail: detail,
	}
}

// detail says what the store held for q, applied or not: open=N for the
// sessions a concurrent limit would have open with this one; distinct=N
// for the distinct values with this one; for a rate, count=N+C when the
// event was not counted (the window holds N and this event, of cost C,
// would be more than it takes: while the window stays full every crossing
// says the same), count=N when it was (strict), N with it.
func (r *rule) detail(q *counter.Request, applied bool) string {
	switch {
	case r.count == countConcurrent:
		return fmt.Sprintf("open=%d", q.Level+q.Cost)
	case r.count == countDistinct:
		return fmt.Sprintf("distinct=%d", q.Level+q.Cost)
	case applied:
		return fmt.Sprintf("count=%d", q.Level)
	default:
		return fmt.Sprintf("count=%d+%d", q.Level, q.Cost)
	}
}

// tarpitVerdict is the pause of a rule that delays every event it
// applies to (action delay with no limit): a class's tarpit.
func (r *rule) tarpitVerdict(f *policy.Facts) policy.Verdict {
	v := policy.Verdict{Source: r.name, Action: r.action, Mode: r.mode, Delay: r.delay, Limit: r.limit, Detail: "tarpit"}
	if len(r.keyer.dims) > 0 {
		if key, ok := r.keyer.appendKey(nil, f); ok {
			v.Key = string(key)
		}
	}
	return v
}

// rcptVerdict is the verdict of a max_rcpt_per_message cap crossed by the
// n-th recipient.
func (r *rule) rcptVerdict(n int) policy.Verdict {
	v := policy.Verdict{
		Source: r.name, Action: r.action, Mode: r.mode, Reply: r.reply, Delay: r.delay,
		Key: "message", Limit: r.rcptLimit, Detail: "rcpt=" + strconv.Itoa(n),
		Text: "Too many recipients ({limit})",
	}
	if r.reply == nil && r.action == policy.ActionTempfail {
		v.Reply = tooManyRcpts
	}
	return v
}

// Postfix answers its own smtpd_recipient_limit with this code.
var tooManyRcpts = policy.MustReply("452 4.5.3 Too many recipients ({limit})")

// Settle applies the stage's decision: a refused event gives back what it
// took (unless its rule is strict); an accepted one keeps its concurrency
// slots until Close and its count_on = "accepted" reservations until
// EndMessage.
func (e *Engine) Settle(ctx context.Context, s *Session, refused bool) {
	refunds := s.scratch[:0]
	var local []counter.Request // owed to the fallback store, after a failure
	crossed := false
	for i := range s.reqs {
		if i == 0 || s.owners[i] != s.owners[i-1] {
			crossed = s.crossed(i)
		}
		st := s.via[i]
		if st == nil {
			continue // the event changed no counter here
		}
		q := &s.reqs[i]
		switch {
		case (refused || crossed) && !q.Strict:
			if st == e.store {
				refunds = append(refunds, refund(q))
			} else {
				local = append(local, refund(q))
			}
		case q.Kind == counter.KindConcurrent:
			s.leases = append(s.leases, hold(q, st))
		case !refused && s.owners[i].accepted:
			s.reserved = append(s.reserved, hold(q, st))
		}
	}
	if len(refunds) > 0 {
		e.giveBack(ctx, e.store, refunds, false)
	}
	if len(local) > 0 {
		e.giveBack(ctx, e.fallback, local, true)
	}
	s.reqs, s.owners, s.via = s.reqs[:0], s.owners[:0], s.via[:0]
	s.scratch = refunds[:0]
}

// crossed reports whether a window of the rule whose requests start at i
// denied the event. Crossing one window is crossing the rule: when the
// rule does not refuse (tag, hold, delay, dry-run) the event goes on, and
// its other windows must not count it either, as they would not had the
// rule refused it.
func (s *Session) crossed(i int) bool {
	for j := i; j < len(s.reqs) && s.owners[j] == s.owners[i]; j++ {
		if !s.reqs[j].Allowed {
			return true
		}
	}
	return false
}

// EndMessage closes the transaction: an accepted message keeps what it
// counted; an aborted or refused one gives its reservations back.
func (e *Engine) EndMessage(ctx context.Context, s *Session, accepted bool) {
	if !accepted {
		e.release(ctx, s, s.reserved)
	}
	clear(s.reserved)
	s.reserved = s.reserved[:0]
	s.restricted = s.restricted[:0]
}

// Close ends the session: its slots are freed and open reservations given back.
func (e *Engine) Close(ctx context.Context, s *Session) {
	e.release(ctx, s, s.reserved)
	e.release(ctx, s, s.leases)
	s.reserved, s.leases, s.restricted = nil, nil, nil
}

func (e *Engine) release(ctx context.Context, s *Session, hs []held) {
	if len(hs) == 0 {
		return
	}
	for pass, st := range [2]counter.Store{e.store, e.fallback} {
		if st == nil {
			continue
		}
		reqs := s.scratch[:0]
		for i := range hs {
			if hs[i].store == st {
				reqs = append(reqs, hs[i].req)
			}
		}
		e.giveBack(ctx, st, reqs, pass == 1)
		s.scratch = reqs[:0]
	}
}

// giveBack sends refunds to the store that took them. A failure is only
// logged: the counts then drain on their own with time.
func (e *Engine) giveBack(ctx context.Context, st counter.Store, reqs []counter.Request, fallback bool) {
	if len(reqs) == 0 {
		return
	}
	if err := st.Do(ctx, reqs); err != nil {
		e.log.Warn("could not give back counted events", zap.Int("keys", len(reqs)), zap.Bool("fallback", fallback), zap.Error(err))
	}
}

func refund(q *counter.Request) counter.Request {
	return counter.Request{Key: q.Key, Kind: q.Kind, Op: counter.OpRefund, Interval: q.Interval, Burst: q.Burst, Cost: q.Cost, Holder: q.Holder, Member: q.Member}
}

func hold(q *counter.Request, st counter.Store) held {
	r := refund(q)
	r.Key = append([]byte(nil), q.Key...)
	return held{store: st, req: r}
}

// allowCache is the exemptions in force, refreshed from the store now and
// then so that an exemption set on one host reaches the others.
type allowCache struct {
	stale atomic.Bool
	until map[string]time.Time
}

// exemptions returns the exemptions in force, starting a refresh from the
// store when they are older than allowMaxAge. It reads no clock: a timer
// marks the cache stale, and is armed again only by a refresh, so an
// engine that no session uses any more (after a reload) goes quiet.
func (e *Engine) exemptions() map[string]time.Time {
	c := e.allows.Load()
	if c.stale.Load() && e.refreshing.CompareAndSwap(false, true) {
		go e.refreshAllows()
	}
	return c.until
}

// exempt reports whether a dimension key, or one of the dimensions of a
// composite key, is exempted: an exemption of "sender:alice@example.org"
// covers "sender:alice@example.org,rcpt_domain:example.net" too. Values
// escape ',', so splitting on it is exact.
func exempt(allows map[string]time.Time, key []byte) bool {
	now := time.Now()
	for {
		if t, ok := allows[string(key)]; ok && now.Before(t) {
			return true
		}
		i := bytes.IndexByte(key, ',')
		if i < 0 {
			return false
		}
		if t, ok := allows[string(key[:i])]; ok && now.Before(t) {
			return true
		}
		key = key[i+1:]
	}
}

func (e *Engine) refreshAllows() {
	defer e.refreshing.Store(false)
	m, again := e.allows.Load().until, true
	// Whatever happens, even a panic in the store, the exemptions in m
	// are put in force and the next refresh comes allowMaxAge later.
	defer func() {
		if again {
			e.setExemptions(m)
		}
	}()
	defer guard.Recover(e.log, "limits allows refresh")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	got, err := counter.Allows(ctx, e.store)
	switch {
	case errors.Is(err, counter.ErrUnsupported):
		// A store without exemptions: nothing to read, ever.
		e.allows.Store(&allowCache{})
		again = false
	case err != nil:
		e.allowsWarn.Do(func() {
			e.log.Warn("could not read exemptions; keeping those read before (logged once a minute)", zap.Error(err))
		})
	default:
		m = got
	}
}

// setExemptions puts m in force until the next refresh, allowMaxAge from now.
func (e *Engine) setExemptions(m map[string]time.Time) {
	c := &allowCache{until: m}
	e.allows.Store(c)
	time.AfterFunc(e.allowMaxAge, func() { c.stale.Store(true) })
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

// Actions yields each rule's action and its own mode, in file order, for
// a caller that must know what the rules may ask for: whether a message
// may get a header, for one.
func (e *Engine) Actions() iter.Seq2[policy.Action, policy.Mode] {
	return func(yield func(policy.Action, policy.Mode) bool) {
		for _, r := range e.rules {
			if !yield(r.action, r.mode) {
				return
			}
			if r.restrict != nil && !yield(r.restrict.action, r.mode) {
				return
			}
		}
	}
}

// HasRule reports whether name is a rule of the config in force (rather
// than a sender check, say).
func (e *Engine) HasRule(name string) bool { return e.rule(name) != nil }

// UsesSASLUser reports whether any rule reads the SASL login name: as a
// key, in a match or an except list, or in its reply.
func (e *Engine) UsesSASLUser() bool {
	for _, r := range e.rules {
		if r.match.authenticated != nil || r.hasExcept() || r.keyer.has(dimSASLUser) || r.reply != nil && r.reply.Quotes("sasl_user") {
			return true
		}
	}
	return false
}

// Listeners says which listener names the rules match (match.listener),
// each with the rules that name it, and which rules count per listener:
// what the engine watches for, so that a name no MTA sends is noticed.
func (e *Engine) Listeners() (named map[string][]string, keyed []string) {
	for _, r := range e.rules {
		for _, l := range r.match.listeners {
			if named == nil {
				named = make(map[string][]string)
			}
			if !slices.Contains(named[l], r.name) {
				named[l] = append(named[l], r.name)
			}
		}
		if r.keyer.has(dimListener) {
			keyed = append(keyed, r.name)
		}
	}
	return named, keyed
}
