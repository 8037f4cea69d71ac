package conf

import (
	"strings"
	"testing"
	"time"
)

// Every duration sluice accepts, added to the time of day, is a time the
// stores can hold in Unix nanoseconds; one past the bound is refused with
// the bound in the message, whether it is written in days, hours or too
// many digits for a time.Duration.
func TestDurationsAreBounded(t *testing.T) {
	for _, s := range []string{"3650d", "87600h", "0", "1d", "250ms"} {
		d, err := ParseDuration(s)
		if err != nil {
			t.Errorf("%s: %v", s, err)
			continue
		}
		if now := time.Now(); now.Add(d).UnixNano() < now.UnixNano() {
			t.Errorf("%s: now + %s overflows Unix nanoseconds", s, d)
		}
	}
	for _, s := range []string{"3651d", "87601h", "2500000h", "99999999999h", "18446744073709551616d", "9223372036854775807ns1h"} {
		_, err := ParseDuration(s)
		if err == nil || !strings.Contains(err.Error(), "longer than 3650d (10 years)") {
			t.Errorf("%s: %v, want the bound named", s, err)
		}
	}
	for _, s := range []string{"", "d", "-1h", "1x", "1.5d", "ten"} {
		if _, err := ParseDuration(s); err == nil || strings.Contains(err.Error(), "longer than") {
			t.Errorf("%q: %v, want a syntax error", s, err)
		}
	}
}

// A message quotes at most MaxQuoted bytes of a value, whether sluice
// made it (Errorf) or it came from elsewhere (ClipMessage), and never
// cuts a character in two.
func TestMessagesQuoteLittle(t *testing.T) {
	huge := strings.Repeat("é", 1<<20)
	err := Errorf("mode", "unknown mode %q", huge)
	if n := len(err.Error()); n > 2*MaxQuoted {
		t.Errorf("Errorf: %d bytes", n)
	}
	if !strings.Contains(err.Error(), "…") {
		t.Errorf("Errorf: clipping not shown: %s", err)
	}
	msg := ClipMessage(`unknown mode "` + huge + `" (want enforce, tag or dry-run)`)
	if len(msg) > 2*MaxQuoted+40 || !strings.HasSuffix(msg, "(want enforce, tag or dry-run)") {
		t.Errorf("ClipMessage kept %d bytes: %.200s", len(msg), msg)
	}
	if msg := ClipMessage(strings.Repeat("x", 1<<20)); len(msg) > 1024 {
		t.Errorf("ClipMessage of unquoted text: %d bytes", len(msg))
	}
	for _, s := range []string{huge, strings.Repeat("a", 79) + "é", "short"} {
		if c := Clip(s); len(c) > MaxQuoted || !strings.HasPrefix(s, strings.TrimSuffix(c, "…")) {
			t.Errorf("Clip(%.20q…) = %q", s, c)
		}
	}
	path := "/var/lib/sluice/" + strings.Repeat("d", 200) + "/sender_access:2: unknown action \"FOO\""
	if ClipMessage(path) != path {
		t.Errorf("ClipMessage cut a long path: %q", ClipMessage(path))
	}
	if s := `"a" and "b"`; ClipMessage(s) != s {
		t.Errorf("ClipMessage changed a short message: %q", ClipMessage(s))
	}
}
