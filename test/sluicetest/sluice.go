// Package sluicetest runs the sluice binary for end-to-end tests and
// benchmarks: built once, started on a config, its JSON log lines read back.
package sluicetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"sluice/test/testenv"
)

// build is the sluice binary, built once per test binary.
var build struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// Binary returns the path of a sluice binary: $SLUICE_BIN when set, else
// ./cmd/sluice built once per test binary into a temp dir, with
// $SLUICE_BUILD_FLAGS ("-race", say) added to go build.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("SLUICE_BIN"); p != "" {
		return p
	}
	build.once.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			build.err = err
			return
		}
		build.dir, err = os.MkdirTemp("", "sluice-bin-")
		if err != nil {
			build.err = err
			return
		}
		dir := build.dir
		testenv.AtExit(func() { os.RemoveAll(dir) })
		out := filepath.Join(build.dir, "sluice")
		args := append([]string{"build", "-o", out}, strings.Fields(os.Getenv("SLUICE_BUILD_FLAGS"))...)
		cmd := exec.Command("go", append(args, "./cmd/sluice")...)
		cmd.Dir = root
		if msg, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/sluice: %v\n%s", err, msg)
			return
		}
		build.path = out
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.path
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the sluice module")
	}
	return filepath.Dir(mod), nil
}

// Result is what a finished sluice command printed and its exit code.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// RunSluice runs a sluice command that ends by itself (check, version)
// and returns what it printed. It fails t only when the command cannot be
// run or does not end within a minute.
func RunSluice(t testing.TB, args ...string) Result {
	t.Helper()
	cmd := exec.Command(Binary(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("sluice %s: %v", strings.Join(args, " "), err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("sluice %s did not end within a minute", strings.Join(args, " "))
	}
	code := testenv.ExitCode(err)
	if code < 0 {
		t.Fatalf("sluice %s: %v", strings.Join(args, " "), err)
	}
	return Result{Stdout: stdout.String(), Stderr: stderr.String(), Code: code}
}

// LogLine is one JSON log line of sluice.
type LogLine map[string]any

// Str returns the field key as a string ("" when absent); numbers and
// other values are formatted.
func (l LogLine) Str(key string) string {
	switch v := l[key].(type) {
	case nil:
		return ""
	case string:
		return v
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// Msg is the line's message.
func (l LogLine) Msg() string { return l.Str("msg") }

func (l LogLine) String() string {
	b, _ := json.Marshal(map[string]any(l))
	return string(b)
}

// Sluice is a sluice daemon the test started.
type Sluice struct {
	// Listen is the milter socket in Postfix's syntax, written as the
	// config's listen key. NewSluice picks a free inet port; set it to
	// "unix:/path" before Start for a unix socket.
	Listen string
	Dir    string // private directory; holds the config
	Config string // path of the config file Start wrote
	// Group, when set, is the group sluice runs with (it stays root
	// otherwise), so that a unix socket it creates with mode 0660 is
	// open to that group: "postfix" for Postfix's smtpd.
	Group string
	// NoFile, when set, is sluice's file descriptor limit, soft and hard
	// (so that Go cannot raise it at start), set by prlimit(1).
	NoFile int

	t          testing.TB
	proc       *testenv.Process
	cleanupSet bool

	mu     sync.Mutex
	lines  []LogLine
	other  []string // stdout lines that are not JSON
	stderr bytes.Buffer
	grew   chan struct{} // closed and replaced each time a line arrives
}

// NewSluice prepares a sluice in its own directory, listening on a free
// inet port on loopback. Start starts it.
func NewSluice(t testing.TB) *Sluice {
	t.Helper()
	return &Sluice{
		Listen: fmt.Sprintf("inet:127.0.0.1:%d", testenv.FreePort(t)),
		Dir:    testenv.Dir(t, "sluice"),
		t:      t,
		grew:   make(chan struct{}),
	}
}

// StartSluice starts sluice with config (see Start) and returns it once it
// listens.
func StartSluice(t testing.TB, config string) *Sluice {
	t.Helper()
	s := NewSluice(t)
	s.Start(config)
	return s
}

// WriteConfig writes the config file: a listen line for s.Listen, then
// body (the rest of the TOML; it must not set listen itself). It returns
// the file's path.
func (s *Sluice) WriteConfig(body string) string {
	s.t.Helper()
	s.Config = filepath.Join(s.Dir, "sluice.toml")
	text := fmt.Sprintf("listen = %q\n%s", s.Listen, body)
	if err := os.WriteFile(s.Config, []byte(text), 0o644); err != nil {
		s.t.Fatalf("write sluice config: %v", err)
	}
	return s.Config
}

// Start writes the config (see WriteConfig) and runs `sluice serve
// -config FILE`, and returns once sluice has logged "listening" and its
// socket accepts connections. The daemon is stopped when the test ends.
func (s *Sluice) Start(body string) {
	s.t.Helper()
	if s.proc != nil && !s.proc.Exited() {
		s.t.Fatal("sluice is already running")
	}
	s.WriteConfig(body)
	from := len(s.Logs())
	cmd := exec.Command(Binary(s.t), "serve", "-config", s.Config)
	if s.NoFile > 0 {
		limit := fmt.Sprintf("--nofile=%d:%d", s.NoFile, s.NoFile)
		cmd = exec.Command(testenv.Tool(s.t, "prlimit"), limit, "--", Binary(s.t), "serve", "-config", s.Config)
	}
	cmd.Dir = s.Dir
	// A Writer, not StdoutPipe: Wait then returns only after the last
	// line was read, so lines printed at shutdown are never lost.
	cmd.Stdout = &lineWriter{line: s.addLine}
	cmd.Stderr = &lockedWriter{mu: &s.mu, w: &s.stderr}
	if s.Group != "" {
		g, err := user.LookupGroup(s.Group)
		if err != nil {
			s.t.Fatalf("sluice's group: %v", err)
		}
		gid, _ := strconv.Atoi(g.Gid)
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(gid), NoSetGroups: true},
		}
	}
	s.proc = testenv.StartProcess(s.t, "sluice", cmd)
	if !s.cleanupSet {
		s.cleanupSet = true
		s.t.Cleanup(s.cleanup)
	}

	_, err := s.waitLog(from, 20*time.Second, func(l LogLine) bool { return l.Msg() == "listening" })
	if err != nil {
		s.t.Fatalf("sluice did not start: %v\n%s", err, s.dump())
	}
	testenv.WaitFor(s.t, 10*time.Second, "sluice's socket "+s.Listen, func() error { return testenv.Listening(s.Listen) })
}

func (s *Sluice) cleanup() {
	if s.proc != nil && !s.proc.Exited() {
		clean, _ := s.proc.Stop(syscall.SIGTERM, 10*time.Second)
		if !clean {
			s.t.Errorf("sluice did not exit within 10s of SIGTERM")
		}
	}
	if s.t.Failed() {
		s.t.Logf("sluice output:\n%s", s.dump())
	}
}

func (s *Sluice) addLine(text []byte) {
	var l LogLine
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := json.Unmarshal(text, &l); err == nil && l != nil {
		s.lines = append(s.lines, l)
	} else {
		s.other = append(s.other, string(text))
	}
	close(s.grew)
	s.grew = make(chan struct{})
}

// dump is everything sluice printed, for failure messages.
func (s *Sluice) dump() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, l := range s.lines {
		b.WriteString(l.String() + "\n")
	}
	for _, o := range s.other {
		b.WriteString("stdout: " + o + "\n")
	}
	if s.stderr.Len() > 0 {
		b.WriteString("stderr: " + s.stderr.String())
	}
	return b.String()
}

// Logs returns every JSON log line sluice printed so far, across restarts.
func (s *Sluice) Logs() []LogLine {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]LogLine(nil), s.lines...)
}

// Stderr is what sluice wrote to stderr so far.
func (s *Sluice) Stderr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

// Find returns the log lines that match.
func (s *Sluice) Find(match func(LogLine) bool) []LogLine {
	var found []LogLine
	for _, l := range s.Logs() {
		if match(l) {
			found = append(found, l)
		}
	}
	return found
}

// WaitLog waits up to timeout for a log line that matches, and returns
// the first one; it fails t when none comes. Lines already printed count.
func (s *Sluice) WaitLog(timeout time.Duration, what string, match func(LogLine) bool) LogLine {
	s.t.Helper()
	l, err := s.waitLog(0, timeout, match)
	if err != nil {
		s.t.Fatalf("waiting for sluice to log %s: %v\n%s", what, err, s.dump())
	}
	return l
}

func (s *Sluice) waitLog(from int, timeout time.Duration, match func(LogLine) bool) (LogLine, error) {
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		for _, l := range s.lines[from:] {
			if match(l) {
				s.mu.Unlock()
				return l, nil
			}
		}
		from = len(s.lines)
		grew := s.grew
		s.mu.Unlock()
		select {
		case <-grew:
		case <-s.proc.Done():
			// Let the reader drain what the process printed last.
			time.Sleep(50 * time.Millisecond)
			s.mu.Lock()
			for _, l := range s.lines[from:] {
				if match(l) {
					s.mu.Unlock()
					return l, nil
				}
			}
			s.mu.Unlock()
			return nil, fmt.Errorf("sluice exited: %v", s.proc.Err())
		case <-deadline:
			return nil, fmt.Errorf("timed out after %v", timeout)
		}
	}
}

// Signal sends sig to the running daemon (SIGHUP for a reload).
func (s *Sluice) Signal(sig syscall.Signal) {
	s.t.Helper()
	if err := s.proc.Signal(sig); err != nil {
		s.t.Fatalf("signal sluice: %v", err)
	}
}

// Stop sends SIGTERM and waits for sluice to exit; it fails t when sluice
// does not exit within timeout (it is then killed). It returns the exit
// code.
func (s *Sluice) Stop(timeout time.Duration) int {
	s.t.Helper()
	clean, err := s.proc.Stop(syscall.SIGTERM, timeout)
	if !clean {
		s.t.Errorf("sluice did not exit within %v of SIGTERM; killed", timeout)
	}
	return testenv.ExitCode(err)
}

// Kill ends sluice with SIGKILL, as a crash would.
func (s *Sluice) Kill() {
	s.proc.Stop(syscall.SIGKILL, 5*time.Second)
}

// Running reports whether the daemon is still running.
func (s *Sluice) Running() bool { return s.proc != nil && !s.proc.Exited() }

// lineWriter hands each complete line written to it to line.
type lineWriter struct {
	buf  []byte
	line func([]byte)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.line(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}
