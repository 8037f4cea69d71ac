package main

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
)

func TestVersionPrintsTheBuildsVersionCommitAndGo(t *testing.T) {
	defer func(v, c string) { version, commit = v, c }(version, commit)
	for _, tc := range []struct{ version, commit, want string }{
		{"0.1.0", "0123456789ab", "sluice 0.1.0 (commit 0123456789ab, " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + ")\n"},
		// A go build in a checkout, without build-deb's -ldflags.
		{"", "", "sluice devel (commit "},
	} {
		version, commit = tc.version, tc.commit
		var out bytes.Buffer
		if code := run([]string{"version"}, &out, &out); code != 0 {
			t.Fatalf("sluice version exited %d", code)
		}
		if !strings.HasPrefix(out.String(), tc.want) {
			t.Errorf("version %q commit %q: printed %q, want %q", tc.version, tc.commit, out.String(), tc.want)
		}
		if !strings.Contains(out.String(), runtime.Version()) {
			t.Errorf("printed %q, without the Go version", out.String())
		}
	}
}
