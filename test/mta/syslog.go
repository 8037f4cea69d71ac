package mta

import (
	"bytes"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// syslogd is a tiny syslog daemon for a mail server that logs only to
// syslog (Sendmail): it reads the datagrams sent to a unix socket and
// writes each as a traditional syslog file line, "Mmm dd hh:mm:ss HOST
// ident[pid]: message", as rsyslog's default file format does.
type syslogd struct {
	conn *net.UnixConn
	host string
	mu   sync.Mutex
	f    *os.File
	done chan struct{}
}

// startSyslog listens on the socket sock and appends to file.
func startSyslog(t testing.TB, sock, file, host string) *syslogd {
	t.Helper()
	f, err := os.OpenFile(file, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		f.Close()
		t.Fatalf("syslog socket: %v", err)
	}
	// Sendmail's children drop privileges for some work; let any of them log.
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	s := &syslogd{conn: conn, host: host, f: f, done: make(chan struct{})}
	go s.run()
	t.Cleanup(s.stop)
	return s
}

func (s *syslogd) run() {
	defer close(s.done)
	buf := make([]byte, 64*1024)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		line := fileLine(buf[:n], s.host, time.Now())
		s.mu.Lock()
		s.f.Write(line)
		s.mu.Unlock()
	}
}

// fileLine turns a datagram as glibc's syslog(3) sends it, "<PRI>Mmm dd
// hh:mm:ss ident[pid]: message", into a file line with the host name.
func fileLine(msg []byte, host string, now time.Time) []byte {
	msg = bytes.TrimRight(msg, "\x00\n")
	if len(msg) > 0 && msg[0] == '<' {
		if i := bytes.IndexByte(msg, '>'); i > 0 {
			msg = msg[i+1:]
		}
	}
	stamp := now.Format(time.Stamp)
	// glibc writes the time as "%h %e %T": 15 bytes.
	if len(msg) > 16 && msg[15] == ' ' {
		if _, err := time.Parse(time.Stamp, string(msg[:15])); err == nil {
			stamp, msg = string(msg[:15]), msg[16:]
		}
	}
	var b bytes.Buffer
	b.WriteString(stamp)
	b.WriteByte(' ')
	b.WriteString(host)
	b.WriteByte(' ')
	b.Write(msg)
	b.WriteByte('\n')
	return b.Bytes()
}

func (s *syslogd) stop() {
	s.conn.Close()
	<-s.done
	s.mu.Lock()
	s.f.Close()
	s.mu.Unlock()
}

// privateDevLog is the shell that gives a mount namespace its own /dev,
// whose log is the socket sock: a fresh tmpfs with the few devices a
// daemon opens, so that nothing of the host's /dev changes and no other
// process's log lands in the file.
func privateDevLog(sock string) string {
	cmds := []string{
		"mount -t tmpfs -o mode=755 sluice-dev /dev",
		"mknod -m 666 /dev/null c 1 3",
		"mknod -m 666 /dev/zero c 1 5",
		"mknod -m 666 /dev/full c 1 7",
		"mknod -m 666 /dev/random c 1 8",
		"mknod -m 666 /dev/urandom c 1 9",
		"mknod -m 666 /dev/tty c 5 0",
		"ln -s /proc/self/fd /dev/fd",
		"ln -s /proc/self/fd/0 /dev/stdin",
		"ln -s /proc/self/fd/1 /dev/stdout",
		"ln -s /proc/self/fd/2 /dev/stderr",
		"ln -s " + shellWord(sock) + " /dev/log",
	}
	return strings.Join(cmds, " && ")
}

func shellWord(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
