package admin

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
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
