package e2e

// Outbound control shared by a fleet: two sluice daemons, each behind its
// own Postfix with SMTP AUTH, on one real redis-server. A runtime limit
// set on one host applies on the other at once; a key restricted on one
// host is held on the other, listed by either, and released by either.

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"sluice/limits/redisstore/redistest"
	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

type outboundHost struct {
	sl   *sluicetest.Sluice
	pf   *mta.Postfix
	sock string
}

func startOutboundHost(t *testing.T, addr string) *outboundHost {
	t.Helper()
	sl := sluicetest.NewSluice(t)
	h := &outboundHost{sl: sl, sock: filepath.Join(sl.Dir, "admin.sock")}
	sl.Start(limitsConfig(fmt.Sprintf(`[[limit]]
name = "rcpts"
count = "recipients"
per = "sasl_user"
rate = "2/1h"
overrides = "runtime"
restrict_for = "24h"

[admin]
socket = %q
%s`, h.sock, redisStore([]string{addr}, false, ""))))
	h.pf = mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen, SASLUsers: saslUsers("alice@example.test", "dave@example.test")})
	return h
}

func (h *outboundHost) send(t *testing.T, user string, n int) (string, mta.Transaction) {
	t.Helper()
	c := login(t, h.pf.Addr, "192.0.2.80", user)
	defer c.Quit()
	return sendTo(t, c, user, rcpts(n, "example.org"))
}

func TestOutboundFleetRedis(t *testing.T) {
	testenv.Require(t)
	srv := redistest.Start(t)
	a := startOutboundHost(t, srv.Addr)
	b := startOutboundHost(t, srv.Addr)

	// A runtime limit set on a applies at once on b.
	cliOn(t, a.sock, 0, "limit", "rcpts", "sasl_user:dave@example.test", "1/1h")
	if got, _ := b.send(t, "dave@example.test", 2); got != "250 451" {
		t.Errorf("dave on host b after a limit set on host a: %s, want 250 451", got)
	}
	if out := cliOn(t, b.sock, 0, "limits"); !strings.Contains(out, "sasl_user:dave@example.test") || !strings.Contains(out, "1/1h") {
		t.Errorf("host b does not list the limit set on host a:\n%s", out)
	}

	// alice crosses on a: restricted for the fleet.
	if got, _ := a.send(t, "alice@example.test", 3); got != "250 250 451" {
		t.Fatalf("alice's crossing on host a: %s", got)
	}
	_, tr := b.send(t, "alice@example.test", 1)
	if !tr.Accepted() {
		t.Fatalf("alice on host b: %v", tr)
	}
	heldOnB := tr.QueueID()
	err := pollFor(30*time.Second, func() bool { return slices.Contains(heldIDs(b.pf), heldOnB) })
	if err != nil {
		t.Fatalf("alice's message on host b is not held: %v %+v", err, b.pf.Queue())
	}
	// The index of restricted keys is written in the background (within
	// a second): both hosts list alice.
	for _, h := range []*outboundHost{a, b} {
		var out string
		err := pollFor(15*time.Second, func() bool {
			r := sluicetest.RunSluice(t, "counters", "restricted", "-socket", h.sock)
			out = r.Stdout + r.Stderr
			return strings.Contains(out, "sasl_user:alice@example.test") && strings.Contains(out, "3 (limit 2/1h)")
		})
		if err != nil {
			t.Errorf("restricted does not list alice: %v\n%s", err, out)
		}
	}
	// Released on a, with the id of the message held on b.
	if out := cliOn(t, a.sock, 0, "release", "sasl_user:alice@example.test"); !strings.Contains(out, heldOnB) {
		t.Errorf("release on host a does not name the message held on host b (%s):\n%s", heldOnB, out)
	}
	// Released, alice is not held any more: her hour is still full, so
	// the rule's own tempfail answers; once her counter is reset, her
	// mail goes through, and the grace keeps her from being restricted
	// again at once.
	if got, tr := b.send(t, "alice@example.test", 1); got != "451" || tr.Accepted() {
		t.Errorf("alice on host b after the release: %s, want 451 (the rate, not a hold)", got)
	}
	cliOn(t, b.sock, 0, "reset", "sasl_user:alice@example.test")
	if got, tr := b.send(t, "alice@example.test", 3); got != "250 250 451" || !tr.Accepted() {
		t.Errorf("alice on host b after a reset: %s", got)
	}
	b.pf.WaitDelivered(2, time.Minute) // dave's first, alice's after the release
	if ids := heldIDs(b.pf); !slices.Equal(ids, []string{heldOnB}) {
		t.Errorf("hold queue %v after the release, want only the message held before it (%s)", ids, heldOnB)
	}
}
