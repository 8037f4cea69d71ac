package replay

import (
	"bytes"
	"context"
	"sync"
	"syscall"
	"testing"
	"time"

	"sluice/config"
	"sluice/maillog"
	"sluice/maillog/maillogtest"
)

// benchConfig counts at every stage a log tells of, none of its clients
// trusted, in the daemon's own mode.
const benchConfig = `listen = "inet:127.0.0.1:8890"
trusted = []

[[limit]]
name = "conn-per-ip"
count = "concurrent"
per = "client_ip"
max = 5

[[limit]]
name = "msgs-per-ip"
count = "messages"
per = "client_ip"
rate = ["30/1m", "1000/1d"]

[[limit]]
name = "msgs-per-sender"
count = "messages"
per = "sender"
rate = ["10/1h"]
action = "hold"

[[limit]]
name = "rcpts-per-user"
count = "recipients"
per = "sasl_user"
rate = "50/1h"
action = "tag"
`

var benchLog struct {
	once  sync.Once
	data  []byte
	lines int
}

// generated is a made-up Postfix log of a million lines, made once.
func generated(tb testing.TB) ([]byte, int) {
	benchLog.once.Do(func() {
		var b bytes.Buffer
		n, err := maillogtest.Postfix(&b, maillogtest.Options{Lines: 1_000_000, Seed: 1})
		if err != nil {
			tb.Fatal(err)
		}
		benchLog.data, benchLog.lines = b.Bytes(), n
	})
	return benchLog.data, benchLog.lines
}

// run replays log through cfg and returns the report.
func run(tb testing.TB, c *config.Config, log []byte) *Report {
	r, err := New(c, Options{})
	if err != nil {
		tb.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	rb := maillog.NewRebuilder(10*time.Minute, func(st *maillog.Step) { r.Step(ctx, st) })
	rd := &maillog.Reader{Year: 2026, Location: time.UTC, Stats: &rb.Stats}
	if err := rd.Read(ctx, []maillog.Source{{Name: "bench", R: bytes.NewReader(log)}}, rb.Add); err != nil {
		tb.Fatal(err)
	}
	rb.Flush()
	return r.Report(&rb.Stats, 0, 0)
}

// BenchmarkReplay reads, rebuilds and replays a million-line Postfix log
// through four rules: lines/s is wall time, lines/cpu-s the process's
// CPU time (user and system, the garbage collector's included), which a
// busy shared machine disturbs less. Run it with -cpu 1 for one core.
func BenchmarkReplay(b *testing.B) {
	log, lines := generated(b)
	c, err := config.Parse("bench.toml", []byte(benchConfig))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(log)))
	b.ReportAllocs()
	var cpu time.Duration
	start := time.Now()
	for b.Loop() {
		c0 := cpuTime()
		rep := run(b, c, log)
		cpu += cpuTime() - c0
		if rep.Lines != int64(lines) || rep.Skipped != 0 {
			b.Fatalf("read %d lines, %d skipped; want %d and 0", rep.Lines, rep.Skipped, lines)
		}
	}
	wall := time.Since(start)
	b.ReportMetric(float64(lines)*float64(b.N)/wall.Seconds(), "lines/s")
	b.ReportMetric(float64(lines)*float64(b.N)/cpu.Seconds(), "lines/cpu-s")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
