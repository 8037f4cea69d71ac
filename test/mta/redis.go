package mta

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Redis is a throw-away redis-server on loopback, with no persistence.
type Redis struct {
	Addr string // 127.0.0.1:PORT
	Dir  string

	t     testing.TB
	extra []string
	proc  *process
	out   bytes.Buffer
}

// StartRedis starts redis-server on a free port. args are more
// redis-server options ("--cluster-enabled", "yes", ...). It is stopped
// when the test ends.
func StartRedis(t testing.TB, args ...string) *Redis {
	t.Helper()
	r := &Redis{
		Addr:  fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		Dir:   Dir(t, "redis"),
		t:     t,
		extra: args,
	}
	r.Start()
	t.Cleanup(func() {
		if r.proc != nil {
			r.proc.stop(syscall.SIGTERM, 5*time.Second)
		}
		if t.Failed() {
			t.Logf("redis-server %s output:\n%s", r.Addr, r.out.String())
		}
	})
	return r
}

// Start (re)starts a stopped server on the same port.
func (r *Redis) Start() {
	r.t.Helper()
	bin := Tool(r.t, "redis-server")
	args := append([]string{
		"--port", portOf(r.Addr), "--bind", hostOf(r.Addr),
		"--save", "", "--appendonly", "no", "--daemonize", "no",
		"--dir", r.Dir,
	}, r.extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &r.out, &r.out
	r.proc = startProcess(r.t, "redis-server", cmd)
	waitFor(r.t, 10*time.Second, "redis-server on "+r.Addr, func() error {
		if r.proc.exited() {
			return fmt.Errorf("redis-server exited: %v\n%s", r.proc.err, r.out.String())
		}
		reply, err := r.Do("PING")
		if err != nil {
			return err
		}
		if reply != "+PONG" {
			return fmt.Errorf("PING: %q", reply)
		}
		return nil
	})
}

// Stop stops the server (to test what happens when Redis goes away).
func (r *Redis) Stop() {
	r.proc.stop(syscall.SIGTERM, 5*time.Second)
}

// Kill stops the server with SIGKILL.
func (r *Redis) Kill() {
	r.proc.stop(syscall.SIGKILL, 5*time.Second)
}

// Do sends one inline command and returns the first line of the reply
// ("+PONG", ":3", "$5"...). It is for readiness and simple checks; tests
// that need more use a real client.
func (r *Redis) Do(args ...string) (string, error) {
	conn, err := net.DialTimeout("tcp", r.Addr, time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}
