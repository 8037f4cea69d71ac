package memstore

import (
	"sync/atomic"
	"time"
)

// wallClock is Unix time in nanoseconds read from the monotonic clock —
// half the cost of time.Now, which reads both clocks — plus an offset to
// the wall clock taken at start and refreshed by the background loop.
// Refreshing only moves the offset forward, so the store's time never
// runs backwards (a wall clock stepped back would otherwise lock every
// bucket for the length of the step) but catches up after a suspend,
// when the monotonic clock stood still while the wall clock went on. A
// wall clock stepped forward is caught up with the same way: windows then
// free early by at most the step.
type wallClock struct {
	start  time.Time
	offset atomic.Int64
	src    clockSource // nil: the machine's clocks
}

// clockSource stands for the machine's two clocks in tests, which step
// the wall clock.
type clockSource interface {
	Mono() int64 // nanoseconds on a clock no one steps
	Wall() int64 // Unix nanoseconds, as an administrator or NTP set them
}

func newWallClock() *wallClock {
	c := &wallClock{start: time.Now()}
	c.offset.Store(c.start.UnixNano())
	return c
}

func newClockFrom(src clockSource) *wallClock {
	c := &wallClock{src: src}
	c.offset.Store(src.Wall() - src.Mono())
	return c
}

func (c *wallClock) now() int64 {
	if c.src != nil {
		return c.src.Mono() + c.offset.Load()
	}
	return int64(time.Since(c.start)) + c.offset.Load()
}

func (c *wallClock) refresh() {
	var off int64
	if c.src != nil {
		off = c.src.Wall() - c.src.Mono()
	} else {
		wall := time.Now()
		off = wall.UnixNano() - int64(wall.Sub(c.start))
	}
	for {
		cur := c.offset.Load()
		if off <= cur || c.offset.CompareAndSwap(cur, off) {
			return
		}
	}
}
