package metrics

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// sluice_restricted_keys has a series per rule the count names, and a
// burst of scrapes asks the store once.
func TestRestrictedKeys(t *testing.T) {
	m := New("test")
	var asked atomic.Int32
	m.WatchRestrictions(func(ctx context.Context) (map[string]int, error) {
		asked.Add(1)
		return map[string]int{"rcpts": 2, "nets": 0}, nil
	})
	want := `
# HELP sluice_restricted_keys Keys restricted now by each rule with restrict_for (sluice counters restricted lists them); shared by the hosts of a Redis store.
# TYPE sluice_restricted_keys gauge
sluice_restricted_keys{rule="nets"} 0
sluice_restricted_keys{rule="rcpts"} 2
`
	for range 3 {
		if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "sluice_restricted_keys"); err != nil {
			t.Fatal(err)
		}
	}
	if n := asked.Load(); n != 1 {
		t.Errorf("the store was asked %d times for 3 scrapes within 15s", n)
	}
}
