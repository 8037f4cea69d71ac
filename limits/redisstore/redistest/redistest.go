// Package redistest starts real redis-server processes for tests: a single
// server that a test can stop, pause and restart, and a 3-node Cluster.
package redistest

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"sluice/test/testenv"

	"github.com/redis/go-redis/v9"
)

// Require returns the path of redis-server, or ends the test: a failure
// when tests with real servers must run (CI=true, SLUICE_E2E=1), a loud
// skip on a developer machine without it.
func Require(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		path, err = exec.LookPath("/usr/bin/redis-server")
	}
	if err != nil {
		if testenv.Enabled() {
			t.Fatalf("redis-server is not installed (./test/run installs it): %v", err)
		}
		t.Skip("SKIPPED: redis-server is not installed; ./test/run installs it (apt-get install redis-server)")
	}
	return path
}

// Server is a redis-server on loopback, with no persistence.
type Server struct {
	Addr string
	Dir  string

	t    testing.TB
	bin  string
	args []string
	// How the readiness check connects (StartTLS).
	tls            *tls.Config
	user, password string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  bytes.Buffer
}

// Start starts redis-server on a free port with extra options ("--maxmemory",
// "1mb"...); it is stopped when the test ends.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	return StartAt(t, fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), args...)
}

// StartAt is Start on a given loopback address: in the place of a Fake
// that was stopped, say.
func StartAt(t testing.TB, addr string, args ...string) *Server {
	t.Helper()
	s := &Server{
		Addr: addr,
		Dir:  testenv.Dir(t, "redis"),
		t:    t,
		bin:  Require(t),
		args: args,
	}
	s.Start()
	t.Cleanup(func() {
		s.Resume()
		s.Stop()
		if t.Failed() {
			s.mu.Lock()
			t.Logf("redis-server %s output:\n%s", s.Addr, s.out.String())
			s.mu.Unlock()
		}
	})
	return s
}

// StartTLS starts a server that takes only TLS, with the certificate and
// key in certFile and keyFile, and an ACL user (the default user off);
// client is the TLS config that reaches it.
func StartTLS(t testing.TB, certFile, keyFile string, client *tls.Config, user, password string) *Server {
	t.Helper()
	s := &Server{
		Addr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		Dir:  testenv.Dir(t, "redis-tls"),
		t:    t,
		bin:  Require(t),
		args: []string{"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-auth-clients", "no",
			"--user", "default", "off", "--user", user, "on", ">" + password, "~*", "+@all"},
		tls:      client,
		user:     user,
		password: password,
	}
	s.Start()
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("redis-server %s output:\n%s", s.Addr, s.output())
		}
	})
	return s
}

// Start (re)starts the server on its port, empty, and waits until it answers.
func (s *Server) Start() {
	s.t.Helper()
	_, port, _ := strings.Cut(s.Addr, ":")
	listen := []string{"--port", port}
	if s.tls != nil {
		listen = []string{"--port", "0", "--tls-port", port}
	}
	args := append(append(listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--dir", s.Dir), s.args...)
	cmd := exec.Command(s.bin, args...)
	s.mu.Lock()
	cmd.Stdout, cmd.Stderr = &lockedBuffer{&s.mu, &s.out}, &lockedBuffer{&s.mu, &s.out}
	s.mu.Unlock()
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, TLSConfig: s.tls, Username: s.user, Password: s.password})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		select {
		case <-done:
			s.t.Fatalf("redis-server exited: %s", s.output())
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on %s does not answer: %v", s.Addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *Server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		cmd.Process.Signal(sig)
	}
}

// Stop ends the server (SIGTERM) and waits for it: clients get
// "connection refused" until Start.
func (s *Server) Stop() { s.end(syscall.SIGTERM) }

// Kill ends the server with SIGKILL.
func (s *Server) Kill() { s.end(syscall.SIGKILL) }

func (s *Server) end(sig syscall.Signal) {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// Pause stops the process (SIGSTOP) without closing its socket: the
// kernel still accepts connections and takes requests, and no answer
// comes, as with a hung server or a lost network. Resume undoes it.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume continues a paused server.
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

// Client returns a plain client for checks, closed when the test ends.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	s.t.Cleanup(func() { c.Close() })
	return c
}

type lockedBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// Cluster is a Redis Cluster of masters without replicas, on loopback.
type Cluster struct {
	Nodes []*Server
}

// Addrs are the nodes' addresses.
func (c *Cluster) Addrs() []string {
	a := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		a[i] = n.Addr
	}
	return a
}

// StartCluster starts n nodes with cluster-enabled yes, joins them with
// `redis-cli --cluster create` and waits until every node says the
// cluster is ok.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	Require(t)
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatalf("redis-cli is not installed (it comes with redis-server): %v", err)
	}
	c := &Cluster{}
	for range n {
		dir := testenv.Dir(t, "redis-cluster")
		c.Nodes = append(c.Nodes, Start(t, "--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes.conf"), "--cluster-node-timeout", "5000"))
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.Command(cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, node := range c.Nodes {
		cl := redis.NewClient(&redis.Options{Addr: node.Addr})
		for {
			info, err := cl.ClusterInfo(context.Background()).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(n)) {
				break
			}
			if time.Now().After(deadline) {
				cl.Close()
				t.Fatalf("cluster node %s not ready: %v\n%s", node.Addr, err, info)
			}
			time.Sleep(100 * time.Millisecond)
		}
		cl.Close()
	}
	return c
}

// WriteFile is os.WriteFile that fails t.
func WriteFile(t testing.TB, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Sentinel is a redis-server in Sentinel mode watching one master.
type Sentinel struct {
	Addr string
	srv  *Server
}

// StartSentinel starts a Sentinel that monitors master under name, with a
// quorum of 1 and a short down-after, so that tests see failovers in
// seconds.
func StartSentinel(t testing.TB, name string, master *Server) *Sentinel {
	t.Helper()
	return startSentinel(t, name, master, 1)
}

func startSentinel(t testing.TB, name string, master *Server, quorum int) *Sentinel {
	t.Helper()
	bin := Require(t)
	s := &Server{
		Addr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		Dir:  testenv.Dir(t, "sentinel"),
		t:    t,
		bin:  bin,
	}
	_, port, _ := strings.Cut(s.Addr, ":")
	mhost, mport, _ := strings.Cut(master.Addr, ":")
	conf := filepath.Join(s.Dir, "sentinel.conf")
	WriteFile(t, conf, fmt.Sprintf(`port %s
bind 127.0.0.1
dir %s
sentinel monitor %s %s %s %d
sentinel down-after-milliseconds %s 1000
sentinel failover-timeout %s 5000
`, port, s.Dir, name, mhost, mport, quorum, name, name))
	cmd := exec.Command(bin, conf, "--sentinel")
	cmd.Stdout, cmd.Stderr = &lockedBuffer{&s.mu, &s.out}, &lockedBuffer{&s.mu, &s.out}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis sentinel: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("sentinel %s output:\n%s", s.Addr, s.output())
		}
	})
	c := redis.NewSentinelClient(&redis.Options{Addr: s.Addr})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		addr, err := c.GetMasterAddrByName(context.Background(), name).Result()
		if err == nil && len(addr) == 2 && addr[0]+":"+addr[1] == master.Addr {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sentinel does not know master %s: %v %v\n%s", name, addr, err, s.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &Sentinel{Addr: s.Addr, srv: s}
}

// Master asks the Sentinel which server is the master now.
func (s *Sentinel) Master(name string) (string, error) {
	c := redis.NewSentinelClient(&redis.Options{Addr: s.Addr})
	defer c.Close()
	addr, err := c.GetMasterAddrByName(context.Background(), name).Result()
	if err != nil {
		return "", err
	}
	return addr[0] + ":" + addr[1], nil
}
