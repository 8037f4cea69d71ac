package e2e

// What systemd sees, without systemd. systemd-socket-activate
// (shipped with systemd) opens the milter socket and hands it over as
// sluice.socket would; a unixgram socket in NOTIFY_SOCKET stands for the
// service manager and records READY=1, RELOADING=1 + MONOTONIC_USEC, and
// STOPPING=1. Real Postfix talks to sluice through the passed socket.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// notifySocket records what a service sends to $NOTIFY_SOCKET.
type notifySocket struct {
	path string
	conn *net.UnixConn
	msgs chan string
}

func listenNotify(t *testing.T, dir string) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(dir, "notify.sock"), msgs: make(chan string, 64)}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n.conn = c
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				close(n.msgs)
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	return n
}

// next returns the next message, failing t after timeout.
func (n *notifySocket) next(t *testing.T, timeout time.Duration, what string) string {
	t.Helper()
	select {
	case m, ok := <-n.msgs:
		if !ok {
			t.Fatalf("notify socket closed while waiting for %s", what)
		}
		t.Logf("sd_notify: %q", m)
		return m
	case <-time.After(timeout):
		t.Fatalf("no sd_notify message for %s within %v", what, timeout)
	}
	return ""
}

func monotonicUsec() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano() / 1000
}

func TestOpsSystemdActivationAndNotify(t *testing.T) {
	testenv.Require(t)
	activate := testenv.Tool(t, "systemd-socket-activate")
	dir := testenv.Dir(t, "sluice-systemd")
	notify := listenNotify(t, dir)
	port := testenv.FreePort(t)
	unused := testenv.FreePort(t)
	cfg := filepath.Join(dir, "sluice.toml")
	// listen names another port: with a socket from systemd it is not used.
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("listen = \"inet:127.0.0.1:%d\"\n", unused)+opsLimit("1/1h", "")), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(activate, "-l", addr, "-E", "NOTIFY_SOCKET="+notify.path,
		sluicetest.Binary(t), "serve", "-config", cfg)
	outPath := filepath.Join(dir, "sluice.log")
	outFile, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer outFile.Close()
	cmd.Stdout, cmd.Stderr = outFile, outFile
	output := func() string { b, _ := os.ReadFile(outPath); return string(b) }
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			t.Logf("sluice under systemd-socket-activate:\n%s", output())
		}
	})
	if err := pollFor(10*time.Second, func() bool { return testenv.Listening("inet:"+addr) == nil }); err != nil {
		t.Fatalf("systemd-socket-activate does not listen on %s:\n%s", addr, output())
	}

	// The first connection makes systemd-socket-activate exec sluice with
	// the socket; Postfix's connection waits in the backlog meanwhile.
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: "inet:" + addr})
	c := session(t, pf.Addr, "192.0.2.1")
	trs := sendN(t, c, "alice@example.test", 2)
	wantTempfailAtMail(t, trs, 2, 2)
	c.Quit()

	ready := notify.next(t, 20*time.Second, "READY=1")
	if !strings.HasPrefix(ready, "READY=1\n") || !strings.Contains(ready, "STATUS=serving") {
		t.Errorf("first notification %q, want READY=1 with a STATUS", ready)
	}
	logs := output()
	if !strings.Contains(logs, `"systemd_socket":true`) || !strings.Contains(logs, "using the sockets systemd passed") {
		t.Errorf("sluice did not say it uses systemd's socket:\n%s", logs)
	}
	if testenv.Listening(fmt.Sprintf("inet:127.0.0.1:%d", unused)) == nil {
		t.Errorf("sluice listens on the config's port too; with a socket from systemd it must not")
	}

	// Reload: RELOADING=1 with the monotonic time, then READY=1.
	before := monotonicUsec()
	cmd.Process.Signal(syscall.SIGHUP)
	m := notify.next(t, 10*time.Second, "RELOADING=1")
	after := monotonicUsec()
	fields := strings.Split(strings.TrimSpace(m), "\n")
	if len(fields) != 2 || fields[0] != "RELOADING=1" || !strings.HasPrefix(fields[1], "MONOTONIC_USEC=") {
		t.Fatalf("reload notification %q, want RELOADING=1 and MONOTONIC_USEC=", m)
	}
	usec, err := strconv.ParseInt(strings.TrimPrefix(fields[1], "MONOTONIC_USEC="), 10, 64)
	if err != nil || usec < before || usec > after {
		t.Errorf("MONOTONIC_USEC=%d is not CLOCK_MONOTONIC at the reload (between %d and %d)", usec, before, after)
	}
	if m := notify.next(t, 10*time.Second, "READY=1 after the reload"); !strings.HasPrefix(m, "READY=1\n") {
		t.Errorf("after RELOADING=1 came %q, want READY=1", m)
	}

	// A bad config: still READY=1 (the old one runs), with the reason.
	if err := os.WriteFile(cfg, []byte("listen = 42\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	notify.next(t, 10*time.Second, "RELOADING=1")
	if m := notify.next(t, 10*time.Second, "READY=1 after a failed reload"); !strings.HasPrefix(m, "READY=1\n") || !strings.Contains(m, "STATUS=reload failed") {
		t.Errorf("after a failed reload came %q, want READY=1 with STATUS=reload failed...", m)
	}

	// Stop: STOPPING=1 and exit 0.
	cmd.Process.Signal(syscall.SIGTERM)
	if m := notify.next(t, 10*time.Second, "STOPPING=1"); !strings.HasPrefix(m, "STOPPING=1") {
		t.Errorf("on SIGTERM came %q, want STOPPING=1", m)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("sluice exited with %v on SIGTERM, want 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("sluice did not exit within 20s of SIGTERM")
	}
	pf.WaitDelivered(1, time.Minute)
}
