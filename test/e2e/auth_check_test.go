package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// sluice check loads auth's access tables as serve does, so that a table
// serve could not load stops ExecStartPre, not the start itself: every
// kind and format, each error with the table's file and line — a regexp
// Go's RE2 cannot compile, a /regexp/ in a table that would read it as
// plain text, a DELAY above max_delay — and an unreadable table.
func TestCheckAuthAccessTables(t *testing.T) {
	testenv.Require(t)
	dir := t.TempDir()
	write := func(path, body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, key, spec, table string
		code                   int
		want                   string // %s is the table's path
	}{
		{"good", "sender_access", "%s", "partner.example OK\nceo@example.test REJECT Spoofed sender\n", 0, "OK"},
		{"bad action", "sender_access", "%s", "partner.example OK\nbad.example FOO\n", 1, `%s:2: unknown action "FOO"`},
		{"missing", "sender_access", "%s", "", 1, "%s"},
		{"comment after OK", "sender_access", "%s", ".partner.example  OK  # its subdomains\n", 1, "%s:1: OK takes no text"},
		{"regexp as text", "helo_access", "%s", "# bad neighbourhood\n/jp-good\\.example$/ REJECT\n", 1, `%s:2: /jp-good\.example$/ is a regexp`},
		{"regexp", "helo_access", "regexp:%s", "/jp-good\\.example$/ REJECT\n", 0, "OK"},
		{"look-behind", "helo_access", "pcre:%s", "/ok/ DUNNO\n/(?<=mail)\\.example$/ REJECT\n", 1, "%s:2: /(?<=mail)\\.example$/: Go's RE2 cannot compile it"},
		{"cidr", "client_access", "cidr:%s", "192.0.2.0/24 REJECT\n198.51.100.0/24 DELAY 5s\n", 0, "OK"},
		{"cidr host bits", "client_access", "cidr:%s", "192.0.2.7/24 REJECT\n", 1, "%s:1: network \"192.0.2.7/24\" has bits set past /24"},
		{"tarpit above max_delay", "client_access", "cidr:%s", "192.0.2.0/24 OK\n198.51.100.0/24 DELAY 30s\n", 1, "%s:2: DELAY 30s is above max_delay (20s)"},
		{"unreadable", "client_access", "cidr:%s", "", 1, "%s:1: read %s: is a directory"},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			table := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			config := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".toml")
			if tc.table != "" {
				write(table, tc.table)
			}
			if tc.name == "unreadable" {
				// The check runs as root here: a directory in the way is
				// what root cannot read.
				os.Mkdir(table, 0o755)
			}
			write(config, "authserv_id = \"mx.sluice.test\"\n\n[checks]\n"+tc.key+" = \""+fmt.Sprintf(tc.spec, table)+"\"\n")
			r := sluicetest.RunSluice(t, "check", "-config", config)
			want := strings.ReplaceAll(tc.want, "%s", table)
			t.Logf("exit %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
			if r.Code != tc.code || !strings.Contains(r.Stdout+r.Stderr, want) {
				t.Errorf("sluice check: exit %d %q %q; want exit %d saying %q", r.Code, r.Stdout, r.Stderr, tc.code, want)
			}
		})
	}
}
