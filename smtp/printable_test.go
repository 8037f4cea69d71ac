package smtp

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestPrintable(t *testing.T) {
	for _, tc := range []struct {
		in, log, wire string
		max           int
	}{
		{"alice@example.org", "alice@example.org", "alice@example.org", 100},
		{"a\r\nX-Evil: 1", `a\x0d\x0aX-Evil: 1`, `a\x0d\x0aX-Evil: 1`, 100},
		{"nul\x00del\x7f", `nul\x00del\x7f`, `nul\x00del\x7f`, 100},
		{"caf\u00e9", "caf\u00e9", `caf\xc3\xa9`, 100},
		{"c1\u0085", `c1\xc2\x85`, `c1\xc2\x85`, 100},
		{"bad\xffutf8", `bad\xffutf8`, `bad\xffutf8`, 100},
		{"abcdefghijk", "abcdefg...", "abcdefg...", 10},
		{"abcdefghijk", "abcdefg...", "abcdefg...", 10},
		{"\n\n\n\n", `\x0a...`, `\x0a...`, 10},
	} {
		if got := Printable(tc.in, tc.max); got != tc.log {
			t.Errorf("Printable(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.log)
		}
		if got := ASCII(tc.in, tc.max); got != tc.wire {
			t.Errorf("ASCII(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.wire)
		}
	}
}

func TestPrintableCleanDoesNotAllocate(t *testing.T) {
	s := "alice@example.org"
	if n := testing.AllocsPerRun(100, func() { _ = Printable(s, 100); _ = ASCII(s, 100) }); n != 0 {
		t.Errorf("%v allocations for a clean string", n)
	}
}

func FuzzPrintable(f *testing.F) {
	f.Add("a\r\nb", 20)
	f.Add("caf\u00e9\xff", 5)
	f.Fuzz(func(t *testing.T, s string, max int) {
		if max < 3 || max > 1<<16 {
			return
		}
		for _, ascii := range []bool{false, true} {
			got := printable(s, max, ascii)
			if len(got) > max {
				t.Fatalf("%q: %d bytes > %d", got, len(got), max)
			}
			if !utf8.ValidString(got) {
				t.Fatalf("%q: invalid UTF-8", got)
			}
			for _, r := range got {
				if r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 || ascii && r >= 0x80 {
					t.Fatalf("%q: kept %U", got, r)
				}
			}
			if len(s) <= max-3 && !strings.HasSuffix(got, "...") && len(got) < len(s) {
				t.Fatalf("%q shrank to %q", s, got)
			}
		}
	})
}
