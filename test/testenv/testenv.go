// Package testenv is what the end-to-end tests and benchmarks share: whether
// they run at all, temp dirs, free ports, tools, processes and socket probes.
package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvE2E is the variable that turns end-to-end tests on. ./test/run sets it.
const EnvE2E = "SLUICE_E2E"

// Enabled reports whether end-to-end tests run: SLUICE_E2E=1, or CI=true.
// When they run, a missing server or tool is a failure, never a skip.
func Enabled() bool {
	return os.Getenv(EnvE2E) == "1" || os.Getenv("CI") == "true"
}

const howToRun = "end-to-end tests need real Postfix, Sendmail and Redis: run ./test/run (installs them), or SLUICE_E2E=1 go test ./test/e2e/"

// Require skips t, loudly, unless end-to-end tests are enabled.
func Require(t testing.TB) {
	t.Helper()
	if !Enabled() {
		t.Skip("SKIPPED: " + howToRun)
	}
}

// Main runs the tests of an end-to-end package and then what was given
// to AtExit. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }
func Main(m *testing.M) int {
	if !Enabled() {
		fmt.Fprintf(os.Stderr, "\n*** %s ***\n\n", strings.ToUpper("end-to-end tests skipped")+": "+howToRun)
	}
	code := m.Run()
	atExit.Lock()
	for _, f := range atExit.fns {
		f()
	}
	atExit.Unlock()
	return code
}

var atExit struct {
	sync.Mutex
	fns []func()
}

// AtExit has Main run f once the package's tests are done: for what tests
// share beyond one test's cleanup (a binary built once).
func AtExit(f func()) {
	atExit.Lock()
	atExit.fns = append(atExit.fns, f)
	atExit.Unlock()
}

// Dir makes a fresh directory for one server, removed when the test ends
// (kept when SLUICE_E2E_KEEP=1, for a look after a failure). Unlike
// t.TempDir it is traversable by the postfix user, as Postfix requires of
// every parent of its queue.
func Dir(t testing.TB, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sluice-"+name+"-")
	if err != nil {
		t.Fatalf("make temp dir: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("chmod %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if os.Getenv("SLUICE_E2E_KEEP") == "1" {
			t.Logf("kept %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Tool returns the path of a program the tests need, failing t when it is
// missing (./test/run installs every one of them).
func Tool(t testing.TB, name string) string {
	t.Helper()
	if filepath.IsAbs(name) {
		if _, err := os.Stat(name); err != nil {
			t.Fatalf("%s is missing (./test/run installs it): %v", name, err)
		}
		return name
	}
	if path := Sbin(name); filepath.IsAbs(path) {
		return path
	}
	t.Fatalf("%s is not installed (./test/run installs it)", name)
	return ""
}

// Run runs a command and fails t with its output when it fails.
// Postfix writes its errors to syslog unless stderr is a terminal, and
// this machine has no syslog: script(1) gives the command a terminal so
// that its errors reach the test log.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := RunErr(name, args...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return out
}

// RunErr is Run returning the failure instead of failing a test.
func RunErr(name string, args ...string) (string, error) {
	cmd := exec.Command("script", "-qec", ShellQuote(append([]string{Sbin(name)}, args...)), "/dev/null")
	cmd.Stdin = nil
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	text := strings.ReplaceAll(out.String(), "\r\n", "\n")
	if err != nil {
		return text, fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, text)
	}
	return text, nil
}

// Sbin finds a program also in /usr/sbin and /sbin, which a test's PATH
// may lack.
func Sbin(name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	for _, p := range []string{name, "/usr/sbin/" + name, "/sbin/" + name} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	return name
}

// Command is exec.Command for a program that may live in /usr/sbin.
func Command(name string, args ...string) *exec.Cmd {
	return exec.Command(Sbin(name), args...)
}

// ShellQuote quotes args for sh.
func ShellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// WaitFor polls cond until it holds or timeout passes, then fails t with
// what was awaited and the last error cond gave.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	if err := Poll(timeout, cond); err != nil {
		t.Fatalf("waiting %v for %s: %v", timeout, what, err)
	}
}

// Poll calls cond until it holds or timeout passes, and returns its
// last error.
func Poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	delay := 10 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(delay)
		if delay < 200*time.Millisecond {
			delay *= 2
		}
	}
}

// TCPListening reports whether something listens on the TCP address
// host:port, asking the kernel (ss) rather than connecting: a connection
// to an SMTP port would open a milter session, and one to a milter port a
// milter session with no MTA behind it.
func TCPListening(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	out, err := exec.Command("ss", "-Hltn", "sport = :"+port).Output()
	if err != nil {
		return fmt.Errorf("ss: %v", err)
	}
	for _, f := range strings.Fields(string(out)) {
		if f == addr {
			return nil
		}
	}
	return fmt.Errorf("nothing listens on %s", addr)
}

// UnixListening reports whether path is a socket something listens on.
func UnixListening(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s is not a socket (%v)", path, fi.Mode())
	}
	out, err := exec.Command("ss", "-Hlx", "src", path).Output()
	if err != nil {
		return fmt.Errorf("ss: %v", err)
	}
	if !strings.Contains(string(out), path) {
		return fmt.Errorf("nothing listens on %s", path)
	}
	return nil
}

// Listening reports whether a socket spec in Postfix's syntax
// ("inet:host:port" or "unix:/path") has a listener.
func Listening(spec string) error {
	network, addr, err := SplitSpec(spec)
	if err != nil {
		return err
	}
	if network == "unix" {
		return UnixListening(addr)
	}
	return TCPListening(addr)
}

// SplitSpec splits a socket spec in Postfix's syntax into a Go network
// name ("tcp" or "unix") and address.
func SplitSpec(spec string) (network, addr string, err error) {
	kind, rest, ok := strings.Cut(spec, ":")
	switch {
	case ok && kind == "unix":
		return "unix", rest, nil
	case ok && kind == "inet":
		if _, _, err := net.SplitHostPort(rest); err != nil {
			return "", "", fmt.Errorf("socket spec %q: %v", spec, err)
		}
		return "tcp", rest, nil
	}
	return "", "", fmt.Errorf("socket spec %q: want inet:host:port or unix:/path", spec)
}

// Process is a server the harness started, in its own process group so
// that stopping it also ends the children it forked.
type Process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set when done is closed
}

// StartProcess starts cmd in a process group of its own.
func StartProcess(t testing.TB, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Process{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends sig to the process and waits up to timeout for it to exit,
// then kills its whole group. It reports whether the process exited on sig
// alone, and its exit error.
func (p *Process) Stop(sig syscall.Signal, timeout time.Duration) (clean bool, err error) {
	if !p.Exited() {
		p.cmd.Process.Signal(sig)
		select {
		case <-p.done:
			clean = true
		case <-time.After(timeout):
		}
	}
	// Forked children (smtp-sink, Sendmail's per-connection children) go
	// with the group.
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	return clean, p.err
}

// ExitCode returns the exit code of a finished command, or -1 when it
// was killed by a signal or never ran.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// Done is closed when the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is how the process ended (cmd.Wait's error); valid once Done is
// closed.
func (p *Process) Err() error { return p.err }

// Signal sends sig to the process itself (not its group).
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }
