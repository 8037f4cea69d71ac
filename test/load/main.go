// Command load drives a milter the way Postfix does, with go-milter's client,
// and reports sessions/s, messages/s and latency per stage.
//
//	load -addr inet:127.0.0.1:8890 -concurrency 20 -sessions 2000 -messages 5
//	load -addr inet:127.0.0.1:8890 -pid $(pidof sluice) \
//	     -baseline-addr inet:127.0.0.1:8891 -baseline-pid $(pidof noopmilter) -rounds 3
//
// Each session negotiates, sends Postfix's macros and CONNECT, HELO, and
// then M messages: MAIL, RCPT, the header fields, end of header, a body
// chunk, end of message, and an Abort, as Postfix does after every
// transaction. Events the milter negotiated away are not sent, as Postfix
// skips them. With -baseline-addr the same load runs against both milters
// in alternating rounds and the medians are compared; with -pid the
// milter's own CPU time per message is read from /proc. With -duration a
// round runs for a time instead of a number of sessions, -churn moves it
// to fresh client addresses and senders every so often, and -intervals
// writes the figures of every -interval as it goes (test/bench/soak), and
// -beside-addr drives a second milter with the same load at the same time.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"
)

func main() {
	// The load generator shares the machine with the milter it measures:
	// fewer collections of its own garbage (go-milter's client allocates a
	// buffer per packet) mean fewer pauses counted as the milter's latency.
	debug.SetGCPercent(400)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	var addr, baseAddr, name, baseName, out, intervals, besideAddr, besideName string
	var pid, basePid, besidePid, rounds int
	fs.StringVar(&addr, "addr", "inet:127.0.0.1:8890", "milter to drive: inet:host:port or unix:/path")
	fs.IntVar(&pid, "pid", 0, "process id of that milter, to read its CPU time (0: not measured)")
	fs.StringVar(&name, "name", "sluice", "name of that milter in the report")
	fs.StringVar(&baseAddr, "baseline-addr", "", "baseline milter, driven with the same load in alternating rounds")
	fs.IntVar(&basePid, "baseline-pid", 0, "process id of the baseline milter")
	fs.StringVar(&baseName, "baseline-name", "noop", "name of the baseline in the report")
	fs.StringVar(&besideAddr, "beside-addr", "", "a second milter driven at the same time with the same load from this process, its interval records tagged -beside-name (test/bench/soak's do-nothing control)")
	fs.IntVar(&besidePid, "beside-pid", 0, "process id of the milter beside")
	fs.StringVar(&besideName, "beside-name", "beside", "tag of the milter beside in interval records and the report")
	fs.IntVar(&rounds, "rounds", 1, "rounds per milter; medians are reported")
	fs.IntVar(&cfg.Concurrency, "concurrency", 20, "sessions open at once")
	fs.IntVar(&cfg.Sessions, "sessions", 2000, "sessions in all, per round")
	fs.IntVar(&cfg.Messages, "messages", 5, "messages per session")
	fs.IntVar(&cfg.Rcpts, "rcpts", 1, "recipients per message")
	fs.IntVar(&cfg.Clients, "clients", 5000, "distinct client IPs (10.0.0.0/8, round robin over sessions)")
	fs.IntVar(&cfg.Senders, "senders", 10000, "distinct envelope senders (round robin over messages)")
	fs.IntVar(&cfg.Recipients, "recipients", 1000, "distinct recipients")
	fs.IntVar(&cfg.Headers, "headers", 8, "header fields per message")
	fs.IntVar(&cfg.BodySize, "body", 200, "body bytes per message")
	fs.Float64Var(&cfg.Rate, "rate", 0, "messages per second to pace at (0: as fast as the milter answers)")
	fs.IntVar(&cfg.Offset, "offset", 0, "first client and sender number, so that rounds can use fresh keys")
	fs.StringVar(&out, "json", "", "also write the results as JSON to this file")
	fs.DurationVar(&cfg.Duration, "duration", 0, "run each round this long instead of -sessions sessions")
	fs.DurationVar(&cfg.Churn, "churn", 0, "move to fresh client addresses and senders this often (0: never)")
	fs.DurationVar(&cfg.Interval, "interval", 10*time.Second, "how often to write a record to -intervals")
	fs.DurationVar(&cfg.Window, "window", 0, "every this long (a multiple of -interval), a record also carries the p99s of the whole stretch (0: never)")
	fs.StringVar(&intervals, "intervals", "", "write a JSON line of figures per interval to this file (/dev/fd/N: an inherited pipe)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if cfg.Concurrency < 1 || cfg.Sessions < 1 && cfg.Duration <= 0 || cfg.Messages < 0 || cfg.Rcpts < 1 ||
		cfg.Clients < 1 || cfg.Senders < 1 || cfg.Recipients < 1 || cfg.Headers < 0 || rounds < 1 {
		fmt.Fprintln(stderr, "load: counts must be positive")
		return 2
	}
	if cfg.Duration < 0 || cfg.Churn < 0 || cfg.Interval <= 0 {
		fmt.Fprintln(stderr, "load: -duration and -churn must not be negative, -interval must be positive")
		return 2
	}
	if cfg.Window < 0 || cfg.Window%cfg.Interval != 0 {
		fmt.Fprintln(stderr, "load: -window must be a multiple of -interval")
		return 2
	}
	if besideAddr != "" && (baseAddr != "" || rounds != 1) {
		fmt.Fprintln(stderr, "load: -beside-addr runs one round, without -baseline-addr")
		return 2
	}
	var ivw io.Writer
	if intervals != "" {
		f, err := os.OpenFile(intervals, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			fmt.Fprintln(stderr, "load:", err)
			return 1
		}
		defer f.Close()
		ivw = f
	}

	if besideAddr != "" {
		if ivw != nil {
			ivw = &lockedWriter{w: ivw}
		}
		return runBeside(cfg, ivw, stdout, stderr, &target{name: name, addr: addr, pid: pid},
			&target{name: besideName, addr: besideAddr, pid: besidePid})
	}
	targets := []*target{{name: name, addr: addr, pid: pid}}
	if baseAddr != "" {
		targets = append([]*target{{name: baseName, addr: baseAddr, pid: basePid}}, targets...)
	}
	for r := 0; r < rounds; r++ {
		for _, t := range targets {
			c := cfg
			c.Addr = t.addr
			// Fresh keys each round: counters from an earlier round must
			// not turn this one into a run of refusals.
			c.Offset = cfg.Offset + r*(cfg.Clients+cfg.Senders)
			res, err := Run(c, t.pid, ivw)
			if err != nil {
				fmt.Fprintf(stderr, "load: %s: %v\n", t.name, err)
				return 1
			}
			fmt.Fprintf(stdout, "# %s round %d/%d\n", t.name, r+1, rounds)
			res.Print(stdout)
			t.results = append(t.results, res)
		}
	}
	if len(targets) == 2 {
		printComparison(stdout, cfg, targets[0], targets[1])
	}
	if out != "" {
		if err := writeJSON(out, cfg, targets); err != nil {
			fmt.Fprintln(stderr, "load:", err)
			return 1
		}
	}
	for _, t := range targets {
		for _, r := range t.results {
			if r.Errors > 0 {
				fmt.Fprintf(stderr, "load: %s: %d sessions ended in errors\n", t.name, r.Errors)
				return 1
			}
		}
	}
	return 0
}

// runBeside drives both milters at once, each with the whole load, from
// this one process: what the machine and the load generator do to the
// latency of one they do to the other's in the same moments.
func runBeside(cfg Config, ivw io.Writer, stdout, stderr io.Writer, ts ...*target) int {
	var wg sync.WaitGroup
	errs := make([]error, len(ts))
	for i, t := range ts {
		c := cfg
		c.Addr, c.Tag = t.addr, t.name
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := Run(c, t.pid, ivw)
			errs[i] = err
			if err == nil {
				t.results = append(t.results, res)
			}
		}()
	}
	wg.Wait()
	rc := 0
	for i, t := range ts {
		if errs[i] != nil {
			fmt.Fprintf(stderr, "load: %s: %v\n", t.name, errs[i])
			rc = 1
			continue
		}
		r := t.results[0]
		fmt.Fprintf(stdout, "# %s\n", t.name)
		r.Print(stdout)
		if r.Errors > 0 {
			fmt.Fprintf(stderr, "load: %s: %d sessions ended in errors\n", t.name, r.Errors)
			rc = 1
		}
	}
	return rc
}

// lockedWriter lets two reporters share the intervals file, a record at
// a time.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

type target struct {
	name    string
	addr    string
	pid     int
	results []*Result
}

// median is the median of f over the rounds.
func median(rs []*Result, f func(*Result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	sort.Float64s(v)
	return v[len(v)/2]
}

// summary is each figure's median over the rounds, taken one by one: in
// a paced run every round has the same messages/s, so picking "the median
// round" would pick one at random.
type summary struct {
	sessions, msgs, cpu float64
	p99                 map[string]float64 // ms, per stage
	negotiated          string
}

func summarizeRounds(rs []*Result) summary {
	s := summary{
		sessions:   median(rs, func(r *Result) float64 { return r.SessionsPerSec }),
		msgs:       median(rs, func(r *Result) float64 { return r.MsgsPerSec }),
		cpu:        median(rs, func(r *Result) float64 { return r.CPUPerMsg }),
		p99:        map[string]float64{},
		negotiated: rs[0].Negotiated,
	}
	for _, st := range stageNames {
		if x := rs[0].Stages[st]; x == nil || x.N == 0 {
			continue
		}
		s.p99[st] = median(rs, func(r *Result) float64 { return ms(r.Stages[st].P99) })
	}
	return s
}

// printComparison prints the medians side by side, and "ratio" lines that
// test/bench/run gathers into its table.
func printComparison(w io.Writer, cfg Config, base, t *target) {
	b, s := summarizeRounds(base.results), summarizeRounds(t.results)
	fmt.Fprintf(w, "\n# medians of %d rounds: %s vs %s (%d sessions x %d messages, concurrency %d",
		len(t.results), t.name, base.name, cfg.Sessions, cfg.Messages, cfg.Concurrency)
	if cfg.Rate > 0 {
		fmt.Fprintf(w, ", paced at %.0f msgs/s", cfg.Rate)
	}
	fmt.Fprintln(w, ")")
	fmt.Fprintf(w, "%-22s %12s %12s\n", "", base.name, t.name)
	fmt.Fprintf(w, "%-22s %12.0f %12.0f\n", "sessions/s", b.sessions, s.sessions)
	fmt.Fprintf(w, "%-22s %12.0f %12.0f\n", "messages/s", b.msgs, s.msgs)
	fmt.Fprintf(w, "%-22s %12s %12s\n", "events negotiated", b.negotiated, s.negotiated)
	if b.cpu > 0 || s.cpu > 0 {
		fmt.Fprintf(w, "%-22s %12.3f %12.3f\n", "milter CPU ms/message", b.cpu, s.cpu)
	}
	for _, st := range stageNames {
		bv, bok := b.p99[st]
		sv, sok := s.p99[st]
		if !bok && !sok {
			continue
		}
		fmt.Fprintf(w, "%-22s %12s %12s\n", "p99 ms "+st, optMS(bv, bok), optMS(sv, sok))
	}
	label := "load"
	if cfg.Rate > 0 {
		label = fmt.Sprintf("load@%.0f/s", cfg.Rate)
	}
	fmt.Fprintf(w, "ratio\t%s: %s/%s messages/s\t%.2f\t>= 1.00\n", label, t.name, base.name, s.msgs/b.msgs)
	if s.cpu > 0 {
		fmt.Fprintf(w, "value\t%s: %s CPU ms/message\t%.3f\t<= 0.150\n", label, t.name, s.cpu)
	}
	if s.cpu > 0 && b.cpu > 0 {
		fmt.Fprintf(w, "ratio\t%s: %s/%s CPU per message\t%.2f\t\n", label, t.name, base.name, s.cpu/b.cpu)
	}
	worst, stage := 0.0, ""
	for _, st := range stageNames {
		if v, ok := s.p99[st]; ok && st != "message" && v > worst { // "message" is a transaction, not a stage
			worst, stage = v, st
		}
	}
	target := "<= 1.000"
	if cfg.Rate <= 0 {
		target = "(saturated: reference)"
	}
	fmt.Fprintf(w, "value\t%s: %s worst p99 per stage (%s), ms\t%.3f\t%s\n", label, t.name, stage, worst, target)
}

func optMS(v float64, ok bool) string {
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%.3f", v)
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func writeJSON(path string, cfg Config, targets []*target) error {
	type entry struct {
		Name   string    `json:"name"`
		Addr   string    `json:"addr"`
		Rounds []*Result `json:"rounds"`
	}
	doc := struct {
		Config  Config  `json:"config"`
		Targets []entry `json:"targets"`
	}{Config: cfg}
	for _, t := range targets {
		doc.Targets = append(doc.Targets, entry{t.name, t.addr, t.results})
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// byStage writes counts per stage in protocol order: "mail 3, rcpt 1".
func byStage(n map[string]int) string {
	var parts []string
	for _, st := range stageNames {
		if n[st] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", st, n[st]))
		}
	}
	return strings.Join(parts, ", ")
}

// Print writes one round's results as a table.
func (r *Result) Print(w io.Writer) {
	fmt.Fprintf(w, "sessions %d in %.2fs: %.0f sessions/s, %d messages: %.0f messages/s; negotiated %s\n",
		r.Sessions, r.Elapsed.Seconds(), r.SessionsPerSec, r.Messages, r.MsgsPerSec, r.Negotiated)
	if len(r.Refused) > 0 {
		fmt.Fprintf(w, "refused: %s\n", byStage(r.Refused))
	}
	if len(r.AcceptedAt) > 0 {
		fmt.Fprintf(w, "accepted before end of message: %s\n", byStage(r.AcceptedAt))
	}
	if r.Errors > 0 {
		fmt.Fprintf(w, "errors: %d (first: %s)\n", r.Errors, r.FirstError)
	}
	if r.CPUPerMsg > 0 {
		fmt.Fprintf(w, "milter CPU: %.3f ms per message (%.2fs in all); load generator CPU %.3f ms per message\n",
			r.CPUPerMsg, r.CPUSeconds, r.SelfCPUPerMsg)
	}
	fmt.Fprintf(w, "%-10s %8s %9s %9s %9s %9s\n", "stage", "n", "p50 ms", "p99 ms", "p99.9 ms", "max ms")
	for _, st := range stageNames {
		x, ok := r.Stages[st]
		if !ok || x.N == 0 {
			continue
		}
		fmt.Fprintf(w, "%-10s %8d %9.3f %9.3f %9.3f %9.3f\n", st, x.N, ms(x.P50), ms(x.P99), ms(x.P999), ms(x.Max))
	}
}
