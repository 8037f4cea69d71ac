// Package throughput measures what a milter costs a real MTA: Postfix fed
// by smtp-source with no milter, a do-nothing go-milter and sluice, and one
// Sendmail session with and without sluice, in the same run.
//
// Run it through test/bench/run, or:
//
//	SLUICE_E2E=1 go test -run '^$' -bench . -benchtime 1x ./test/bench/throughput
//
// Each benchmark prints "ratio" and "value" lines (tab-separated: name,
// value, target) that test/bench/run gathers into one table. The numbers
// are medians of BENCH_ROUNDS rounds (default 3), the variants
// interleaved within each round so that a change in machine load hits
// all of them alike.
package throughput

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func rounds() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 3
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// variant is one MTA setup measured.
type variant struct {
	name    string
	addr    string // the MTA's SMTP listener
	drain   func() // waits until the MTA has relayed everything
	milter  int    // the milter's pid, for its CPU time; 0 without one
	postfix *mta.Postfix
	runs    []run
}

type run struct {
	msgsPerSec float64
	cpuPerMsg  time.Duration // whole machine
	milterCPU  time.Duration // the milter process, per message
	sutCPU     time.Duration // Postfix, the milter, smtp-source and the sink, per message
	postfixCPU time.Duration // Postfix's own processes, per message
}

func (v *variant) median() run {
	r := append([]run(nil), v.runs...)
	sort.Slice(r, func(i, j int) bool { return r[i].msgsPerSec < r[j].msgsPerSec })
	return r[len(r)/2]
}

// BenchmarkPostfix: smtp-source -> Postfix -> smtp-sink, with no milter,
// with a do-nothing go-milter taking every event, and with sluice on the
// built-in policy (limits raised so every message is counted).
func BenchmarkPostfix(b *testing.B) {
	testenv.Require(b)
	msgs := envInt("BENCH_POSTFIX_MESSAGES", 2000)
	sessions := envInt("BENCH_POSTFIX_SESSIONS", 20)
	sink := startSink(b)

	sl := sluicetest.StartSluice(b, sluicetest.CountEverything)
	noop := startNoop(b)
	least := startNoop(b, "-floor")

	// sluice on a unix socket too, as a Debian Postfix in its chroot
	// would use it.
	slUnix := sluicetest.NewSluice(b)
	slUnix.Listen = "unix:" + filepath.Join(slUnix.Dir, "sluice.sock")
	slUnix.Group = "postfix"
	slUnix.Start(sluicetest.CountEverything)

	none := mta.StartPostfix(b, mta.PostfixOptions{Sink: sink.Sink})
	withNoop := mta.StartPostfix(b, mta.PostfixOptions{Sink: sink.Sink, Milter: noop.listen})
	withSluice := mta.StartPostfix(b, mta.PostfixOptions{Sink: sink.Sink, Milter: sl.Listen})
	withUnix := mta.StartPostfix(b, mta.PostfixOptions{Sink: sink.Sink, Milter: slUnix.Listen})
	withFloor := mta.StartPostfix(b, mta.PostfixOptions{Sink: sink.Sink, Milter: least.listen})

	vs := []*variant{
		{name: "no milter", addr: none.Addr, drain: drainer(b, none), postfix: none},
		{name: "noop milter", addr: withNoop.Addr, drain: drainer(b, withNoop), milter: noop.pid, postfix: withNoop},
		{name: "sluice", addr: withSluice.Addr, drain: drainer(b, withSluice), milter: listenerPid(b, sl.Listen), postfix: withSluice},
		{name: "sluice unix", addr: withUnix.Addr, drain: drainer(b, withUnix), milter: listenerPid(b, slUnix.Listen), postfix: withUnix},
		{name: "floor milter", addr: withFloor.Addr, drain: drainer(b, withFloor), milter: least.pid, postfix: withFloor},
	}
	// BENCH_ALT_BIN names another sluice binary to compare in the same
	// run, for trying a change against the tree; BENCH_ALT_CONFIG, another
	// config (without listen) for it or for this tree's sluice.
	alt, altConfig := os.Getenv("BENCH_ALT_BIN"), os.Getenv("BENCH_ALT_CONFIG")
	if alt == "" && altConfig != "" {
		alt = sluicetest.Binary(b)
	}
	if altConfig == "" {
		altConfig = sluicetest.CountEverything
	}
	if alt != "" {
		d := startSluiceBinary(b, alt, altConfig)
		p := mta.StartPostfix(b, mta.PostfixOptions{Sink: sink.Sink, Milter: d.listen})
		vs = append(vs, &variant{name: "sluice (alt)", addr: p.Addr, drain: drainer(b, p), milter: d.pid, postfix: p})
	}
	source := testenv.Tool(b, "smtp-source")
	// One warm-up message through each, so that Postfix's processes are
	// started before the clock runs.
	for _, v := range vs {
		smtpSource(b, source, v.addr, 1, 1)
		v.drain()
	}
	for r := 0; r < rounds(); r++ {
		for _, v := range vs {
			cpu0, mcpu0 := machineCPU(b), procCPU(b, v.milter)
			pf0 := postfixCPU(b, v.postfix)
			sut0 := pf0 + procCPU(b, sink.pid)
			start := time.Now()
			srcCPU := smtpSource(b, source, v.addr, sessions, msgs)
			elapsed := time.Since(start)
			// Count what Postfix spends relaying these messages too.
			v.drain()
			cpu1, mcpu1 := machineCPU(b), procCPU(b, v.milter)
			pf1 := postfixCPU(b, v.postfix)
			sut1 := pf1 + procCPU(b, sink.pid)
			n := time.Duration(msgs)
			v.runs = append(v.runs, run{
				msgsPerSec: float64(msgs) / elapsed.Seconds(),
				cpuPerMsg:  (cpu1 - cpu0) / n,
				milterCPU:  (mcpu1 - mcpu0) / n,
				sutCPU:     (sut1 - sut0 + mcpu1 - mcpu0 + srcCPU) / n,
				postfixCPU: (pf1 - pf0) / n,
			})
			x := v.runs[r]
			b.Logf("round %d %-12s %6.0f msgs/s, CPU ms/msg: machine %.2f, Postfix+milter+source+sink %.2f, Postfix %.2f, milter %.3f",
				r+1, v.name, x.msgsPerSec, ms(x.cpuPerMsg), ms(x.sutCPU), ms(x.postfixCPU), ms(x.milterCPU))
		}
	}
	if sink.Dir != "" {
		// Every message was delivered, once.
		if got, want := sink.Count(), len(vs)*(1+rounds()*msgs); got != want {
			b.Errorf("the sink holds %d messages, want %d", got, want)
		}
	}
	base := vs[0].median()
	fmt.Printf("\n# Postfix + smtp-source: %d messages, %d sessions, 200-byte body, one message per connection, %s; medians of %d\n",
		msgs, sessions, sinkKind(), rounds())
	fmt.Printf("%-12s %10s %16s %16s %16s %14s\n", "", "msgs/s", "CPU ms/msg (all)", "CPU ms/msg (SUT)", "Postfix ms/msg", "milter ms/msg")
	for _, v := range vs {
		m := v.median()
		fmt.Printf("%-12s %10.0f %16.2f %16.2f %16.2f %14.3f\n", v.name, m.msgsPerSec, ms(m.cpuPerMsg), ms(medianSUT(v)),
			ms(medianOf(v, func(r run) time.Duration { return r.postfixCPU })), ms(medianOf(v, func(r run) time.Duration { return r.milterCPU })))
	}
	fmt.Println("(SUT: Postfix's processes, the milter, smtp-source and smtp-sink; \"all\" is the whole machine, other work included;")
	fmt.Println(" msgs/s and \"all\" from the round of median msgs/s, the other columns each its own median)")
	fmt.Printf("ratio\tpostfix: noop milter / no milter msgs/s\t%.2f\t(reference)\n", vs[1].median().msgsPerSec/base.msgsPerSec)
	fmt.Printf("ratio\tpostfix: sluice / no milter msgs/s\t%.2f\t>= 0.85\n", vs[2].median().msgsPerSec/base.msgsPerSec)
	fmt.Printf("ratio\tpostfix: sluice / noop milter msgs/s\t%.2f\t(reference)\n", vs[2].median().msgsPerSec/vs[1].median().msgsPerSec)
	fmt.Printf("ratio\tpostfix: sluice / no milter, by CPU cost (no-milter CPU / sluice CPU)\t%.2f\t(noise-free check)\n", ms(medianSUT(vs[0]))/ms(medianSUT(vs[2])))
	fmt.Printf("ratio\tpostfix: noop / no milter, by CPU cost\t%.2f\t(reference)\n", ms(medianSUT(vs[0]))/ms(medianSUT(vs[1])))
	fmt.Printf("value\tpostfix: sluice CPU ms/message (one message per connection)\t%.3f\t(reference)\n", ms(vs[2].median().milterCPU))
	fmt.Printf("ratio\tpostfix: sluice on a unix socket / no milter msgs/s\t%.2f\t>= 0.85\n", vs[3].median().msgsPerSec/base.msgsPerSec)
	fmt.Printf("ratio\tpostfix: sluice on a unix socket / no milter, by CPU cost\t%.2f\t(noise-free check)\n", ms(medianSUT(vs[0]))/ms(medianSUT(vs[3])))
	// The floor: a milter that takes CONNECT only and accepts there.
	// Nothing that counts messages can cost Postfix less over TCP.
	fmt.Printf("ratio\tpostfix: floor milter (CONNECT only, accept) / no milter msgs/s\t%.2f\t(reference)\n", vs[4].median().msgsPerSec/base.msgsPerSec)
	fmt.Printf("ratio\tpostfix: floor milter / no milter, by CPU cost\t%.2f\t(reference)\n", ms(medianSUT(vs[0]))/ms(medianSUT(vs[4])))
	// What a milter costs Postfix beyond the milter's own CPU, and how
	// close sluice comes to the floor, each round against the others
	// of its own round: the rounds share the machine's mood.
	fmt.Printf("ratio\tpostfix: sluice / floor milter msgs/s (median of rounds)\t%.2f\t>= 0.97\n", medianRatio(vs[2], vs[4], rateOf))
	fmt.Printf("value\tpostfix: Postfix's own CPU ms/msg, sluice minus no milter (median of rounds)\t%+.2f\t<= +0.50\n", medianDiff(vs[2], vs[0], postfixCPUOf))
	fmt.Printf("value\tpostfix: Postfix's own CPU ms/msg, floor milter minus no milter (median of rounds)\t%+.2f\t(reference)\n", medianDiff(vs[4], vs[0], postfixCPUOf))
	if len(vs) > 5 {
		fmt.Printf("ratio\tpostfix: sluice (alt) / no milter msgs/s\t%.2f\t(reference)\n", vs[5].median().msgsPerSec/base.msgsPerSec)
		fmt.Printf("ratio\tpostfix: sluice (alt) / no milter, by CPU cost\t%.2f\t(reference)\n", ms(medianSUT(vs[0]))/ms(medianSUT(vs[5])))
		fmt.Printf("ratio\tpostfix: sluice (alt) / floor milter msgs/s (median of rounds)\t%.2f\t(reference)\n", medianRatio(vs[5], vs[4], rateOf))
		fmt.Printf("value\tpostfix: Postfix's own CPU ms/msg, sluice (alt) minus no milter (median of rounds)\t%+.2f\t(reference)\n", medianDiff(vs[5], vs[0], postfixCPUOf))
		fmt.Printf("value\tpostfix: milter CPU ms/msg, sluice minus sluice (alt) (median of rounds)\t%+.3f\t(reference)\n", medianDiff(vs[2], vs[5], milterCPUOf))
	}
	b.ReportMetric(vs[2].median().msgsPerSec/base.msgsPerSec, "sluice/none")
}

// BenchmarkSendmailSession: one SMTP session through Sendmail on an inet
// milter socket, with no milter, with sluice, and with a sluice built
// without TCP_QUICKACK (-X sluice/milter.quickACK=off; the binary is
// $SLUICE_BIN_NOQUICKACK, else built here).
func BenchmarkSendmailSession(b *testing.B) {
	testenv.Require(b)
	msgs := envInt("BENCH_SENDMAIL_MESSAGES", 50)
	sink := startSink(b)

	sl := sluicetest.StartSluice(b, sluicetest.CountEverything)
	slow := startSluiceBinary(b, noQuickAckBinary(b), sluicetest.CountEverything)

	none := mta.StartSendmail(b, mta.SendmailOptions{Sink: sink.Sink})
	withSluice := mta.StartSendmail(b, mta.SendmailOptions{Sink: sink.Sink, Milter: sl.Listen})
	withSlow := mta.StartSendmail(b, mta.SendmailOptions{Sink: sink.Sink, Milter: slow.listen})

	vs := []*variant{
		{name: "no milter", addr: none.Addr},
		{name: "sluice", addr: withSluice.Addr},
		{name: "sluice, no QUICKACK", addr: withSlow.Addr},
	}
	source := testenv.Tool(b, "smtp-source")
	for _, v := range vs {
		smtpSourceSession(b, source, v.addr, 1)
	}
	for r := 0; r < rounds(); r++ {
		for _, v := range vs {
			start := time.Now()
			smtpSourceSession(b, source, v.addr, msgs)
			elapsed := time.Since(start)
			v.runs = append(v.runs, run{msgsPerSec: float64(msgs) / elapsed.Seconds()})
			b.Logf("round %d %-20s %6.1f msgs/s", r+1, v.name, float64(msgs)/elapsed.Seconds())
		}
	}
	fmt.Printf("\n# Sendmail, one SMTP session, %d messages, inet milter socket; medians of %d\n", msgs, rounds())
	for _, v := range vs {
		fmt.Printf("%-22s %8.1f msgs/s\n", v.name, v.median().msgsPerSec)
	}
	base := vs[0].median().msgsPerSec
	fmt.Printf("ratio\tsendmail 1 session: sluice / no milter msgs/s\t%.2f\t(no 40 ms stalls)\n", vs[1].median().msgsPerSec/base)
	fmt.Printf("ratio\tsendmail 1 session: sluice without QUICKACK / no milter\t%.2f\t(reference)\n", vs[2].median().msgsPerSec/base)
	fmt.Printf("ratio\tsendmail 1 session: sluice / sluice without QUICKACK\t%.2f\t(QUICKACK's worth)\n", vs[1].median().msgsPerSec/vs[2].median().msgsPerSec)
	b.ReportMetric(vs[1].median().msgsPerSec/base, "sluice/none")
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func sinkKind() string {
	if os.Getenv("BENCH_SINK") == "quiet" {
		return "sink keeps nothing"
	}
	return "sink writes each message to a file"
}

// smtpSource sends msgs messages in sessions parallel sessions, one
// message per connection, as an MX sees most mail.
// It returns the CPU time smtp-source used.
func smtpSource(b *testing.B, source, addr string, sessions, msgs int) time.Duration {
	b.Helper()
	cmd := exec.Command(source, "-s", strconv.Itoa(sessions), "-m", strconv.Itoa(msgs), "-l", "200",
		"-f", "sender@example.test", "-t", "rcpt@example.org", addr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("smtp-source to %s: %v\n%s", addr, err, out)
	}
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// medianSUT is the median CPU cost per message of the system under test.
func rateOf(r run) float64       { return r.msgsPerSec }
func postfixCPUOf(r run) float64 { return ms(r.postfixCPU) }
func milterCPUOf(r run) float64  { return ms(r.milterCPU) }

// medianOf is the median of one figure over v's rounds.
func medianOf(v *variant, f func(run) time.Duration) time.Duration {
	c := make([]time.Duration, len(v.runs))
	for i, r := range v.runs {
		c[i] = f(r)
	}
	sort.Slice(c, func(i, j int) bool { return c[i] < c[j] })
	return c[len(c)/2]
}

// medianRatio is the median over rounds of f(a)/f(b), each round's a
// against the same round's b.
func medianRatio(a, b *variant, f func(run) float64) float64 {
	return medianPaired(a, b, func(x, y run) float64 { return f(x) / f(y) })
}

// medianDiff is the median over rounds of f(a)-f(b), paired by round.
func medianDiff(a, b *variant, f func(run) float64) float64 {
	return medianPaired(a, b, func(x, y run) float64 { return f(x) - f(y) })
}

func medianPaired(a, b *variant, f func(x, y run) float64) float64 {
	c := make([]float64, len(a.runs))
	for i := range a.runs {
		c[i] = f(a.runs[i], b.runs[i])
	}
	sort.Float64s(c)
	return c[len(c)/2]
}

func medianSUT(v *variant) time.Duration {
	return medianOf(v, func(r run) time.Duration { return r.sutCPU })
}

// postfixCPU is the CPU time of one Postfix instance so far: its master,
// the children the master has reaped, and the children still running.
func postfixCPU(b *testing.B, p *mta.Postfix) time.Duration {
	b.Helper()
	data, err := os.ReadFile(filepath.Join(p.Dir, "queue", "pid", "master.pid"))
	if err != nil {
		b.Fatalf("postfix master pid: %v", err)
	}
	master, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	total := procCPUAll(b, master, true)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == master {
			continue
		}
		if ppid, ok := procPPID(pid); ok && ppid == master {
			total += procCPUAll(b, pid, false)
		}
	}
	return total
}

func procStat(pid int) ([]string, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, false
	}
	return strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:])), true
}

func procPPID(pid int) (int, bool) {
	f, ok := procStat(pid)
	if !ok {
		return 0, false
	}
	n, _ := strconv.Atoi(f[1])
	return n, true
}

// procCPUAll is a process's CPU time, with its reaped children's when
// children is set. A process gone meanwhile counts 0.
func procCPUAll(b *testing.B, pid int, children bool) time.Duration {
	f, ok := procStat(pid)
	if !ok {
		return 0
	}
	var ticks int64
	last := 12
	if children {
		last = 14
	}
	for i := 11; i <= last; i++ {
		n, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// smtpSourceSession sends msgs messages over one SMTP connection.
func smtpSourceSession(b *testing.B, source, addr string, msgs int) {
	b.Helper()
	out, err := exec.Command(source, "-s", "1", "-d", "-m", strconv.Itoa(msgs), "-l", "200",
		"-f", "sender@example.test", "-t", "rcpt@example.org", addr).CombinedOutput()
	if err != nil {
		b.Fatalf("smtp-source to %s: %v\n%s", addr, err, out)
	}
}

// drainer waits until Postfix's queue is empty: every accepted message
// relayed to the sink.
func drainer(b *testing.B, p *mta.Postfix) func() {
	return func() {
		b.Helper()
		deadline := time.Now().Add(5 * time.Minute)
		for {
			q := p.Queue()
			if len(q) == 0 {
				return
			}
			if time.Now().After(deadline) {
				b.Fatalf("Postfix's queue did not drain: %d messages, first %+v", len(q), q[0])
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// startSink starts the sink the MTAs relay to: by default the harness's
// smtp-sink, which writes each message to a file as MTA-TESTING.md's
// reference numbers were measured (and as real delivery costs something).
// BENCH_SINK=quiet starts one that keeps nothing: every variant then
// costs less by the same amount, and the ratios come out harsher.
func startSink(b *testing.B) quietSink {
	b.Helper()
	if os.Getenv("BENCH_SINK") != "quiet" {
		s := mta.StartSink(b)
		return quietSink{s, listenerPid(b, "inet:"+s.Addr)}
	}
	bin := testenv.Tool(b, "smtp-sink")
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(b))
	cmd := exec.Command(bin, "-u", "postfix", "-4", addr, "1024")
	pid := startDaemon(b, cmd, "smtp-sink")
	waitListening(b, "inet:"+addr)
	return quietSink{&mta.Sink{Addr: addr}, pid}
}

// quietSink is a sink and its process, whose CPU time is counted.
type quietSink struct {
	*mta.Sink
	pid int
}

type daemon struct {
	listen string
	pid    int
}

// startNoop starts the do-nothing go-milter of test/noopmilter, with its
// flags (-floor: the least a milter can cost).
func startNoop(b *testing.B, flags ...string) daemon {
	b.Helper()
	listen := fmt.Sprintf("inet:127.0.0.1:%d", testenv.FreePort(b))
	bin := os.Getenv("NOOPMILTER_BIN")
	if bin == "" {
		bin = buildTool(b, "noopmilter", "./test/noopmilter")
	}
	cmd := exec.Command(bin, append([]string{"-listen", listen}, flags...)...)
	pid := startDaemon(b, cmd, "noopmilter")
	waitListening(b, listen)
	return daemon{listen, pid}
}

// startSluiceBinary runs a given sluice binary on config (listen added).
func startSluiceBinary(b *testing.B, bin, config string) daemon {
	b.Helper()
	listen := fmt.Sprintf("inet:127.0.0.1:%d", testenv.FreePort(b))
	path := filepath.Join(testenv.Dir(b, "sluice-bench"), "sluice.toml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf("listen = %q\n%s", listen, config)), 0o644); err != nil {
		b.Fatal(err)
	}
	pid := startDaemon(b, exec.Command(bin, "serve", "-config", path), "sluice")
	waitListening(b, listen)
	return daemon{listen, pid}
}

func noQuickAckBinary(b *testing.B) string {
	if p := os.Getenv("SLUICE_BIN_NOQUICKACK"); p != "" {
		return p
	}
	return buildTool(b, "sluice-noquickack", "./cmd/sluice", "-ldflags", "-X sluice/milter.quickACK=off")
}

// buildTool builds a main package of the module into the test's temp dir.
func buildTool(b *testing.B, name, pkg string, flags ...string) string {
	b.Helper()
	out := filepath.Join(b.TempDir(), name)
	args := append(append([]string{"build", "-o", out}, flags...), pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = moduleRoot(b)
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build %s: %v\n%s", pkg, err, msg)
	}
	return out
}

func moduleRoot(b *testing.B) string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		b.Fatal(err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

func startDaemon(b *testing.B, cmd *exec.Cmd, name string) int {
	b.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	b.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	return cmd.Process.Pid
}

func waitListening(b *testing.B, spec string) {
	b.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for testenv.Listening(spec) != nil {
		if time.Now().After(deadline) {
			b.Fatalf("nothing listens on %s", spec)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var pidRE = regexp.MustCompile(`pid=(\d+)`)

// listenerPid finds the process listening on a socket spec.
func listenerPid(b *testing.B, spec string) int {
	b.Helper()
	network, addr, err := testenv.SplitSpec(spec)
	if err != nil {
		b.Fatal(err)
	}
	args := []string{"-Hlxp", "src", addr}
	if network == "tcp" {
		args = []string{"-Hltnp", "sport = :" + addr[strings.LastIndexByte(addr, ':')+1:]}
	}
	out, err := exec.Command("ss", args...).Output()
	if err != nil {
		b.Fatalf("ss: %v", err)
	}
	m := pidRE.FindSubmatch(out)
	if m == nil {
		b.Fatalf("no process listens on %s: %s", spec, out)
	}
	pid, _ := strconv.Atoi(string(m[1]))
	return pid
}

// procCPU is a process's user+system time so far (0 for pid 0).
func procCPU(b *testing.B, pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	return procCPUAll(b, pid, false)
}

// machineCPU is the busy time of all CPUs so far, from /proc/stat.
func machineCPU(b *testing.B) time.Duration {
	f, err := os.Open("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	fields := strings.Fields(sc.Text()) // cpu user nice system idle iowait irq softirq steal
	var busy int64
	for i, x := range fields[1:] {
		if i == 3 || i == 4 {
			continue // idle, iowait
		}
		if i >= 8 {
			break // guest time is already in user
		}
		n, _ := strconv.ParseInt(x, 10, 64)
		busy += n
	}
	return time.Duration(busy) * 10 * time.Millisecond
}
