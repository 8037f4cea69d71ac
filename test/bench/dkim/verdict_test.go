package dkimbench

import "testing"

func TestUncomment(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"x; dkim=pass (2048-bit key; unprotected) header.d=a", "x; dkim=pass   header.d=a"},
		{`x; dkim=fail reason="bad (very; bad)" (c)`, `x; dkim=fail reason="bad (very; bad)"  `},
		{`x (a (nested; one) \) b); spf=pass`, `x  ; spf=pass`},
		{`x; dmarc=pass (p=none dis=none) header.from=d0.example`, `x; dmarc=pass   header.from=d0.example`},
	} {
		if got := uncomment(c.in); got != c.want {
			t.Errorf("uncomment(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
