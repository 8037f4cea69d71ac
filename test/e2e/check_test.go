package e2e

// The command line: `sluice check` names the file and line of a bad
// config and exits 1; `serve` refuses the same config the same way.

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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
		// A number, a list or a table where a word belongs names the key
		// and its words; it never decodes into the number behind them.
		{name: "mode-as-integer", line: 2, config: `mode = 7`, want: "mode: want a word in quotes (enforce, tag or dry-run), not the integer 7"},
		{name: "spf-mode-as-integer", line: 3, config: "[spf]\nenabled = true\nmode = 9", at: 5, want: "spf.mode: want a word in quotes (enforce, tag or dry-run), not the integer 9"},
		{name: "spf-action-as-integer", line: 3, config: "[spf]\nfail = 4", at: 4, want: "spf.fail: want a word in quotes (tempfail, reject, tag, hold, delay, disconnect or none)"},
		{name: "rule-mode-as-integer", line: 12, config: `mode = 9`, want: "limit[1].mode: want a word in quotes"},
		{name: "count-as-integer", line: 9, config: `count = 3`, want: "limit[1].count: want a word in quotes (connections, concurrent, messages, recipients, bytes or distinct), not the integer 3"},
		{name: "per-as-integer", line: 10, config: `per = 3`, want: "limit[1].per: want a key name in quotes or a list of them (client_ip, sender"},
		{name: "level-as-bool", line: 5, config: `level = true`, want: "log.level: want a word in quotes (debug, info, warn or error), not true"},
		{name: "action-as-list", line: 12, config: `action = ["reject"]`, want: "limit[1].action: want a word in quotes (tempfail, reject"},
		{name: "backend-as-table", line: 3, config: "[store]\nbackend = { name = \"redis\" }", at: 4, want: "store.backend: want a word in quotes (memory or redis), not a table"},
		{name: "duration-as-integer", line: 3, config: `idle_timeout = 600`, want: `idle_timeout: want a duration in quotes (e.g. "30s", "5m", "1d"), not the integer 600`},
		{name: "key-in-capitals", line: 2, config: `MODE = "tag"`, want: "unknown key MODE (keys are written in lower case: mode)"},
		// A string where a list belongs says so in the user's words.
		{name: "listener-as-string", line: 12, config: `match.listener = "submission"`, want: `limit[1].match.listener: want a list, e.g. ["submission"], not a string`},
		{name: "trusted-as-string", line: 3, config: `trusted = "10.0.0.0/8"`, want: `trusted: want a list, e.g. ["10.0.0.0/8"], not a string`},
		// The line of what is wrong, however deep it is written.
		{name: "list-in-list", line: 3, config: "trusted = [\n  [\"a\"],\n]", at: 4, want: "trusted[1]: want a string in quotes, not a list"},
		{name: "dotted-list-key", line: 3, config: "lists.a.b = 1", want: "lists.a: a list is an array of entries"},
		{name: "inline-rule", line: 3, config: "limit = [\n  { name = \"r\", count = \"messages\",\n    per = \"sender\", rate = \"1/1h\", mode = 7 },\n]", at: 5, want: "limit[1].mode: want a word in quotes"},
		// Durations are bounded, and the error says the bound.
		{name: "delay-past-bound", line: 12, config: "action = \"delay\"\ndelay = \"3651d\"", at: 13, want: `limit[1].delay: duration "3651d" is longer than 3650d (10 years)`},
		{name: "rate-past-bound", line: 11, config: `rate = "10/87601h"`, want: "longer than 3650d (10 years)"},
		{name: "timeout-past-int64", line: 2, config: `shutdown_timeout = "2562048h"`, want: "shutdown_timeout: duration \"2562048h\" is longer than 3650d"},
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

	// A listener other hosts can reach is allowed, and said: on stderr,
	// with its line, by check and by serve at start.
	t.Run("metrics-beyond-loopback", func(t *testing.T) {
		port := testenv.FreePort(t)
		path, _ := runCheck(t, dir, good+"\n[metrics]\nlisten = \":"+strconv.Itoa(port)+"\"\n", configCase{name: "metrics-beyond-loopback"})
		res := sluicetest.RunSluice(t, "check", "-config", path)
		want := path + ":15: metrics.listen: \":" + strconv.Itoa(port) + "\" is reachable beyond loopback"
		if res.Code != 0 || !strings.Contains(res.Stderr, "warning: "+want) {
			t.Errorf("check: exit %d, stderr %q; want exit 0 and a warning %q", res.Code, res.Stderr, want)
		}
		sl := sluicetest.NewSluice(t)
		sl.Start("[metrics]\nlisten = \":" + strconv.Itoa(testenv.FreePort(t)) + "\"\n")
		if w := sl.Find(func(l sluicetest.LogLine) bool {
			return l.Msg() == "config warning" && strings.Contains(l.Str("warning"), "metrics.listen") && strings.Contains(l.Str("warning"), "beyond loopback")
		}); len(w) != 1 {
			t.Errorf("serve did not warn of the metrics listener at start:\n%v", sl.Logs())
		}
		res = sluicetest.RunSluice(t, "check", "-config", filepath.Join(dir, "good.toml"))
		if strings.Contains(res.Stderr, "warning") {
			t.Errorf("a config without side listeners warned: %q", res.Stderr)
		}
	})

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

// A 50 MB value is refused by `sluice check` in a short error that names
// its line, wherever it is — a mode, a header name, a list entry, a key,
// an integer — and check's memory stays within a few times the file it
// must read (maximum RSS, from the kernel). Before the bound, such a value
// was echoed whole and check peaked at 440 to 840 MB.
func TestCheckHugeValue(t *testing.T) {
	testenv.Require(t)
	dir := t.TempDir()
	const size = 50 << 20
	const maxRSS = 128 << 20 // the file, and what a sluice binary takes to start
	for _, tc := range []struct {
		name, before string
		fill         byte
		after, want  string
	}{
		{"mode", "listen = \"inet:127.0.0.1:8890\"\nmode = \"", 'a', "\"\n", ":2: mode: "},
		{"tag-header", "\ntag_header = \"", 'a', "\"\n", ":2: tag_header: "},
		{"list-entry", "\ntrusted = [\n  \"", 'a', "\"]\n", ":3: trusted[1]: "},
		{"key", "\n", 'a', " = 1\n", ":2: a key of 52428800 bytes"},
		{"integer", "\nmax_connections = ", '9', "\n", ":2: max_connections: a value of 52428800 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".toml")
			writeHuge(t, path, tc.before, tc.fill, size, tc.after)
			// The file is written a megabyte at a time: the kernel counts
			// this process's memory into the child's until it execs.
			cmd := exec.Command(sluicetest.Binary(t), "check", "-config", path)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss << 10
			t.Logf("sluice check of a %d MB file: %v, max RSS %d MB: %s", size>>20, err, rss>>20, stderr.String())
			if cmd.ProcessState.ExitCode() != 1 || !strings.HasPrefix(stderr.String(), path+tc.want) {
				t.Errorf("exit %d, stderr %.300q; want exit 1 and %q", cmd.ProcessState.ExitCode(), stderr.String(), path+tc.want)
			}
			if n := stderr.Len(); n > 300 {
				t.Errorf("%d bytes of error", n)
			}
			if rss > maxRSS {
				t.Errorf("max RSS %d MB, above %d MB", rss>>20, maxRSS>>20)
			}
		})
	}
}

// writeHuge writes before, n bytes of fill and after to path.
func writeHuge(t *testing.T, path, before string, fill byte, n int, after string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := bytes.Repeat([]byte{fill}, 1<<20)
	if _, err := f.WriteString(before); err != nil {
		t.Fatal(err)
	}
	for ; n > 0; n -= len(chunk) {
		if _, err := f.Write(chunk[:min(n, len(chunk))]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.WriteString(after); err != nil {
		t.Fatal(err)
	}
}
