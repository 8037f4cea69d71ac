// Package keepalive holds HTTP/1.1 keep-alive connections open by hand,
// for tests of what a server does when many are held: caps them, closes idle ones.
package keepalive

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// Conn is one keep-alive connection.
type Conn struct {
	c  net.Conn
	br *bufio.Reader
}

// Dial opens a connection to the server under test.
type Dial func() (net.Conn, error)

// Open opens a connection, failing t when it cannot.
func Open(t testing.TB, dial Dial) *Conn {
	t.Helper()
	c, err := dial()
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &Conn{c: c, br: bufio.NewReader(c)}
}

// Send writes a GET for path, asking to keep the connection.
func (c *Conn) Send(path string) error {
	c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := fmt.Fprintf(c.c, "GET %s HTTP/1.1\r\nHost: sluice\r\n\r\n", path)
	return err
}

// Answer reads the answer to what was sent, waiting at most timeout, and
// returns its status.
func (c *Conn) Answer(timeout time.Duration) (int, error) {
	c.c.SetReadDeadline(time.Now().Add(timeout))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, err
	}
	return resp.StatusCode, nil
}

// Get sends a GET for path and reads its answer, failing t unless it is 200.
func (c *Conn) Get(t testing.TB, path string) {
	t.Helper()
	if err := c.Send(path); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if code, err := c.Answer(5 * time.Second); err != nil || code != http.StatusOK {
		t.Fatalf("GET %s: %d %v", path, code, err)
	}
}

// ClosedWithin reports whether the server closed the connection within d.
func (c *Conn) ClosedWithin(d time.Duration) bool {
	c.c.SetReadDeadline(time.Now().Add(d))
	_, err := c.br.ReadByte()
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// Close closes the connection from the client's side.
func (c *Conn) Close() { c.c.Close() }

// Start starts the server under test with the given idle timeout, and
// returns how to reach it; the server is stopped when the test ends.
type Start func(t testing.TB, idle time.Duration) Dial

// CheckCapAndIdle checks an HTTP server that may hold max connections at
// once and closes keep-alive connections idle for its idle timeout: with
// max connections held, one more is not answered until one of them is
// closed; and connections left idle are closed by the server, no sooner
// than the timeout. path must answer 200 to a GET.
func CheckCapAndIdle(t *testing.T, start Start, max int, path string) {
	t.Run("cap", func(t *testing.T) {
		dial := start(t, time.Minute)
		held := make([]*Conn, max)
		for i := range held {
			held[i] = Open(t, dial)
			held[i].Get(t, path)
		}
		extra := Open(t, dial)
		if err := extra.Send(path); err != nil {
			t.Fatal(err)
		}
		if code, err := extra.Answer(500 * time.Millisecond); err == nil {
			t.Fatalf("with %d keep-alive connections held, one more was answered %d", max, code)
		}
		held[0].Close()
		if code, err := extra.Answer(5 * time.Second); err != nil || code != http.StatusOK {
			t.Fatalf("a connection waiting for a free place was not answered once one was: %d %v", code, err)
		}
	})
	t.Run("idle", func(t *testing.T) {
		const idle = 300 * time.Millisecond
		dial := start(t, idle)
		conns := make([]*Conn, 5)
		for i := range conns {
			conns[i] = Open(t, dial)
			conns[i].Get(t, path)
		}
		answered := time.Now()
		for i, c := range conns {
			if !c.ClosedWithin(5 * time.Second) {
				t.Fatalf("keep-alive connection %d left idle was not closed by the server", i)
			}
		}
		if took := time.Since(answered); took < idle/2 {
			t.Errorf("idle connections closed after %v, before the idle timeout of %v", took, idle)
		}
	})
}
