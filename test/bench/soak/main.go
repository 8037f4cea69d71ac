// Command soak runs sluice under a steady load for a long time and shows
// whether it stays flat: memory, goroutines, fds, latency and CPU.
//
//	soak -sluice ./sluice -load ./load -duration 60m
//
// It starts sluice on the memory store (max_keys 100,000, a snapshot every
// minute, metrics and the admin socket on), drives it with test/load at a
// steady rate with fresh client addresses and senders every minute, sends
// SIGHUP every 5 minutes and runs `sluice counters top` every minute. With
// -control, a do-nothing milter (test/noopmilter) runs beside it under the
// same load from a second load generator. Every 10 s it samples RSS and
// open fds (/proc), goroutines and Go heap in use (/metrics; the heap as
// the mean of a scrape a second), sluice's own time per stage (its
// sluice_stage_duration_seconds histogram, p99 over each interval), and
// from the load generators' interval records the round trip's p99 per
// stage and the CPU per message of sluice, the do-nothing milter and the
// load generator itself. It writes soak.csv and soak.png into -out,
// prints a table and a verdict: after -warmup each judged curve, taken a
// minute at a time (-judge), within ±10% of its median, and the fds and
// goroutines of the idle daemon after the run equal those before it. The
// tail judged is sluice's own time per stage: a round trip's p99 on a
// virtual machine is mostly how soon a halted vCPU wakes, for a milter
// that does nothing as much as for sluice, so those are printed and drawn
// only. With the do-nothing milter beside it, sluice's CPU per message is
// judged as a ratio to the do-nothing's in the same minute, which moves
// with the machine and not with sluice. The exit code is 1 when the
// verdict fails. -rejudge FILE judges an earlier soak.csv again.
//
// -load-idle runs the load generator in the SCHED_IDLE class, below both
// milters: on a machine with no core to spare, a stage's own time then
// holds sluice's work and not the turns the scheduler gave the load
// generator meanwhile (which put sluice's own p99 at 0.1–0.2 ms, against
// under 50 µs with sluice never put off its CPU, on a 2-vCPU machine).
//
// test/bench/soak/run builds the binaries and runs this. It is a
// benchmark, not part of the test suite's pass/fail.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// settings is what the command line chose.
type settings struct {
	sluice, load, out, policy string
	control                   string // the do-nothing milter's binary; "" runs none
	sluiceCPUs, loadCPUs      string
	loadIdle                  bool // the load generator in SCHED_IDLE

	duration, warmup, sample time.Duration
	churn, hup, top          time.Duration
	snapshot                 time.Duration
	rate                     float64
	maxKeys                  int
	clients, senders         int
	messages, concurrency    int
	tolerance                float64
	judge                    time.Duration
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var s settings
	fs.StringVar(&s.sluice, "sluice", "", "sluice binary (required)")
	fs.StringVar(&s.load, "load", "", "test/load binary (required)")
	fs.StringVar(&s.control, "control", "", "test/noopmilter binary: drive this do-nothing milter beside sluice with the same load, and judge sluice's CPU per message and p99s as ratios to its own in the same minute (default: none, and the raw curves are judged)")
	fs.StringVar(&s.policy, "policy", "cmd/sluice/default.toml", "the rules: a config whose listen line is replaced and to which the soak's tables are added")
	fs.StringVar(&s.out, "out", "", "directory for soak.csv, soak.png, the config and sluice's log (default: a new one in /tmp)")
	fs.StringVar(&s.sluiceCPUs, "sluice-cpus", "", "run sluice on these CPUs (taskset -c LIST; default: wherever the kernel puts it)")
	fs.StringVar(&s.loadCPUs, "load-cpus", "", "run the load generator on these CPUs (taskset -c LIST)")
	fs.BoolVar(&s.loadIdle, "load-idle", false, "run the load generator in the SCHED_IDLE class (chrt --idle 0), below both milters: with no core to spare, a stage's own time then holds none of the load generator's turns on the CPU")
	fs.DurationVar(&s.duration, "duration", 60*time.Minute, "how long the load runs")
	fs.DurationVar(&s.warmup, "warmup", 5*time.Minute, "start of the stretch the verdict judges")
	fs.DurationVar(&s.sample, "sample", 10*time.Second, "sampling interval")
	fs.DurationVar(&s.churn, "churn", time.Minute, "fresh client addresses and senders this often")
	fs.DurationVar(&s.hup, "hup", 5*time.Minute, "SIGHUP (config reload) this often")
	fs.DurationVar(&s.top, "top", time.Minute, "`sluice counters top` this often")
	fs.DurationVar(&s.snapshot, "snapshot", time.Minute, "the store's snapshot_interval")
	fs.Float64Var(&s.rate, "rate", 500, "messages per second")
	fs.IntVar(&s.maxKeys, "max-keys", 100_000, "the store's max_keys")
	fs.IntVar(&s.clients, "clients", 5000, "client addresses per churn period")
	fs.IntVar(&s.senders, "senders", 30000, "senders per churn period")
	fs.IntVar(&s.messages, "messages", 5, "messages per session")
	fs.IntVar(&s.concurrency, "concurrency", 20, "sessions open at once")
	fs.Float64Var(&s.tolerance, "tolerance", 0.10, "how far from its median a curve may stray after the warmup")
	fs.DurationVar(&s.judge, "judge", time.Minute, "the window the verdict judges each curve over (the schedule's period: a snapshot, a counters top and fresh keys each minute)")
	rejudge := fs.String("rejudge", "", "judge the curves of an earlier run's soak.csv again (with -duration, -warmup, -sample, -judge, -tolerance as it ran) and run nothing")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *rejudge != "" {
		samples, err := readCSV(*rejudge)
		if err != nil {
			fmt.Fprintln(stderr, "soak:", err)
			return 1
		}
		if why := judgeCurves(stdout, s, samples); len(why) > 0 {
			fmt.Fprintf(stdout, "\nCURVES: FAIL\n  %s\n", strings.Join(why, "\n  "))
			return 1
		}
		fmt.Fprintln(stdout, "\nCURVES: PASS")
		return 0
	}
	if s.sluice == "" || s.load == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "soak: -sluice and -load are required; no arguments")
		fs.Usage()
		return 2
	}
	if s.duration <= 0 || s.sample <= 0 || s.churn <= 0 || s.hup <= 0 || s.top <= 0 || s.rate <= 0 || s.warmup < 0 {
		fmt.Fprintln(stderr, "soak: durations and the rate must be positive")
		return 2
	}
	if s.out == "" {
		dir, err := os.MkdirTemp("", "sluice-soak-")
		if err != nil {
			fmt.Fprintln(stderr, "soak:", err)
			return 1
		}
		s.out = dir
	} else if err := os.MkdirAll(s.out, 0o755); err != nil {
		fmt.Fprintln(stderr, "soak:", err)
		return 1
	}
	r, err := soak(s, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "soak:", err)
		return 1
	}
	if !r.pass {
		return 1
	}
	return 0
}
