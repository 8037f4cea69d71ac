package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// sluice check loads auth's access tables as serve does, so that a table
// serve could not load stops ExecStartPre, not the start itself.
func TestCheckAuthAccessTables(t *testing.T) {
	testenv.Require(t)
	dir := t.TempDir()
	table := filepath.Join(dir, "sender_access")
	config := filepath.Join(dir, "sluice.toml")
	write := func(path, body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(config, `authserv_id = "mx.sluice.test"

[checks]
sender_access = "`+table+`"
`)
	for _, tc := range []struct {
		name, table string
		code        int
		want        string
	}{
		{"good", "partner.example OK\nceo@example.test REJECT Spoofed sender\n", 0, "OK"},
		{"bad action", "partner.example OK\nbad.example FOO\n", 1, table + `:2: unknown action "FOO"`},
		{"missing", "", 1, table},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			os.Remove(table)
			if tc.table != "" {
				write(table, tc.table)
			}
			r := sluicetest.RunSluice(t, "check", "-config", config)
			t.Logf("exit %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
			if r.Code != tc.code || !strings.Contains(r.Stdout+r.Stderr, tc.want) {
				t.Errorf("sluice check: exit %d %q %q; want exit %d saying %q", r.Code, r.Stdout, r.Stderr, tc.code, tc.want)
			}
		})
	}
}
