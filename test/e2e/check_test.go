package e2e

// The command line: `sluice check` names the file and line of a bad
// config and exits 1; `serve` refuses the same config the same way.

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

func TestCheckConfig(t *testing.T) {
	testenv.Require(t)
	dir := t.TempDir()
	good := `listen = "inet:127.0.0.1:8890"
mode = "enforce"

[log]
level = "info"

[[limit]]
name = "msgs-per-sender"
count = "messages"
per = "sender"
rate = "10/1h"
action = "tempfail"
`
	for _, tc := range []configCase{
		{name: "good"},
		{name: "unknown-key", line: 2, config: `mdoe = "enforce"`, want: "mdoe"},
		{name: "bad-rate", line: 11, config: `rate = "ten per hour"`, want: "rate"},
		{name: "bad-mode", line: 2, config: `mode = "sometimes"`, want: "mode"},
		{name: "bad-action", line: 12, config: `action = "explode"`, want: "action"},
		{name: "bad-cidr", line: 12, config: `except = ["192.0.2.0/33"]`, want: "192.0.2.0/33"},
		{name: "except-no-such-list", line: 12, config: `except = ["mynetworks"]`, want: `limit[1].except[1]: no list named "mynetworks" in [lists]`},
		{name: "except-login", line: 12, config: `except = ["sasl_user:relayuser", "192.0.2.0/24"]`},
		{name: "bad-listen", line: 1, config: `listen = "tcp:nowhere"`, want: "listen"},
		{name: "bad-max-connections", line: 2, config: `max_connections = -1`, want: "max_connections"},
		{name: "tiny-max-header-bytes", line: 2, config: `max_header_bytes = 1000`, want: "max_header_bytes"},
		{name: "max-macro-bytes-as-text", line: 2, config: `max_macro_bytes = "64KB"`, want: "max_macro_bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, prefix := runCheck(t, dir, good, tc)
			if tc.want == "" {
				return
			}
			res := sluicetest.RunSluice(t, "serve", "-config", path)
			if res.Code == 0 || !strings.Contains(res.Stderr, prefix) {
				t.Errorf("serve: exit %d, stderr %q; want a failure naming %q", res.Code, res.Stderr, prefix)
			}
		})
	}

	t.Run("missing-file", func(t *testing.T) {
		path := filepath.Join(dir, "nonexistent.toml")
		res := sluicetest.RunSluice(t, "check", "-config", path)
		t.Logf("sluice check (exit %d): %s", res.Code, res.Stderr)
		if res.Code != 1 || !strings.Contains(res.Stderr, path) {
			t.Errorf("check of a missing file: exit %d, stderr %q; want exit 1 naming the file", res.Code, res.Stderr)
		}
	})

	t.Run("version", func(t *testing.T) {
		res := sluicetest.RunSluice(t, "version")
		if res.Code != 0 || !strings.HasPrefix(res.Stdout, "sluice") {
			t.Errorf("version: exit %d, %q", res.Code, res.Stdout)
		}
		t.Logf("%s", strings.TrimSpace(res.Stdout))
	})
}

// configCase is a config that differs from a good one in one place.
type configCase struct {
	name   string
	line   int    // the line of good replaced by config; 0: the good config itself
	config string // may hold several lines; the error is on the first
	want   string // in the error; "" for a config that check must accept
	at     int    // the line the error names, when not line
}

// runCheck writes the case's config under dir and runs `sluice check` on
// it: a good config must pass, a bad one exit 1 naming FILE:LINE and want.
// It returns the file and the "FILE:LINE:" the error names.
func runCheck(t *testing.T, dir, good string, tc configCase) (path, prefix string) {
	t.Helper()
	lines := strings.Split(good, "\n")
	if tc.line > 0 {
		lines[tc.line-1] = tc.config
	}
	path = filepath.Join(dir, tc.name+".toml")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	res := sluicetest.RunSluice(t, "check", "-config", path)
	t.Logf("sluice check (exit %d): %s%s", res.Code, res.Stdout, res.Stderr)
	if tc.want == "" {
		if res.Code != 0 {
			t.Fatalf("check of a good config: exit %d: %s", res.Code, res.Stderr)
		}
		return path, ""
	}
	at := tc.line
	if tc.at != 0 {
		at = tc.at
	}
	prefix = path + ":" + strconv.Itoa(at) + ":"
	if res.Code != 1 || !strings.Contains(res.Stderr, prefix) || !strings.Contains(res.Stderr, tc.want) {
		t.Errorf("check: exit %d, stderr %q; want exit 1 and %q ... %q", res.Code, res.Stderr, prefix, tc.want)
	}
	return path, prefix
}
