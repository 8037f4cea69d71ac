package dkimbench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The machine the benchmark runs on is shared, so throughput moves with
// whatever else runs. The CPU time each setup spends per message does
// not: each setup's processes (Postfix and its children, smtp-sink, the
// milters, policyd-spf) run in a cpuacct cgroup of their own, and the
// benchmark reads its counter around every round.

// cpuacctRoot is where cgroup v1's cpuacct hierarchy is mounted.
const cpuacctRoot = "/sys/fs/cgroup/cpuacct"

// cpuGroup is one setup's cpuacct cgroup; nil when the machine has none
// that can be written, and then every method does nothing.
type cpuGroup struct{ dir string }

// newCPUGroup makes a cgroup for the setup called name, removed when the
// benchmark ends; nil, after a log line, if cpuacct cannot be used.
func newCPUGroup(b *testing.B, name string) *cpuGroup {
	b.Helper()
	dir := filepath.Join(cpuacctRoot, fmt.Sprintf("sluice-dkimbench-%d-%s", os.Getpid(), name))
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Logf("no CPU figures: make cgroup: %v", err)
		return nil
	}
	g := &cpuGroup{dir: dir}
	// Registered before the setup's processes start, so it runs after
	// they are stopped; Postfix's children may take a moment to go.
	b.Cleanup(func() {
		err := pollErr(10*time.Second, func() error { return os.Remove(dir) })
		if err != nil {
			b.Logf("remove cgroup: %v", err)
		}
	})
	return g
}

// pollErr calls f until it succeeds or timeout passes.
func pollErr(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startIn runs start with this process in g, so that every process it
// starts, and their children, are counted in g; the benchmark's own work
// (the SMTP clients, the DNS server) is counted in none.
func startIn[T any](b *testing.B, g *cpuGroup, start func() T) T {
	b.Helper()
	if g == nil {
		return start()
	}
	home, err := ownCPUGroup()
	if err != nil {
		b.Fatal(err)
	}
	move(b, g.dir)
	defer move(b, home)
	return start()
}

func move(b *testing.B, dir string) {
	b.Helper()
	// cgroup.procs moves every thread of the process at once.
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		b.Fatalf("move the benchmark into cgroup %s: %v", dir, err)
	}
}

// ownCPUGroup is the directory of the cpuacct cgroup this process is in.
func ownCPUGroup() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("own cgroup: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		// hierarchy-ID:controller-list:path
		f := strings.SplitN(line, ":", 3)
		if len(f) == 3 && f[1] == "cpuacct" {
			return filepath.Join(cpuacctRoot, f[2]), nil
		}
	}
	return "", errors.New("own cgroup: no cpuacct line in /proc/self/cgroup")
}

// usage is the CPU time the group's processes have used so far.
func (g *cpuGroup) usage(b *testing.B) time.Duration {
	b.Helper()
	if g == nil {
		return 0
	}
	data, err := os.ReadFile(filepath.Join(g.dir, "cpuacct.usage"))
	if err != nil {
		b.Fatalf("read CPU use: %v", err)
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		b.Fatalf("read CPU use: %s: %v", g.dir, err)
	}
	return time.Duration(ns)
}

// processCPU is the CPU time used so far by the live processes whose
// command line contains s: one setup's milters, found by the path of
// their config. A process that exits meanwhile is not counted; the
// chain's policyd-spf processes live as long as the smtpd processes they
// serve, which outlast a round.
func processCPU(s string) time.Duration {
	entries, _ := os.ReadDir("/proc")
	var ticks int64
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), s) {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command name may hold spaces and parentheses; the fields
		// after its closing parenthesis start at the state (field 3),
		// so utime and stime (fields 14 and 15) are at 11 and 12.
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) < 13 {
			continue
		}
		for _, v := range f[11:13] {
			n, _ := strconv.ParseInt(v, 10, 64)
			ticks += n
		}
	}
	// Linux reports both in clock ticks of 10 ms (USER_HZ).
	return time.Duration(ticks) * 10 * time.Millisecond
}
