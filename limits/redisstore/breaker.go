package redisstore

import (
	"sync"
	"time"
)

// breaker keeps a dead Redis from adding its timeout to every SMTP
// command: after a failure, calls fail at once until a pause has passed;
// then one call (the probe) goes through. A failed probe doubles the
// pause, up to a maximum; a successful call closes the breaker. go-redis
// reconnects by itself on that next call.
type breaker struct {
	min, max time.Duration
	now      func() time.Time

	mu      sync.Mutex
	open    bool
	probing bool      // a probe is in flight
	until   time.Time // calls fail fast before this
	pause   time.Duration
}

func newBreaker(min, max time.Duration) *breaker {
	return &breaker{min: min, max: max, now: time.Now}
}

// allow reports whether a call may go to Redis now.
func (b *breaker) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		return true
	}
	if b.probing || b.now().Before(b.until) {
		return false
	}
	b.probing = true
	return true
}

// done records a call's outcome: ok is false when Redis could not be
// reached or did not answer in time. It reports a change of state: opened
// (the first failure), or closed (Redis answers again).
func (b *breaker) done(ok bool) (opened, closed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ok {
		closed = b.open
		b.open, b.probing, b.pause = false, false, 0
		return false, closed
	}
	opened = !b.open
	if b.open && b.probing {
		b.pause = min(b.pause*2, b.max)
	} else if !b.open {
		b.pause = b.min
	}
	b.open, b.probing = true, false
	b.until = b.now().Add(b.pause)
	return opened, false
}

// isOpen reports whether calls are failing fast.
func (b *breaker) isOpen() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.open
}

// abandon ends a call whose outcome says nothing about Redis (the caller
// gave up first): a probe may be sent again.
func (b *breaker) abandon() {
	b.mu.Lock()
	b.probing = false
	b.mu.Unlock()
}
