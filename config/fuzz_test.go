package config

import (
	"bytes"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"sluice/limits/memstore"
)

// builtin is the config sluice runs on without -config.
func builtin(t testing.TB) []byte {
	t.Helper()
	data, err := os.ReadFile("../cmd/sluice/default.toml")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// fuzzRich is a config that touches every section, so that the fuzzer
// starts from keys that exist.
const fuzzRich = `listen = "unix:/run/sluice/sluice.sock"
mode = "tag"
tag_header = "X-Sluice-Limit"
idle_timeout = "5m"
shutdown_timeout = "30s"
authserv_id = "mx.example.test"
trusted = ["127.0.0.0/8", "::1", "192.0.2.0/24"]

[store]
backend = "memory"
on_store_error = "allow"
max_keys = 1000
snapshot_interval = "1m"

[lists]
partners = ["192.0.2.0/24", "example.org", ".example.net", "bob@example.com", "/^bulk-.*@news\\./"]
vip = ["alice@example.org"]

[log]
level = "debug"
format = "console"

[[limit]]
name = "conn-per-ip"
count = "concurrent"
per = "client_ip"
max = 20
ipv6_prefix = 64

[[limit]]
name = "rcpts"
count = "recipients"
per = ["sasl_user", "rcpt_domain"]
rate = "100/1h"
burst = 50
max_rcpt_per_message = 50
action = "reject"
reply = "550 5.7.1 Too many recipients for {sasl_user} ({limit}); try again in {retry_after}"
mode = "dry-run"
except = ["vip"]
count_on = "accepted"
match = { authenticated = true, listener = ["submission"], sender_domain = ["partners"], rcpt_domain = ["example.net"] }

[[limit]]
name = "bytes"
count = "bytes"
per = ["sender", "client_ip"]
rate = "100000000/1d"
action = "delay"
delay = "10s"
strip_extension = true
null_sender = "count"
strict = true
final = true
apply_to_trusted = true
on_store_error = "tempfail"
match = { helo = "^[a-z.]+$", sender = "@example\\.org$", client = ["partners", "10.0.0.0/8"] }
`

var lineRE = regexp.MustCompile(`^fuzz\.toml:(\d+): `)

// FuzzParseConfig feeds the config loader any bytes. It must not panic;
// every error must name the file, and a line within it when it names
// one; and a config it accepts must also build: what `sluice check`
// calls OK, `sluice serve` must be able to run.
func FuzzParseConfig(f *testing.F) {
	f.Add(builtin(f))
	f.Add([]byte(fuzzRich))
	f.Add([]byte(""))
	f.Add([]byte("listen = \"inet:127.0.0.1:8890\"\n[[limit]]\nname = \"x\"\ncount = \"messages\"\nper = \"sender\"\nrate = \"10/1h\"\n"))
	f.Add([]byte("[[limit]]\nname = \"a\"\ncount = \"concurrent\"\nper = \"client_ip\"\nmax = 0\n"))
	f.Add([]byte("mode = \"enforce\"\n[store]\nbackend = \"redis\"\n"))
	f.Add([]byte("[lists]\nx = \"file:relative\"\n"))
	f.Add([]byte("[[limit]]\nname = \"r\"\ncount = \"messages\"\nper = \"sender\"\nrate = [\"1/0s\"]\nreply = \"451 5.7.1 %\"\n"))
	// Values of the wrong kind, lines of nested keys, bounds.
	for _, s := range []string{
		"mode = 7\n",
		"[spf]\nenabled = true\nmode = 9\nfail = 3\n",
		"[lists]\na.b = 1\n",
		"\n\n\ntrusted = [[\"a\"]]\n",
		"[[limit]]\nname = \"r\"\ncount = 3\nper = [1]\nrate = \"1/1h\"\nmatch.listener = \"submission\"\n",
		"limit = [{name = \"r\", count = \"messages\", per = \"sender\", rate = \"1/1h\", mode = 7, match = {client = [\"10.0.0.0/8\", 5]}}]\n",
		"[[limit]]\nname = \"r\"\ncount = \"messages\"\nper = \"sender\"\nrate = \"1/3650d\"\naction = \"delay\"\ndelay = \"87601h\"\n",
		"idle_timeout = 7\nshutdown_timeout = 2500000h\n[store]\nsnapshot_interval = \"99999999999999999999d\"\n",
		"[checks]\nrequire_fqdn_sender = 5\nclient_rdns = { require = true }\ndnsbl = [\"zen.example\", { zone = 1 }]\n",
		"[[store]]\n[limit]\nMODE = \"tag\"\n[log.level]\n",
		"[dns]\nrate = nan\nburst = 1.5\nservers = \"192.0.2.1\"\n",
		"max_connections = 99999999999999999999\nmax_header_bytes = 0x7fffffffffffffff\n",
		"[metrics]\nlisten = \":9465\"\n[admin]\nsocket = \"/run/sluice/admin.sock\"\n",
		"tag_header = \"" + strings.Repeat("x", 70<<10) + "\"\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.toml", data)
		if err != nil {
			msg := err.Error()
			if !strings.HasPrefix(msg, "fuzz.toml") {
				t.Fatalf("error does not name the file: %q", msg)
			}
			// A word the file itself holds (a key named Go) is quoted
			// back, not Go speaking.
			for _, m := range goWords.FindAllString(msg, -1) {
				if !bytes.Contains(data, []byte(m)) {
					t.Fatalf("error speaks Go (%q): %q", m, msg)
				}
			}
			for _, line := range strings.Split(msg, "\n") {
				if len(line) > 1100 {
					t.Fatalf("an error line of %d bytes: %.200q", len(line), line)
				}
				if m := lineRE.FindStringSubmatch(line); m != nil {
					n, _ := strconv.Atoi(m[1])
					if lines := bytes.Count(data, []byte{'\n'}) + 1; n < 1 || n > lines {
						t.Fatalf("error names line %d of a %d-line file: %q", n, lines, msg)
					}
				}
			}
			return
		}
		if err := c.validate(); err != nil {
			t.Fatalf("an accepted config fails validation again: %v", err)
		}
		if bytes.Contains(data, []byte("file:")) {
			return // building would read files named by the fuzzer
		}
		if bytes.Contains(data, []byte("_access")) {
			return // auth would read access tables named by the fuzzer
		}
		st, err := memstore.New(memstore.Config{MaxKeys: 16}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if _, err := c.Build(Runtime{Store: st}); err != nil {
			t.Fatalf("an accepted config does not build: %v", err)
		}
	})
}

// TestFuzzSeedsAreValid keeps the fuzzer's starting points valid: a seed
// that no longer parses would leave the accepted-config path unfuzzed.
func TestFuzzSeedsAreValid(t *testing.T) {
	for name, data := range map[string][]byte{"default": builtin(t), "rich": []byte(fuzzRich)} {
		if _, err := Parse(name, data); err != nil {
			t.Errorf("%s seed: %v", name, err)
		}
	}
}
