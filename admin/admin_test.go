package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"sluice/limits"
	"sluice/test/keepalive"
)

// fake answers like an engine with one counter for sender:a@b.
type fake struct {
	allowed map[string]time.Time
	resets  []string
}

func (f *fake) Top(ctx context.Context, rule string, n int) ([]limits.Counter, error) {
	return []limits.Counter{{Rule: "r", Limit: "3/1h", Key: "sender:a@b", StoreKey: "r:0:sender:a@b", Count: 3, Max: 3, RetryAfter: 90 * time.Second, Known: true}}[:min(n, 1)], nil
}

func (f *fake) Show(ctx context.Context, key, rule string) ([]limits.Counter, error) {
	if key != "sender:a@b" {
		return nil, &limits.KeyError{Err: errors.New("no rule counts per helo")}
	}
	return f.Top(ctx, rule, 1)
}

func (f *fake) Reset(ctx context.Context, key, rule string) ([]limits.Counter, error) {
	f.resets = append(f.resets, key+"|"+rule)
	return f.Show(ctx, key, rule)
}

func (f *fake) Allow(ctx context.Context, key string, until time.Time) ([]string, error) {
	if until.IsZero() {
		delete(f.allowed, key)
	} else {
		f.allowed[key] = until
	}
	return []string{key}, nil
}

func (f *fake) Exemptions(ctx context.Context) (map[string]time.Time, error) { return f.allowed, nil }

// serveFake serves the admin API of a fake engine on a socket of its own
// until the test ends.
func serveFake(t testing.TB) (string, *fake) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{allowed: map[string]time.Time{}}
	s := Serve(ln, func() Counters { return f }, zap.NewNop())
	t.Cleanup(func() { s.Close(context.Background()) })
	return sock, f
}

func TestRoundTrip(t *testing.T) {
	sock, f := serveFake(t)
	c := NewClient(sock)
	ctx := context.Background()

	top, err := c.Top(ctx, "", 20)
	if err != nil || len(top) != 1 || top[0].Count != 3 || top[0].Retry() != 90*time.Second || !top[0].InConfig {
		t.Fatalf("top: %+v %v", top, err)
	}
	if _, err := c.Show(ctx, "helo:x", ""); err == nil || !strings.Contains(err.Error(), "no rule counts per helo") {
		t.Errorf("show of a bad key: %v", err)
	}
	if _, err := c.Reset(ctx, "sender:a@b", "r"); err != nil || strings.Join(f.resets, ",") != "sender:a@b|r" {
		t.Errorf("reset: %v %v", f.resets, err)
	}
	ex, err := c.Allow(ctx, "sender:a@b", 2*time.Hour)
	if err != nil || len(ex) != 1 || time.Until(ex[0].Until) < time.Hour {
		t.Fatalf("allow: %+v %v", ex, err)
	}
	if ex, _ := c.Allows(ctx); len(ex) != 1 || ex[0].Key != "sender:a@b" {
		t.Errorf("allows: %+v", ex)
	}
	if _, err := c.Allow(ctx, "sender:a@b", 0); err != nil || len(f.allowed) != 0 {
		t.Errorf("allow -for 0 did not lift the exemption: %v %v", f.allowed, err)
	}
	if _, err := c.Show(ctx, "", ""); err == nil || !strings.Contains(err.Error(), "missing KEY") {
		t.Errorf("show without a key: %v", err)
	}
	if _, err := NewClient(filepath.Join(t.TempDir(), "none.sock")).Top(ctx, "", 1); err == nil || !strings.Contains(err.Error(), "no sluice answers") {
		t.Errorf("client on a missing socket: %v", err)
	}
}

// TestServerCapsAndClosesKeepAlives: keep-alive connections to the admin
// socket are capped at MaxConnections and closed when idle.
func TestServerCapsAndClosesKeepAlives(t *testing.T) {
	keepalive.CheckCapAndIdle(t, func(t testing.TB, idle time.Duration) keepalive.Dial {
		prev := idleTimeout
		idleTimeout = idle
		defer func() { idleTimeout = prev }()
		sock, _ := serveFake(t)
		return func() (net.Conn, error) { return net.Dial("unix", sock) }
	}, MaxConnections, "/v1/counters/allows")
}

// post sends a form to the admin API at sock as `sluice counters` would,
// or as anyone who can reach the socket might, and returns the status
// and the answer's error.
func post(t *testing.T, sock, op string, form url.Values) (int, string) {
	t.Helper()
	code, msg, err := tryPost(sock, op, form)
	if err != nil {
		t.Fatal(err)
	}
	return code, msg
}

// tryPost is post that returns the transport's error.
func tryPost(sock, op string, form url.Values) (int, string, error) {
	// One connection a request: the server serves MaxConnections at once.
	c := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := c.PostForm("http://sluice/v1/counters/"+op, form)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var r response
	_ = json.NewDecoder(resp.Body).Decode(&r)
	return resp.StatusCode, r.Error, nil
}

// An exemption is bounded: a -for past 3650d (which would put its end
// past what Unix nanoseconds hold, so that nothing is stored while the
// answer names a time in the 2300s) is refused with the bound, and the
// engine is never asked; 3650d itself is taken. A runaway key or request
// is refused, and what is refused is not echoed whole.
func TestAllowRefusesWhatItCannotHold(t *testing.T) {
	sock, f := serveFake(t)
	for _, d := range []string{"2500000h", "3651d", "99999999999999999999d", "-1h", "soon"} {
		code, msg := post(t, sock, "allow", url.Values{"key": {"sender:a@b"}, "for": {d}})
		if code != http.StatusBadRequest || !strings.Contains(msg, "-for") {
			t.Errorf("for=%s: %d %q, want 400 naming -for", d, code, msg)
		}
		if strings.HasSuffix(d, "h") && d != "-1h" || strings.HasSuffix(d, "d") {
			if !strings.Contains(msg, "longer than 3650d (10 years)") {
				t.Errorf("for=%s: %q does not say the bound", d, msg)
			}
		}
	}
	if len(f.allowed) != 0 {
		t.Fatalf("a refused -for reached the engine: %v", f.allowed)
	}
	if code, msg := post(t, sock, "allow", url.Values{"key": {"sender:a@b"}, "for": {"3650d"}}); code != http.StatusOK {
		t.Fatalf("for=3650d: %d %s", code, msg)
	}
	until := f.allowed["sender:a@b"]
	if until.Before(time.Now().Add(3649*24*time.Hour)) || until.UnixNano() < time.Now().UnixNano() {
		t.Errorf("for=3650d stored until %v", until)
	}

	long := strings.Repeat("x", maxKeyBytes+1)
	if code, msg := post(t, sock, "allow", url.Values{"key": {"sender:" + long}, "for": {"1h"}}); code != http.StatusBadRequest || len(msg) > 200 {
		t.Errorf("a key of %d bytes: %d, %d bytes of answer", len(long), code, len(msg))
	}
	if code, msg := post(t, sock, "reset", url.Values{"key": {"sender:a@b"}, "rule": {long}}); code != http.StatusBadRequest || len(msg) > 200 {
		t.Errorf("a -rule of %d bytes: %d, %d bytes of answer", len(long), code, len(msg))
	}
	// The server answers 413 from the length alone and closes: a client
	// still writing the body may see the connection cut before the answer.
	huge := strings.Repeat("y", 2*maxRequestBytes)
	code, msg, err := tryPost(sock, "reset", url.Values{"key": {huge}})
	switch {
	case err != nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET):
		t.Errorf("a request of %d bytes: %v", len(huge), err)
	case err == nil && (code != http.StatusRequestEntityTooLarge || len(msg) > 200):
		t.Errorf("a request of %d bytes: %d, %d bytes of answer", len(huge), code, len(msg))
	}
	if len(f.resets) != 0 {
		t.Errorf("a refused request reached the engine: %v", f.resets)
	}
}
