package memstore

import (
	"sync/atomic"
	"time"
)

// wallClock is Unix time in nanoseconds read from the monotonic clock —
// half the cost of time.Now, which reads both clocks — plus an offset to
// the wall clock taken at start and refreshed by the background loop.
// Refreshing only moves the offset forward, so the store's time never
// runs backwards (a stepped-back wall clock would otherwise refill every
// bucket) but catches up after a suspend, when the monotonic clock stood
// still while the wall clock went on.
type wallClock struct {
	start  time.Time
	offset atomic.Int64
}

func newWallClock() *wallClock {
	c := &wallClock{start: time.Now()}
	c.offset.Store(c.start.UnixNano())
	return c
}

func (c *wallClock) now() int64 { return int64(time.Since(c.start)) + c.offset.Load() }

func (c *wallClock) refresh() {
	wall := time.Now()
	off := wall.UnixNano() - int64(wall.Sub(c.start))
	for {
		cur := c.offset.Load()
		if off <= cur || c.offset.CompareAndSwap(cur, off) {
			return
		}
	}
}
