package main

import (
	"encoding/json"
	"io"
	"sync"
	"time"
)

// Interval is the figures of one stretch of a round, written as a line of
// JSON while the round goes on, so that a long run can be watched and
// charted (test/bench/soak reads them).
type Interval struct {
	At        time.Duration `json:"at_ns"`     // end of the interval, since the round started
	Length    time.Duration `json:"length_ns"` // the last one may be short
	Sessions  int           `json:"sessions"`  // ended in the interval
	Messages  int           `json:"messages"`  // accepted in the interval
	Refused   int           `json:"refused"`
	Errors    int           `json:"errors"`
	FirstErr  string        `json:"first_error,omitempty"`
	CPUPerMsg float64       `json:"milter_cpu_ms_per_message,omitempty"`
	// SelfCPUPerMsg is the load generator's own: a process doing the same
	// work per message all along, so what moves it is the machine.
	SelfCPUPerMsg float64            `json:"load_cpu_ms_per_message,omitempty"`
	P99           map[string]float64 `json:"p99_ms"` // per stage, of the commands answered in the interval
	// WindowP99 is set on the record that closes each -window: per stage,
	// the p99 of every command answered in the window. A tail from a
	// whole minute's commands is steadier than the median of six 10 s
	// ones, each of which, for a stage met once a session, rests on its
	// tenth slowest command.
	WindowP99 map[string]float64 `json:"window_p99_ms,omitempty"`
	// Tag names the milter when one process drives two (-beside-addr).
	Tag string `json:"tag,omitempty"`
}

// seen is how much of a worker's figures earlier intervals took.
type seen struct {
	lat                     [nStages]int
	win                     [nStages]int // where the open window began
	sessions, msgs, refused int
	errs                    int
}

type reporter struct {
	w       io.Writer
	workers []*worker
	start   time.Time
	pid     int
	tag     string
	window  int // intervals per window; 0: none
	written int

	last     time.Duration
	lastCPU  time.Duration
	lastSelf time.Duration
	err      error

	quit chan struct{}
	done sync.WaitGroup
}

func startReporter(w io.Writer, workers []*worker, start time.Time, cfg *Config, pid int) *reporter {
	every := cfg.Interval
	r := &reporter{w: w, workers: workers, start: start, pid: pid, tag: cfg.Tag, quit: make(chan struct{})}
	if cfg.Window > 0 {
		r.window = int(cfg.Window / every)
	}
	r.lastCPU, _ = procCPU(pid)
	r.lastSelf = selfCPU()
	r.done.Add(1)
	go func() {
		defer r.done.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				r.write()
			case <-r.quit:
				return
			}
		}
	}()
	return r
}

// stop writes the last, partial interval and returns the first write
// error.
func (r *reporter) stop() error {
	close(r.quit)
	r.done.Wait()
	if time.Since(r.start)-r.last > 10*time.Millisecond {
		r.write()
	}
	return r.err
}

func (r *reporter) write() {
	at := time.Since(r.start)
	iv := Interval{At: at, Length: at - r.last, P99: map[string]float64{}, Tag: r.tag}
	r.last = at
	r.written++
	closes := r.window > 0 && r.written%r.window == 0
	var lat, win [nStages][]time.Duration
	for _, w := range r.workers {
		w.mu.Lock()
		s := &w.seen
		for st := range nStages {
			lat[st] = append(lat[st], w.lat[st][s.lat[st]:]...)
			s.lat[st] = len(w.lat[st])
			if closes {
				win[st] = append(win[st], w.lat[st][s.win[st]:]...)
				s.win[st] = len(w.lat[st])
			}
		}
		refused := 0
		for st := range nStages {
			refused += w.refused[st]
		}
		iv.Sessions += w.sessions - s.sessions
		iv.Messages += w.msgs - s.msgs
		iv.Refused += refused - s.refused
		iv.Errors += w.errs - s.errs
		if w.errs > s.errs && iv.FirstErr == "" && w.firstEr != nil {
			iv.FirstErr = w.firstEr.Error()
		}
		s.sessions, s.msgs, s.refused, s.errs = w.sessions, w.msgs, refused, w.errs
		w.mu.Unlock()
	}
	for st := range nStages {
		if len(lat[st]) > 0 {
			iv.P99[stageNames[st]] = ms(summarize(lat[st]).P99)
		}
		if len(win[st]) > 0 {
			if iv.WindowP99 == nil {
				iv.WindowP99 = map[string]float64{}
			}
			iv.WindowP99[stageNames[st]] = ms(summarize(win[st]).P99)
		}
	}
	if r.pid != 0 {
		if cpu, err := procCPU(r.pid); err == nil {
			if iv.Messages > 0 {
				iv.CPUPerMsg = ms(cpu-r.lastCPU) / float64(iv.Messages)
			}
			r.lastCPU = cpu
		}
	}
	self := selfCPU()
	if iv.Messages > 0 {
		iv.SelfCPUPerMsg = ms(self-r.lastSelf) / float64(iv.Messages)
	}
	r.lastSelf = self
	// One write per record: two reporters may share w.
	b, err := json.Marshal(iv)
	if err == nil {
		_, err = r.w.Write(append(b, '\n'))
	}
	if err != nil && r.err == nil {
		r.err = err
	}
}
