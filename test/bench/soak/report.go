package main

import (
	"encoding/csv"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// stages are test/load's stage names in protocol order; "message" is a
// whole transaction.
var stages = []string{"negotiate", "connect", "helo", "mail", "rcpt", "header", "eoh", "body", "eom", "message"}

// ownStages are sluice's stage names (its stage histogram's labels).
var ownStages = []string{"connect", "helo", "mail", "rcpt", "data"}

// curve is one line of the chart and one row of the table.
type curve struct {
	name   string
	judged bool // held to the ±tolerance verdict
	get    func(sample) (float64, bool)
}

func always(f func(sample) float64) func(sample) (float64, bool) {
	return func(s sample) (float64, bool) { return f(s), true }
}

// positive leaves out the samples where f is 0: a figure an older CSV
// does not hold.
func positive(f func(sample) float64) func(sample) (float64, bool) {
	return func(s sample) (float64, bool) { v := f(s); return v, v > 0 }
}

func curves(samples []sample) []curve {
	// With the do-nothing milter beside it, sluice's CPU and tails are
	// judged as ratios to the do-nothing's in the same minute: what the
	// machine does to both cancels, and what sluice alone does (a map
	// that grows, a leak that slows the collector) is left.
	control := slices.ContainsFunc(samples, func(s sample) bool { return s.ctl != nil })
	withCtl := func(f func(sample) float64) func(sample) (float64, bool) {
		return func(s sample) (float64, bool) {
			if s.ctl == nil {
				return 0, false
			}
			v := f(s)
			return v, v > 0 && !math.IsInf(v, 0)
		}
	}
	cs := []curve{
		{"messages/s", true, always(func(s sample) float64 { return s.msgsPerSec })},
		{"RSS MB", true, always(func(s sample) float64 { return s.rssMB })},
		{"Go heap in use MB", true, always(func(s sample) float64 { return s.heapMB })},
		{"Go heap goal MB", false, always(func(s sample) float64 { return s.heapGoalMB })},
		{"goroutines", true, always(func(s sample) float64 { return float64(s.goroutines) })},
		{"open fds", true, always(func(s sample) float64 { return float64(s.fds) })},
		{"store keys", false, always(func(s sample) float64 { return s.keys })},
		{"CPU ms/message", !control, always(func(s sample) float64 { return s.cpuPerMsg })},
		{"load gen CPU ms/message", false, positive(func(s sample) float64 { return s.loadCPU })},
		{"CPU / load gen's", false, positive(func(s sample) float64 {
			if s.loadCPU == 0 {
				return 0
			}
			return s.cpuPerMsg / s.loadCPU
		})},
	}
	if control {
		cs = append(cs,
			curve{"do-nothing CPU ms/message", false, withCtl(func(s sample) float64 { return s.ctl.cpuPerMsg })},
			curve{"CPU / do-nothing's", true, withCtl(func(s sample) float64 { return s.cpuPerMsg / s.ctl.cpuPerMsg })})
	}
	for _, st := range stages {
		present := slices.ContainsFunc(samples, func(s sample) bool { _, ok := s.p99[st]; return ok })
		if !present {
			continue
		}
		// A round trip's tail is mostly how soon a halted vCPU wakes on
		// this machine, for the do-nothing milter as much as for sluice:
		// shown, and sluice's own time per stage judged instead.
		cs = append(cs, curve{"p99 ms " + st, false, func(s sample) (float64, bool) {
			v, ok := s.p99[st]
			return v, ok
		}})
	}
	// sluice's own time is judged with or without the do-nothing milter:
	// no round trip is in it, so what moves it is sluice.
	for _, st := range ownStages {
		if !slices.ContainsFunc(samples, func(s sample) bool { _, ok := s.ownP99[st]; return ok }) {
			continue
		}
		cs = append(cs, curve{"own p99 ms " + st, true, func(s sample) (float64, bool) {
			v, ok := s.ownP99[st]
			return v, ok
		}})
	}
	if !control {
		return cs
	}
	for _, st := range stages {
		if !slices.ContainsFunc(samples, func(s sample) bool {
			if s.ctl == nil {
				return false
			}
			_, ok := s.ctl.p99[st]
			return ok
		}) {
			continue
		}
		cs = append(cs, curve{"do-nothing p99 ms " + st, false, withCtl(func(s sample) float64 { return s.ctl.p99[st] })})
	}
	for _, st := range stages {
		both := slices.ContainsFunc(samples, func(s sample) bool {
			if s.ctl == nil {
				return false
			}
			_, ok := s.p99[st]
			_, cok := s.ctl.p99[st]
			return ok && cok
		})
		if !both {
			continue
		}
		cs = append(cs, curve{"p99 / do-nothing's " + st, false, withCtl(func(s sample) float64 {
			v, ok := s.p99[st]
			c, cok := s.ctl.p99[st]
			if !ok || !cok || c == 0 {
				return 0
			}
			return v / c
		})})
	}
	return cs
}

func printHeader(w io.Writer) {
	fmt.Fprintf(w, "%7s %7s %7s %7s %7s %5s %5s %7s %8s %-s\n",
		"t", "msgs/s", "RSS MB", "heap MB", "gorout", "fds", "snapA", "keys", "CPU ms/m", "p99 ms (mail rcpt eom message)")
}

func printSample(w io.Writer, s sample) {
	fmt.Fprintf(w, "%6.0fs %7.0f %7.1f %7.1f %7d %5d %5.0f %7.0f %8.3f %.3f %.3f %.3f %.3f",
		s.at.Seconds(), s.msgsPerSec, s.rssMB, s.heapMB, s.goroutines, s.fds, s.snapAge, s.keys, s.cpuPerMsg,
		s.p99["mail"], s.p99["rcpt"], s.p99["eom"], s.p99["message"])
	if s.refused > 0 || s.errors > 0 {
		fmt.Fprintf(w, "  refused %d errors %d", s.refused, s.errors)
	}
	fmt.Fprintln(w)
}

// judged are the samples the verdict looks at: those that start after the
// warmup and end before the load winds down (the last interval ends as
// workers stop starting sessions, and the one after it is cut short).
func judged(s settings, samples []sample) []sample {
	var out []sample
	for _, sm := range samples {
		if sm.at-sm.length >= s.warmup-s.sample/10 && sm.at < s.duration-s.sample/2 && sm.length >= s.sample*9/10 {
			out = append(out, sm)
		}
	}
	return out
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// windows folds consecutive samples into windows of length d: what a
// window ran at. Rates (messages/s, CPU per message) are weighted by the
// messages of each sample; gauges and p99s are the window's median. The
// soak's schedule repeats every minute (a snapshot, a counters top, fresh
// keys), so a 10 s sample holds that work or not, and its CPU and tail
// swing with the schedule; a whole minute holds one of each.
//
// When the load generator closed windows of its own (-window), a window
// ends where one of its records does, and its p99s are the load
// generator's over every command of the window.
func windows(samples []sample, d time.Duration) []sample {
	closed := slices.ContainsFunc(samples, func(s sample) bool { return s.winP99 != nil })
	var out []sample
	for i := 0; i < len(samples); {
		j := i
		var span time.Duration
		for j < len(samples) && (closed && (j == i || samples[j-1].winP99 == nil) || !closed && span < d*9/10) {
			span += samples[j].length
			j++
		}
		if span < d*9/10 {
			if closed && j < len(samples) {
				i = j // the stretch before the first window the load generator closed
				continue
			}
			break // a partial window at the end
		}
		out = append(out, fold(samples[i:j]))
		i = j
	}
	return out
}

func fold(ss []sample) sample {
	med := func(f func(sample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		return median(v)
	}
	w := sample{at: ss[len(ss)-1].at}
	var msgs, cpu, loadCPU float64
	for _, s := range ss {
		w.length += s.length
		n := s.msgsPerSec * s.length.Seconds()
		msgs += n
		cpu += s.cpuPerMsg * n
		loadCPU += s.loadCPU * n
	}
	w.msgsPerSec = msgs / w.length.Seconds()
	if msgs > 0 {
		w.cpuPerMsg = cpu / msgs
		w.loadCPU = loadCPU / msgs
	}
	w.rssMB = med(func(s sample) float64 { return s.rssMB })
	w.heapMB = med(func(s sample) float64 { return s.heapMB })
	w.heapGoalMB = med(func(s sample) float64 { return s.heapGoalMB })
	w.goroutines = int(med(func(s sample) float64 { return float64(s.goroutines) }))
	w.fds = int(med(func(s sample) float64 { return float64(s.fds) }))
	w.keys = med(func(s sample) float64 { return s.keys })
	last := ss[len(ss)-1]
	w.p99 = last.winP99
	if w.p99 == nil {
		w.p99 = medianP99(ss, func(s sample) map[string]float64 { return s.p99 })
	}
	w.ownP99 = last.ownWinP99
	if w.ownP99 == nil {
		w.ownP99 = medianP99(ss, func(s sample) map[string]float64 { return s.ownP99 })
	}
	if !slices.ContainsFunc(ss, func(s sample) bool { return s.ctl == nil }) {
		c := &controlSample{p99: last.ctl.winP99}
		if c.p99 == nil {
			c.p99 = medianP99(ss, func(s sample) map[string]float64 { return s.ctl.p99 })
		}
		var msgs, cpu float64
		for _, s := range ss {
			n := s.ctl.msgsPerSec * s.length.Seconds()
			msgs += n
			cpu += s.ctl.cpuPerMsg * n
		}
		c.msgsPerSec = msgs / w.length.Seconds()
		if msgs > 0 {
			c.cpuPerMsg = cpu / msgs
		}
		w.ctl = c
	}
	return w
}

// medianP99 is each stage's median p99 over the samples.
func medianP99(ss []sample, p99 func(sample) map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for _, st := range slices.Concat(stages, ownStages) {
		var v []float64
		for _, s := range ss {
			if x, ok := p99(s)[st]; ok {
				v = append(v, x)
			}
		}
		if len(v) > 0 {
			out[st] = median(v)
		}
	}
	return out
}

// spread is a curve's median over samples, its extremes, and how far the
// farthest strays from the median, as a fraction of it.
func spread(c curve, samples []sample) (med, lo, hi, worst float64, ok bool) {
	var v []float64
	for _, sm := range samples {
		if x, ok := c.get(sm); ok {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return 0, 0, 0, 0, false
	}
	med = median(v)
	lo, hi = slices.Min(v), slices.Max(v)
	if med != 0 {
		worst = math.Max(hi-med, med-lo) / med
	}
	return med, lo, hi, worst, true
}

// judgeCurves prints the curves' table and returns why any failed: each
// judged curve, over windows of s.judge after the warmup, within
// ±tolerance of its median. The 10 s samples' own spread is printed
// beside it.
func judgeCurves(w io.Writer, s settings, samples []sample) []string {
	var why []string
	js := judged(s, samples)
	ws := windows(js, s.judge)
	fmt.Fprintf(w, "\n%d samples every %v; the verdict judges the %d whole ones after %v, folded into %d windows of %v (±%.0f%% of each median)\n",
		len(samples), s.sample, len(js), s.warmup, len(ws), s.judge, s.tolerance*100)
	fmt.Fprintf(w, "%-22s %10s %10s %10s %10s %10s  %s\n", "curve", "median", "min", "max", "worst", "worst "+s.sample.String(), "verdict")
	if len(ws) == 0 {
		why = append(why, "no whole window after the warmup: run longer than -warmup plus -judge")
	}
	for _, c := range curves(samples) {
		med, lo, hi, worst, ok := spread(c, ws)
		if !ok {
			continue
		}
		_, _, _, raw, _ := spread(c, js)
		verdict := "-"
		if c.judged {
			verdict = "ok"
			if worst > s.tolerance {
				verdict = "OUTSIDE"
				why = append(why, fmt.Sprintf("%s strays %.0f%% from its median", c.name, worst*100))
			}
		}
		fmt.Fprintf(w, "%-22s %10.3f %10.3f %10.3f %9.1f%% %9.1f%%  %s\n", c.name, med, lo, hi, worst*100, raw*100, verdict)
	}
	return why
}

// report prints the table and the verdict, and reports whether it passed.
func report(w io.Writer, s settings, r *result) bool {
	pass := true
	var why []string
	fail := func(format string, args ...any) {
		pass = false
		why = append(why, fmt.Sprintf(format, args...))
	}
	if curveWhy := judgeCurves(w, s, r.samples); len(curveWhy) > 0 {
		pass = false
		why = append(why, curveWhy...)
	}

	fmt.Fprintf(w, "\nidle fds:        before %d, after %d\n", r.before.fds, r.after.fds)
	fmt.Fprintf(w, "idle goroutines: before %d, after %d\n", r.before.goroutines, r.after.goroutines)
	if r.after.fds != r.before.fds {
		fail("fds after the run %d, before %d", r.after.fds, r.before.fds)
	}
	if r.after.goroutines != r.before.goroutines {
		fail("goroutines after the run %d, before %d", r.after.goroutines, r.before.goroutines)
	}
	ev := r.ev
	periods := int(math.Ceil(s.duration.Seconds() / s.churn.Seconds()))
	fmt.Fprintf(w, "load: %d messages, %d refused, %d sessions in error; keys made: %d client addresses + %d senders (%d periods)\n",
		ev.messages, ev.refused, ev.loadErrors, periods*s.clients, periods*s.senders, periods)
	fmt.Fprintf(w, "SIGHUP reloads: %d, %d failed; counters top: %d, %d failed, slowest %v\n",
		ev.hups, ev.hupFailed, ev.tops, ev.topFailed, ev.topSlowest.Round(1e6))
	fmt.Fprintf(w, "snapshot: oldest seen %.0fs (interval %v), %d samples with a failing write\n",
		ev.snapAgeMax, s.snapshot, ev.snapFailures)
	fmt.Fprintf(w, "sluice exit code after SIGTERM: %d\n", r.exitCode)
	if ev.loadErrors > 0 {
		fail("%d sessions ended in errors (first: %s)", ev.loadErrors, ev.firstLoadErr)
	}
	if ev.refused > 0 {
		fail("%d messages refused: the run measured refusals, not counting", ev.refused)
	}
	if ev.hupFailed > 0 {
		fail("%d of %d reloads failed", ev.hupFailed, ev.hups)
	}
	if ev.topFailed > 0 {
		fail("%d of %d counters top failed (first: %s)", ev.topFailed, ev.tops, ev.firstTopErr)
	}
	if ev.snapFailures > 0 {
		fail("the snapshot write failed in %d samples", ev.snapFailures)
	}
	// Sampled every s.sample, the age can read up to one interval over.
	if limit := (s.snapshot + 2*s.sample).Seconds(); ev.snapAgeMax > limit {
		fail("the snapshot was %.0fs old at one sample (interval %v)", ev.snapAgeMax, s.snapshot)
	}
	if r.exitCode != 0 {
		fail("sluice exited with %d after SIGTERM", r.exitCode)
	}
	if pass {
		fmt.Fprintln(w, "\nVERDICT: PASS")
	} else {
		fmt.Fprintf(w, "\nVERDICT: FAIL\n  %s\n", strings.Join(why, "\n  "))
	}
	return pass
}

func writeCSV(path string, samples []sample) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	head := []string{"at_s", "interval_s", "messages_per_s", "refused", "errors", "rss_mb", "heap_inuse_mb", "heap_goal_mb",
		"goroutines", "open_fds", "store_keys", "sessions_open", "snapshot_age_s", "snapshot_failing", "cpu_ms_per_message", "load_cpu_ms_per_message"}
	for _, st := range stages {
		head = append(head, "p99_ms_"+st)
	}
	for _, st := range stages {
		head = append(head, "window_p99_ms_"+st)
	}
	for _, st := range ownStages {
		head = append(head, "own_p99_ms_"+st)
	}
	for _, st := range ownStages {
		head = append(head, "own_window_p99_ms_"+st)
	}
	control := slices.ContainsFunc(samples, func(s sample) bool { return s.ctl != nil })
	if control {
		head = append(head, "ctl_messages_per_s", "ctl_cpu_ms_per_message")
		for _, st := range stages {
			head = append(head, "ctl_p99_ms_"+st)
		}
		for _, st := range stages {
			head = append(head, "ctl_window_p99_ms_"+st)
		}
	}
	w.Write(head)
	ff := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
	for _, s := range samples {
		row := []string{ff(s.at.Seconds()), ff(s.length.Seconds()), ff(s.msgsPerSec), strconv.Itoa(s.refused), strconv.Itoa(s.errors),
			ff(s.rssMB), ff(s.heapMB), ff(s.heapGoalMB), strconv.Itoa(s.goroutines), strconv.Itoa(s.fds),
			ff(s.keys), ff(s.sessions), ff(s.snapAge), ff(s.snapFailing), ff(s.cpuPerMsg), ff(s.loadCPU)}
		p99Of := func(names []string, m map[string]float64) {
			for _, st := range names {
				if v, ok := m[st]; ok {
					row = append(row, ff(v))
				} else {
					row = append(row, "")
				}
			}
		}
		p99s := func(m map[string]float64) { p99Of(stages, m) }
		p99s(s.p99)
		p99s(s.winP99)
		p99Of(ownStages, s.ownP99)
		p99Of(ownStages, s.ownWinP99)
		if control {
			if s.ctl == nil {
				row = append(row, "", "")
				p99s(nil)
				p99s(nil)
			} else {
				row = append(row, ff(s.ctl.msgsPerSec), ff(s.ctl.cpuPerMsg))
				p99s(s.ctl.p99)
				p99s(s.ctl.winP99)
			}
		}
		w.Write(row)
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// readCSV reads back the samples writeCSV wrote.
func readCSV(path string) ([]sample, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(rows) < 2 {
		return nil, fmt.Errorf("%s: no samples", path)
	}
	col := make(map[string]int, len(rows[0]))
	for i, name := range rows[0] {
		col[name] = i
	}
	var out []sample
	for n, row := range rows[1:] {
		var bad error
		num := func(name string) float64 {
			i, ok := col[name]
			if !ok || i >= len(row) {
				bad = fmt.Errorf("no column %s", name)
				return 0
			}
			v, err := strconv.ParseFloat(row[i], 64)
			if err != nil && bad == nil {
				bad = fmt.Errorf("column %s: %w", name, err)
			}
			return v
		}
		s := sample{
			at: time.Duration(num("at_s") * float64(time.Second)), length: time.Duration(num("interval_s") * float64(time.Second)),
			msgsPerSec: num("messages_per_s"), refused: int(num("refused")), errors: int(num("errors")),
			rssMB: num("rss_mb"), heapMB: num("heap_inuse_mb"), heapGoalMB: num("heap_goal_mb"),
			goroutines: int(num("goroutines")), fds: int(num("open_fds")), keys: num("store_keys"),
			sessions: num("sessions_open"), snapAge: num("snapshot_age_s"), snapFailing: num("snapshot_failing"),
			cpuPerMsg: num("cpu_ms_per_message"),
		}
		if _, ok := col["load_cpu_ms_per_message"]; ok {
			s.loadCPU = num("load_cpu_ms_per_message")
		}
		p99Of := func(names []string, prefix string) map[string]float64 {
			var m map[string]float64
			for _, st := range names {
				if i, ok := col[prefix+st]; ok && i < len(row) && row[i] != "" {
					if m == nil {
						m = map[string]float64{}
					}
					m[st] = num(prefix + st)
				}
			}
			return m
		}
		p99s := func(prefix string) map[string]float64 { return p99Of(stages, prefix) }
		s.p99 = p99s("p99_ms_")
		s.winP99 = p99s("window_p99_ms_")
		s.ownP99 = p99Of(ownStages, "own_p99_ms_")
		s.ownWinP99 = p99Of(ownStages, "own_window_p99_ms_")
		if i, ok := col["ctl_cpu_ms_per_message"]; ok && i < len(row) && row[i] != "" {
			s.ctl = &controlSample{msgsPerSec: num("ctl_messages_per_s"), cpuPerMsg: num("ctl_cpu_ms_per_message"),
				p99: p99s("ctl_p99_ms_"), winP99: p99s("ctl_window_p99_ms_")}
			if len(s.ctl.winP99) == 0 {
				s.ctl.winP99 = nil
			}
		}
		if bad != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n+2, bad)
		}
		out = append(out, s)
	}
	return out, nil
}
