package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Fake is a TCP server on loopback that plays a broken or hostile Redis:
// it reads commands (RESP arrays of bulk strings, as clients send them)
// and writes for each what its answer function returns. It is no Redis;
// it is for the replies a real one never sends. Stop it, then StartAt its
// address, to put a real server in its place.
type Fake struct {
	Addr string

	answer  func(cmd []string) []byte
	trickle bool   // write replies one byte per write
	relay   string // instead of answering, relay to this server
	ln      net.Listener

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	cmds  int
	wg    sync.WaitGroup
}

// StartFake starts a fake whose replies are answer's; a nil reply sends
// nothing for that command. It is stopped when the test ends.
func StartFake(t testing.TB, answer func(cmd []string) []byte) *Fake {
	return startFake(t, &Fake{answer: answer})
}

// StartTrickle is StartFake with every reply written one byte at a time,
// each byte its own TCP segment.
func StartTrickle(t testing.TB, answer func(cmd []string) []byte) *Fake {
	return startFake(t, &Fake{answer: answer, trickle: true})
}

// StartSplitter starts a proxy to the server at addr that passes
// commands as they come and the server's replies one byte at a time.
func StartSplitter(t testing.TB, addr string) *Fake {
	return startFake(t, &Fake{relay: addr, trickle: true})
}

func startFake(t testing.TB, f *Fake) *Fake {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fake redis: %v", err)
	}
	f.ln, f.Addr, f.conns = ln, ln.Addr().String(), make(map[net.Conn]struct{})
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(f.Stop)
	return f
}

func (f *Fake) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
		}
		f.mu.Lock()
		if f.conns == nil { // stopped
			f.mu.Unlock()
			c.Close()
			return
		}
		f.conns[c] = struct{}{}
		f.wg.Add(1)
		f.mu.Unlock()
		go func() {
			defer f.wg.Done()
			if f.relay != "" {
				f.pass(c)
			} else {
				f.serve(c)
			}
			c.Close()
			f.mu.Lock()
			delete(f.conns, c)
			f.mu.Unlock()
		}()
	}
}

// Commands is the number of commands the fake has read.
func (f *Fake) Commands() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cmds
}

func (f *Fake) serve(c net.Conn) {
	r := bufio.NewReader(c)
	for {
		cmd, err := readCommand(r)
		if err != nil {
			return
		}
		f.mu.Lock()
		f.cmds++
		f.mu.Unlock()
		if err := f.write(c, f.answer(cmd)); err != nil {
			return
		}
	}
}

func (f *Fake) write(w io.Writer, b []byte) error {
	if !f.trickle {
		_, err := w.Write(b)
		return err
	}
	for i := range b {
		if _, err := w.Write(b[i : i+1]); err != nil {
			return err
		}
	}
	return nil
}

func (f *Fake) pass(c net.Conn) {
	up, err := net.Dial("tcp", f.relay)
	if err != nil {
		return
	}
	defer up.Close()
	go func() {
		io.Copy(up, c)
		up.Close()
	}()
	buf := make([]byte, 4096)
	for {
		n, err := up.Read(buf)
		if n > 0 && f.write(c, buf[:n]) != nil {
			return
		}
		if err != nil {
			return
		}
	}
}

// Stop closes the listener and every connection, and waits for the
// fake's goroutines: its port is then free for a real server.
func (f *Fake) Stop() {
	f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}

// readCommand reads one command: an array of bulk strings.
func readCommand(r *bufio.Reader) ([]string, error) {
	n, err := readHeader(r, '*')
	if err != nil {
		return nil, err
	}
	cmd := make([]string, n)
	for i := range cmd {
		m, err := readHeader(r, '$')
		if err != nil {
			return nil, err
		}
		b := make([]byte, m+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		cmd[i] = string(b[:m])
	}
	return cmd, nil
}

func readHeader(r *bufio.Reader, kind byte) (int, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if len(line) < 4 || line[0] != kind || !strings.HasSuffix(line, "\r\n") {
		return 0, fmt.Errorf("fake redis: want a %q header, got %q", kind, line)
	}
	n, err := strconv.Atoi(line[1 : len(line)-2])
	if err != nil || n < 0 || n > 1<<20 {
		return 0, errors.New("fake redis: bad length in " + strconv.Quote(line))
	}
	return n, nil
}

// Handshake answers what go-redis sends on a new connection as a Redis
// older than 6 would: HELLO is unknown (the client goes on in RESP2),
// AUTH, SELECT and CLIENT SETNAME are OK. ok is false for other commands.
func Handshake(cmd []string) (reply []byte, ok bool) {
	if len(cmd) == 0 {
		return nil, false
	}
	switch strings.ToUpper(cmd[0]) {
	case "HELLO":
		return []byte("-ERR unknown command 'HELLO'\r\n"), true
	case "AUTH", "SELECT", "CLIENT":
		return []byte("+OK\r\n"), true
	}
	return nil, false
}

// Hostile answers the handshake, then every command with reply.
func Hostile(reply string) func(cmd []string) []byte {
	return func(cmd []string) []byte {
		if r, ok := Handshake(cmd); ok {
			return r
		}
		return []byte(reply)
	}
}

// HostileButPing is Hostile, except that PING gets PONG: a server that
// passes health checks and breaks every real call.
func HostileButPing(reply string) func(cmd []string) []byte {
	hostile := Hostile(reply)
	return func(cmd []string) []byte {
		if len(cmd) > 0 && strings.EqualFold(cmd[0], "PING") {
			return []byte("+PONG\r\n")
		}
		return hostile(cmd)
	}
}
