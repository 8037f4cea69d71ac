package e2e

// What `sluice counters` and the admin socket refuse: an exemption past
// the longest duration sluice takes, and requests too large to hold.

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sluice/admin"
	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// An exemption -for past 3650d is refused with the bound, by the CLI and
// by the admin socket asked directly, and stores nothing; before, -for
// 2500000h (past the year 2262) answered "until 2311", stored nothing
// and left the sender refused. 3650d itself exempts the sender, behind
// real Postfix. A request too large to hold is refused in a few bytes,
// and the daemon goes on.
func TestOpsCountersAllowIsBounded(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.NewSluice(t)
	sock := filepath.Join(sl.Dir, "admin.sock")
	sl.Start(opsLimit("1/1h", `
[admin]
socket = "`+sock+`"
`))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	c := session(t, pf.Addr, "192.0.2.7")
	defer c.Close()
	wantTempfailAtMail(t, sendN(t, c, "alice@example.test", 2), 2, 2)

	cli := func(want int, args ...string) string { t.Helper(); return countersCLI(t, want, args...) }
	for _, d := range []string{"2500000h", "3651d", "99999999999999999999d"} {
		if out := cli(2, "allow", "sender:alice@example.test", "-for", d, "-socket", sock); !strings.Contains(out, "longer than 3650d (10 years)") {
			t.Errorf("-for %s: %q does not say the bound", d, out)
		}
	}

	// The socket asked directly, as anyone who can reach it might.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	// tryPost returns the status and error of an answer, or the error of a
	// request the server cut off (a body it would not read).
	tryPost := func(op string, form url.Values) (int, string, error) {
		t.Helper()
		resp, err := hc.PostForm("http://sluice/v1/counters/"+op, form)
		if err != nil {
			t.Logf("POST %s (%d bytes): %v", op, len(form.Encode()), err)
			return 0, "", err
		}
		defer resp.Body.Close()
		var r struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&r)
		t.Logf("POST %s (%d bytes): %d %s", op, len(form.Encode()), resp.StatusCode, r.Error)
		return resp.StatusCode, r.Error, nil
	}
	post := func(op string, form url.Values) (int, string) {
		t.Helper()
		code, msg, err := tryPost(op, form)
		if err != nil {
			t.Fatalf("POST %s: %v", op, err)
		}
		return code, msg
	}
	for _, d := range []string{"2500000h", "3651d"} {
		code, msg := post("allow", url.Values{"key": {"sender:alice@example.test"}, "for": {d}})
		if code != http.StatusBadRequest || !strings.Contains(msg, "longer than 3650d (10 years)") {
			t.Errorf("for=%s: %d %q, want 400 with the bound", d, code, msg)
		}
	}
	if out := cli(0, "allows", "-socket", sock); !strings.Contains(out, "no exemptions in force") {
		t.Errorf("a refused exemption was stored:\n%s", out)
	}
	huge := strings.Repeat("a", 1<<20)
	for _, form := range []url.Values{
		{"key": {"sender:" + huge + "@example.test"}, "for": {"1h"}},
		{"key": {"sender:alice@example.test"}, "rule": {huge[:10<<10]}},
	} {
		code, msg, err := tryPost("reset", form)
		if err == nil && (code < 400 || code >= 500 || len(msg) > 200) {
			t.Errorf("a request of %d bytes: %d and %d bytes of answer", len(form.Encode()), code, len(msg))
		}
	}

	// The bound itself is taken: the sender is exempt, for ten years.
	var ex []admin.Exemption
	if err := json.Unmarshal([]byte(cli(0, "allow", "sender:alice@example.test", "-for", "3650d", "-socket", sock, "-json")), &ex); err != nil {
		t.Fatal(err)
	}
	if len(ex) != 1 || ex[0].Until.Before(time.Now().Add(3649*24*time.Hour)) || ex[0].Until.After(time.Now().Add(3651*24*time.Hour)) {
		t.Errorf("allow -for 3650d: %+v", ex)
	}
	if out := cli(0, "allows", "-socket", sock); !strings.Contains(out, "sender:alice@example.test") {
		t.Errorf("allows does not list alice:\n%s", out)
	}
	wantTempfailAtMail(t, sendN(t, c, "alice@example.test", 2), 0, 0)
	c.Quit()
	pf.WaitDelivered(3, time.Minute)
}

// countersCLI runs `sluice counters args...`, logs what it printed, and
// fails t unless it exits with want.
func countersCLI(t *testing.T, want int, args ...string) string {
	t.Helper()
	r := sluicetest.RunSluice(t, append([]string{"counters"}, args...)...)
	t.Logf("$ sluice counters %s  (exit %d)\n%s%s", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	if r.Code != want {
		t.Fatalf("sluice counters %s: exit %d, want %d\n%s%s", strings.Join(args, " "), r.Code, want, r.Stdout, r.Stderr)
	}
	return r.Stdout + r.Stderr
}
