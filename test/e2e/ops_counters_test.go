package e2e

// `sluice counters top/show/reset/allow` against a running sluice
// behind real Postfix.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sluice/admin"
	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

func TestOpsCountersCLI(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.NewSluice(t)
	sock := filepath.Join(sl.Dir, "admin.sock")
	sl.Start(opsLimit("3/1h", `
[[limit]]
name = "msgs-per-ip"
count = "messages"
per = "client_ip"
rate = "100/1d"

[admin]
socket = "`+sock+`"
`))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("admin socket mode %v, want a socket with 0600", fi.Mode())
	}
	cli := func(want int, args ...string) string { t.Helper(); return countersCLI(t, want, args...) }
	c := session(t, pf.Addr, "192.0.2.7")
	defer c.Close()
	send := func(n, firstRefused int) {
		t.Helper()
		trs := sendN(t, c, "alice@example.test", n)
		if firstRefused > 0 {
			wantTempfailAtMail(t, trs, firstRefused, n)
		} else {
			wantTempfailAtMail(t, trs, 0, 0)
		}
	}
	send(4, 4)

	// top: alice is at her limit and comes first.
	out := cli(0, "top", "-socket", sock)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "RULE") ||
		!strings.Contains(lines[1], "msgs-per-sender") || !strings.Contains(lines[1], "sender:alice@example.test") ||
		!strings.Contains(lines[1], "3/3") || !strings.Contains(lines[1], "3/1h") {
		t.Errorf("top: want alice's msgs-per-sender at 3/3 first:\n%s", out)
	}
	// The same as JSON, with the socket taken from the config.
	var top []admin.Counter
	if err := json.Unmarshal([]byte(cli(0, "top", "-config", sl.Config, "-rule", "msgs-per-sender", "-n", "5", "-json")), &top); err != nil {
		t.Fatal(err)
	}
	if len(top) != 1 || top[0].Key != "sender:alice@example.test" || top[0].Count != 3 || top[0].Max != 3 || top[0].RetryAfter <= 0 {
		t.Errorf("top -json: %+v", top)
	}

	// show: both of alice's rules that count per sender (one), with retry-after.
	out = cli(0, "show", "sender:Alice@Example.test", "-socket", sock)
	if !strings.Contains(out, "sender:alice@example.test") || !strings.Contains(out, "3/3") || strings.Contains(out, "  -\n") {
		t.Errorf("show: want alice at 3/3 with a retry-after:\n%s", out)
	}
	out = cli(0, "show", "client_ip:192.0.2.7", "-socket", sock)
	if !strings.Contains(out, "msgs-per-ip") || !strings.Contains(out, "3/100") {
		t.Errorf("show client_ip: want 3/100:\n%s", out)
	}

	// allow: an exemption that expires by itself.
	out = cli(0, "allow", "sender:alice@example.test", "-for", "3s", "-socket", sock)
	if !strings.Contains(out, "sender:alice@example.test is exempt from every rule until") {
		t.Errorf("allow: %s", out)
	}
	if out := cli(0, "allows", "-socket", sock); !strings.Contains(out, "sender:alice@example.test") {
		t.Errorf("allows does not list alice:\n%s", out)
	}
	send(2, 0)
	if err := pollFor(15*time.Second, func() bool {
		r := sluicetest.RunSluice(t, "counters", "allows", "-socket", sock)
		return r.Code == 0 && !strings.Contains(r.Stdout, "alice")
	}); err != nil {
		t.Fatalf("the exemption did not expire: %v", err)
	}
	send(1, 1)

	// reset -rule: only that rule's counter goes.
	out = cli(0, "reset", "sender:alice@example.test", "-rule", "msgs-per-sender", "-socket", sock)
	if !strings.Contains(out, "reset 1 counters") {
		t.Errorf("reset: %s", out)
	}
	send(4, 4)
	out = cli(0, "show", "client_ip:192.0.2.7", "-socket", sock)
	if !strings.Contains(out, "8/100") {
		t.Errorf("the client_ip counter was touched by a reset of msgs-per-sender (want 8/100: 3+2+3 accepted):\n%s", out)
	}
	// reset without -rule: every rule counting per the key.
	cli(0, "reset", "client_ip:192.0.2.7", "-socket", sock)
	if out := cli(0, "show", "client_ip:192.0.2.7", "-socket", sock); !strings.Contains(out, "0/100") {
		t.Errorf("after reset: %s", out)
	}

	// Mistakes get a clear message and exit 1 (2 for usage).
	if out := cli(1, "show", "helo:mx.example.test", "-socket", sock); !strings.Contains(out, "no rule counts per helo") {
		t.Errorf("show helo: %s", out)
	}
	if out := cli(1, "reset", "sender:x@example.test", "-rule", "nope", "-socket", sock); !strings.Contains(out, `no rule named "nope"`) {
		t.Errorf("reset -rule nope: %s", out)
	}
	cli(2, "allow", "sender:x@example.test", "-socket", sock)
	cli(2, "show", "-socket", sock)
	if out := cli(1, "top", "-socket", filepath.Join(sl.Dir, "nothing.sock")); !strings.Contains(out, "no sluice answers") {
		t.Errorf("top on a missing socket: %s", out)
	}
	c.Quit()
	pf.WaitDelivered(3+2+3, time.Minute)

	if l := sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "counters reset by admin" }); len(l) != 2 {
		t.Errorf("want 2 audit lines for the resets, got %v", l)
	}
}
