package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// daemon is the sluice under test.
type daemon struct {
	bin, config, admin, metrics, listen string
	cmd                                 *exec.Cmd
	exited                              chan struct{}
	log                                 *os.File
	heap                                *heapMeter
	// the stage histograms at the last sample and at the last window's
	// close, which the next sample's own p99s are taken since
	lastHists, windowHists map[string]stageHist
}

// loadRecord is test/load's Interval, as far as the soak reads it.
type loadRecord struct {
	At            time.Duration      `json:"at_ns"`
	Length        time.Duration      `json:"length_ns"`
	Messages      int                `json:"messages"`
	Refused       int                `json:"refused"`
	Errors        int                `json:"errors"`
	FirstErr      string             `json:"first_error"`
	CPUPerMsg     float64            `json:"milter_cpu_ms_per_message"`
	LoadCPUPerMsg float64            `json:"load_cpu_ms_per_message"`
	P99           map[string]float64 `json:"p99_ms"`
	WindowP99     map[string]float64 `json:"window_p99_ms"`
	Tag           string             `json:"tag"`
}

// controlTag tags the do-nothing milter's records.
const controlTag = "do-nothing"

// events counts what the soak did to the daemon besides the load.
type events struct {
	hups, hupFailed int
	tops, topFailed int
	topSlowest      time.Duration
	firstTopErr     string
	snapFailures    int // samples with sluice_snapshot_write_failing = 1
	snapAgeMax      float64
	loadErrors      int
	firstLoadErr    string
	refused         int
	messages        int
}

type result struct {
	samples       []sample
	before, after idle
	ev            events
	exitCode      int
	pass          bool
}

func soak(s settings, out io.Writer) (*result, error) {
	d, err := startDaemon(s)
	if err != nil {
		return nil, err
	}
	defer d.kill()
	fmt.Fprintf(out, "sluice %s pid %d, config %s, log %s\n", d.listen, d.cmd.Process.Pid, d.config, d.log.Name())
	if p := s.milterPlacement(); p != (placement{}) {
		fmt.Fprintf(out, "milters placed: %s\n", p)
	}
	if p := s.loadPlacement(); p != (placement{}) {
		fmt.Fprintf(out, "load generator placed: %s\n", p)
	}

	// What the idle daemon holds before any session, once its start-up
	// work (loading the snapshot, the first scrapes) has ended.
	before, err := d.steady(3, 500*time.Millisecond, 20*time.Second)
	if err != nil {
		return nil, fmt.Errorf("before the load: %w", err)
	}
	fmt.Fprintf(out, "idle before the load: %d fds, %d goroutines\n", before.fds, before.goroutines)

	var ctl *controlMilter
	if s.control != "" {
		if ctl, err = startControl(s); err != nil {
			return nil, err
		}
		defer ctl.kill()
		fmt.Fprintf(out, "do-nothing milter %s pid %d, driven beside sluice with the same load by the same load generator\n", ctl.listen, ctl.cmd.Process.Pid)
	}
	load, err := startLoad(s, d.listen, d.cmd.Process.Pid, ctl)
	if err != nil {
		return nil, err
	}
	defer load.kill()
	start := time.Now()
	d.heap = startHeapMeter(d.metrics, time.Second)
	fmt.Fprintf(out, "load: %.0f messages/s for %v, fresh keys every %v (%d clients + %d senders each); SIGHUP every %v; counters top every %v\n\n",
		s.rate, s.duration, s.churn, s.clients, s.senders, s.hup, s.top)
	printHeader(out)

	r := &result{before: before}
	hup := time.NewTicker(s.hup)
	defer hup.Stop()
	top := time.NewTicker(s.top)
	defer top.Stop()
	ev := &r.ev
	var mainQ, ctlQ []loadRecord
loop:
	for {
		select {
		case rec, ok := <-load.records:
			if !ok {
				break loop
			}
			// With the do-nothing milter beside it, each interval's two
			// records (sluice's and the do-nothing's) make one sample.
			if rec.Tag == controlTag {
				ctlQ = append(ctlQ, rec)
			} else {
				mainQ = append(mainQ, rec)
			}
			if ctl != nil && len(ctlQ) == 0 || len(mainQ) == 0 {
				continue
			}
			rec = mainQ[0]
			mainQ = mainQ[1:]
			sm, err := d.sample(rec)
			if err != nil {
				return nil, fmt.Errorf("sample at %v: %w", rec.At, err)
			}
			if ctl != nil {
				c := ctlQ[0]
				ctlQ = ctlQ[1:]
				if c.Errors > 0 {
					return nil, fmt.Errorf("the do-nothing milter's load at %v: %d sessions in error (first: %s)", c.At, c.Errors, c.FirstErr)
				}
				sm.ctl = controlOf(c)
			}
			r.samples = append(r.samples, sm)
			ev.messages += rec.Messages
			ev.refused += rec.Refused
			ev.loadErrors += rec.Errors
			if rec.Errors > 0 && ev.firstLoadErr == "" {
				ev.firstLoadErr = rec.FirstErr
			}
			if sm.snapFailing > 0 {
				ev.snapFailures++
			}
			ev.snapAgeMax = max(ev.snapAgeMax, sm.snapAge)
			printSample(out, sm)
		case <-hup.C:
			ev.hups++
			if err := d.reload(); err != nil {
				ev.hupFailed++
				fmt.Fprintf(out, "SIGHUP at %v: %v\n", time.Since(start).Round(time.Second), err)
			}
		case <-top.C:
			ev.tops++
			took, err := d.countersTop()
			ev.topSlowest = max(ev.topSlowest, took)
			if err != nil {
				ev.topFailed++
				if ev.firstTopErr == "" {
					ev.firstTopErr = err.Error()
				}
			}
		case <-d.exited:
			return nil, fmt.Errorf("sluice exited during the run; see %s", d.log.Name())
		}
	}
	for _, rec := range mainQ {
		// sluice's last, partial interval, with no partner
		sm, err := d.sample(rec)
		if err != nil {
			return nil, fmt.Errorf("sample at %v: %w", rec.At, err)
		}
		r.samples = append(r.samples, sm)
	}
	d.heap.stop()
	if err := load.wait(ev.loadErrors > 0); err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "\nload generator's summary:\n%s", load.out.String())

	// Idle again: every session closed, then the same fds and goroutines
	// as before, given a little time for deferred closes. sluice starts
	// the milter library's server for the policy in force at its first
	// connection, and a reload retires it: one connection that sends
	// nothing, as the readiness check made before the load, puts the
	// daemon in the state it was read in then, whether or not a session
	// came after the last reload.
	if err := d.touch(); err != nil {
		return nil, fmt.Errorf("after the load: %w", err)
	}
	after, err := d.settle(before, 30*time.Second)
	if err != nil {
		return nil, fmt.Errorf("after the load: %w", err)
	}
	r.after = after
	r.exitCode = d.stop(30 * time.Second)
	r.pass = report(out, s, r)
	if err := writeCSV(filepath.Join(s.out, "soak.csv"), r.samples); err != nil {
		return nil, err
	}
	if err := drawChart(filepath.Join(s.out, "soak.png"), s, r.samples); err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "\nwrote %s and %s\n", filepath.Join(s.out, "soak.csv"), filepath.Join(s.out, "soak.png"))
	return r, nil
}

// loadRun is one load generator process and its interval records.
type loadRun struct {
	cmd     *exec.Cmd
	out     bytes.Buffer
	records chan loadRecord
	readErr chan error
}

// startLoad drives the milter at addr (whose process is pid) with the
// soak's load for the soak's duration, and the do-nothing milter beside
// it, when there is one, with the same load from the same process.
func startLoad(s settings, addr string, pid int, ctl *controlMilter) (*loadRun, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	l := &loadRun{records: make(chan loadRecord), readErr: make(chan error, 1)}
	l.cmd = s.loadPlacement().command(s.load, "-addr", addr, "-pid", fmt.Sprint(pid),
		"-duration", s.duration.String(), "-rate", fmt.Sprint(s.rate), "-churn", s.churn.String(),
		"-interval", s.sample.String(), "-intervals", "/dev/fd/3",
		"-clients", fmt.Sprint(s.clients), "-senders", fmt.Sprint(s.senders),
		"-messages", fmt.Sprint(s.messages), "-concurrency", fmt.Sprint(s.concurrency),
		"-window", s.judge.String())
	if ctl != nil {
		l.cmd.Args = append(l.cmd.Args, "-beside-addr", ctl.listen, "-beside-pid", fmt.Sprint(ctl.cmd.Process.Pid),
			"-beside-name", controlTag)
	}
	l.cmd.Stdout, l.cmd.Stderr = &l.out, &l.out
	l.cmd.ExtraFiles = []*os.File{pw}
	err = l.cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		return nil, fmt.Errorf("start the load generator: %w", err)
	}
	go func() {
		defer close(l.records)
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var rec loadRecord
			if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
				l.readErr <- fmt.Errorf("load generator record %q: %w", sc.Text(), err)
				return
			}
			l.records <- rec
		}
		l.readErr <- sc.Err()
	}()
	return l, nil
}

// wait waits for the records to end and the process to exit. An exit
// status that sessions in error already explain is not an error here.
func (l *loadRun) wait(errorsCounted bool) error {
	if err := <-l.readErr; err != nil {
		return err
	}
	if err := l.cmd.Wait(); err != nil && !errorsCounted {
		return fmt.Errorf("load generator: %v\n%s", err, l.out.String())
	}
	return nil
}

func (l *loadRun) kill() {
	if l.cmd.ProcessState == nil {
		l.cmd.Process.Kill()
	}
}

// controlMilter is the do-nothing milter (test/noopmilter) driven beside
// sluice: on a shared machine the tails and CPU per message move with
// whatever else runs, and its curves, measured at the same moments, show
// how far.
type controlMilter struct {
	listen string
	cmd    *exec.Cmd
}

func startControl(s settings) (*controlMilter, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	c := &controlMilter{listen: "inet:" + addr}
	c.cmd = s.milterPlacement().command(s.control, "-listen", c.listen)
	if c.cmd.Stderr, err = os.Create(filepath.Join(s.out, "noopmilter.log")); err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the do-nothing milter: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return c, nil
		}
		if time.Now().After(deadline) {
			c.kill()
			return nil, fmt.Errorf("the do-nothing milter does not answer on %s: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *controlMilter) kill() {
	c.cmd.Process.Kill()
	c.cmd.Wait()
}

func startDaemon(s settings) (*daemon, error) {
	listen, err := freeAddr()
	if err != nil {
		return nil, err
	}
	metrics, err := freeAddr()
	if err != nil {
		return nil, err
	}
	d := &daemon{
		bin:     s.sluice,
		config:  filepath.Join(s.out, "sluice.toml"),
		admin:   filepath.Join(s.out, "admin.sock"),
		metrics: metrics,
		listen:  "inet:" + listen,
		exited:  make(chan struct{}),
	}
	// The policy as shipped, with no trusted networks so that loopback is
	// counted too. At the soak's rates nothing is refused: each client
	// sends about 6 messages a period and each sender one.
	policy, err := os.ReadFile(s.policy)
	if err != nil {
		return nil, fmt.Errorf("the policy: %w", err)
	}
	listenLine := regexp.MustCompile(`(?m)^listen = .*$`)
	if !listenLine.Match(policy) {
		return nil, fmt.Errorf("%s has no top-level listen line to replace", s.policy)
	}
	policy = listenLine.ReplaceAll(policy, fmt.Appendf(nil, "listen = %q\ntrusted = []", d.listen))
	config := fmt.Sprintf(`%s

[store]
max_keys = %d
snapshot = %q
snapshot_interval = %q

[metrics]
listen = %q

[admin]
socket = %q

[log]
level = "info"
`, policy, s.maxKeys, filepath.Join(s.out, "counters.snap"), s.snapshot.String(), metrics, d.admin)
	if err := os.WriteFile(d.config, []byte(config), 0o644); err != nil {
		return nil, err
	}
	if d.log, err = os.Create(filepath.Join(s.out, "sluice.log")); err != nil {
		return nil, err
	}
	d.cmd = s.milterPlacement().command(s.sluice, "serve", "-config", d.config)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sluice: %w", err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			c.Close()
			if _, err = scrape(d.metrics); err == nil {
				return d, nil
			}
		}
		select {
		case <-d.exited:
			return nil, fmt.Errorf("sluice exited at start; see %s", d.log.Name())
		default:
		}
		if time.Now().After(deadline) {
			d.kill()
			return nil, fmt.Errorf("sluice does not answer on %s and %s: %v", listen, metrics, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// placement is where and how a process of the soak runs.
type placement struct {
	cpus string // taskset's list form, e.g. "1" or "0,2-3"; "" for any
	idle bool   // in the SCHED_IDLE class: only on a CPU nothing else wants
}

// milterPlacement is where sluice and the do-nothing milter run: alike,
// so that the one measures the other's machine.
func (s settings) milterPlacement() placement { return placement{cpus: s.sluiceCPUs} }

func (s settings) loadPlacement() placement { return placement{cpus: s.loadCPUs, idle: s.loadIdle} }

func (p placement) String() string {
	var on []string
	if p.cpus != "" {
		on = append(on, "on CPUs "+p.cpus)
	}
	if p.idle {
		on = append(on, "in the SCHED_IDLE class, below the milters")
	}
	return strings.Join(on, ", ")
}

// command is the command run as p says: taskset and chrt exec what they
// are given, so the process keeps the pid the soak samples. Pinned
// apart, sluice and the load generator stop trading places on the same
// core mid-run. A load generator in the SCHED_IDLE class never puts a
// milter off its CPU mid-stage and gives way as soon as one wakes, as on
// a relay where the milter has a core to itself; otherwise, on a machine
// with no core to spare, a stage's time holds the slices the scheduler
// gave the load generator meanwhile. (The milters are not raised to a
// real-time class instead: a Go process there can spin the other
// processes off both CPUs until the kernel throttles it, which ended a
// soak at 20 minutes.)
func (p placement) command(name string, args ...string) *exec.Cmd {
	var prefix []string
	if p.cpus != "" {
		prefix = append(prefix, "taskset", "-c", p.cpus)
	}
	if p.idle {
		prefix = append(prefix, "chrt", "--idle", "0")
	}
	if len(prefix) == 0 {
		return exec.Command(name, args...)
	}
	return exec.Command(prefix[0], append(append(prefix[1:], name), args...)...)
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// touch opens a milter connection and closes it unused.
func (d *daemon) touch() error {
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(d.listen, "inet:"), time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// reload sends SIGHUP and waits for the successful reload to be counted.
func (d *daemon) reload() error {
	m, err := scrape(d.metrics)
	if err != nil {
		return err
	}
	n := m.value("sluice_config_reloads_total", "result", "success")
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		if m, err = scrape(d.metrics); err != nil {
			return err
		}
		if m.value("sluice_config_reloads_total", "result", "success") > n {
			return nil
		}
		if m.value("sluice_config_last_reload_successful") == 0 {
			return errors.New("the reload was refused")
		}
	}
	return errors.New("no reload counted within 10s")
}

// countersTop runs `sluice counters top` against the admin socket.
func (d *daemon) countersTop() (time.Duration, error) {
	start := time.Now()
	out, err := exec.Command(d.bin, "counters", "top", "-socket", d.admin, "-n", "20").CombinedOutput()
	took := time.Since(start)
	if err != nil {
		return took, fmt.Errorf("sluice counters top: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if len(bytes.TrimSpace(out)) == 0 {
		return took, errors.New("sluice counters top printed nothing")
	}
	return took, nil
}

// stop ends sluice with SIGTERM, as systemd does, and returns its exit
// code (-1 if it had to be killed).
func (d *daemon) stop(timeout time.Duration) int {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		return d.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		d.kill()
		return -1
	}
}

func (d *daemon) kill() {
	select {
	case <-d.exited:
	default:
		d.cmd.Process.Kill()
		<-d.exited
	}
	d.log.Close()
}
