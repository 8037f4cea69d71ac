package access

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// countryTable is a cidr table the size of a large country's list: n
// networks, the client in none of them (the whole table is read).
func countryTable(b *testing.B, n int) *Table {
	var text strings.Builder
	for i := range n {
		fmt.Fprintf(&text, "%d.%d.%d.0/24 REJECT no\n", 10+i/65536, i/256%256, i%256)
	}
	tab, err := Parse(strings.NewReader(text.String()), "bench", Clients, CIDR)
	if err != nil {
		b.Fatal(err)
	}
	return tab
}

// A connect's lookup in a cidr table of 8,000 networks that misses, and
// in one of 10 for a ratio.
func BenchmarkCIDRLookup(b *testing.B) {
	ip := netip.MustParseAddr("198.51.100.7")
	for _, n := range []int{10, 8000} {
		tab := countryTable(b, n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				if _, ok := tab.LookupClient(ip, ""); ok {
					b.Fatal("matched")
				}
			}
		})
	}
}
