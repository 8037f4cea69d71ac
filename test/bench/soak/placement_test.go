package main

import (
	"slices"
	"testing"
)

// TestPlacementKeepsThePid proves every placement runs the binary through
// commands that exec it (taskset, then chrt), so the pid the soak samples
// is the milter's own, and that no placement runs it bare.
func TestPlacementKeepsThePid(t *testing.T) {
	for _, c := range []struct {
		p    placement
		want []string
	}{
		{placement{}, []string{"./sluice", "serve"}},
		{placement{cpus: "1"}, []string{"taskset", "-c", "1", "./sluice", "serve"}},
		{placement{idle: true}, []string{"chrt", "--idle", "0", "./sluice", "serve"}},
		{placement{cpus: "0,1", idle: true}, []string{"taskset", "-c", "0,1", "chrt", "--idle", "0", "./sluice", "serve"}},
	} {
		if got := c.p.command("./sluice", "serve").Args; !slices.Equal(got, c.want) {
			t.Errorf("%+v runs %q, want %q", c.p, got, c.want)
		}
	}
}
