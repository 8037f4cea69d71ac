package countertest

// rateLog is the reference model of one rate key: an exact sliding log of
// the units applied to it, each with the time it was applied.
//
// With emission interval T (period/N) and burst B, a take of c units at
// time t is admitted exactly when c <= B and, for every earlier entry j,
//
//	(units applied at or after t_j) + c  <=  B + (t - t_j)/T
//
// that is, in every trailing window that starts at an applied event, the
// client has used no more than the burst plus what the rate has earned
// since. GCRA computes the same thing in O(1): its tat is max_j(t_j +
// T·units since t_j), so "new tat - t <= T·B" is the same inequality for
// the worst j. The property test holds the store to this model event by
// event, which implies both statements of the bound (see Property).
//
// A refund removes units from the newest entries (a released reservation
// is the last thing taken); GCRA's max(tat - T·c, now) is that removal.
type rateLog struct {
	interval, burst int64
	strict          bool // rule adds refused events too
	blocking        bool
	log             []logEntry
}

type logEntry struct{ t, c int64 }

// since returns, for entry j, the units applied at or after t_j; it walks
// the log from the newest entry and calls f until f returns false.
func (m *rateLog) since(f func(t, units int64) bool) {
	var s int64
	for j := len(m.log) - 1; j >= 0; j-- {
		s += m.log[j].c
		if !f(m.log[j].t, s) {
			return
		}
	}
}

// judge answers a take of c at now: admitted or not, and when it would be.
func (m *rateLog) judge(now, c int64) (ok bool, retry int64) {
	if c > m.burst {
		return false, -1 // never: more than the bucket holds
	}
	// The earliest time t' at which every window fits:
	// t' >= t_j + (S_j + c - B)·T for all j.
	earliest := now
	m.since(func(t, s int64) bool {
		earliest = max(earliest, t+(s+c-m.burst)*m.interval)
		return true
	})
	return earliest == now, earliest - now
}

// level is the units still in the bucket at now: the largest excess, over
// trailing windows, of units applied over units the rate has earned.
func (m *rateLog) level(now int64) int64 {
	var excess int64 // in nanoseconds of rate
	m.since(func(t, s int64) bool {
		excess = max(excess, s*m.interval-(now-t))
		return true
	})
	return (excess + m.interval - 1) / m.interval
}

func (m *rateLog) add(now, c int64) { m.log = append(m.log, logEntry{now, c}) }

func (m *rateLog) refund(c int64) {
	for c > 0 && len(m.log) > 0 {
		last := &m.log[len(m.log)-1]
		take := min(c, last.c)
		last.c -= take
		c -= take
		if last.c == 0 {
			m.log = m.log[:len(m.log)-1]
		}
	}
}

// unitsIn counts the units applied in the time range (from, to].
func (m *rateLog) unitsIn(from, to int64) int64 {
	var n int64
	for _, e := range m.log {
		if e.t > from && e.t <= to {
			n += e.c
		}
	}
	return n
}

// unitsInClosed counts the units applied in [from, to].
func (m *rateLog) unitsInClosed(from, to int64) int64 {
	return m.unitsIn(from-1, to)
}

// slotModel is the reference model of a concurrency key: who holds a slot.
type slotModel struct {
	burst    int64
	blocking bool
	holders  []string
}
