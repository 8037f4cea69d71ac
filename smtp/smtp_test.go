package smtp

import "testing"

// Every action and mode name parses back to itself, unknown names are
// refused, and only tempfail, disconnect and reject refuse a command.
func TestParseActionAndMode(t *testing.T) {
	for i, n := range actionNames {
		a, err := ParseAction(n)
		if err != nil || a != Action(i) || a.String() != n {
			t.Errorf("ParseAction(%q) = %v %v", n, a, err)
		}
	}
	if _, err := ParseAction("explode"); err == nil {
		t.Error("unknown action parsed")
	}
	for i, n := range modeNames {
		m, err := ParseMode(n)
		if err != nil || m != Mode(i) {
			t.Errorf("ParseMode(%q) = %v %v", n, m, err)
		}
	}
	if _, err := ParseMode("soft"); err == nil {
		t.Error("unknown mode parsed")
	}
	for a := ActionNone; a <= ActionReject; a++ {
		want := a == ActionTempfail || a == ActionDisconnect || a == ActionReject
		if a.Refuses() != want {
			t.Errorf("%s.Refuses() = %v", a, a.Refuses())
		}
	}
}

// Words names exactly the words the parsers take, so that an error built
// from it lists every word and no other.
func TestWordsAreWhatParses(t *testing.T) {
	words := ActionNone.Words()
	if len(words) != len(actionNames) {
		t.Errorf("Action.Words() = %v; the parser takes %v", words, actionNames)
	}
	for _, w := range words {
		if _, err := ParseAction(w); err != nil {
			t.Errorf("Action.Words() has %q: %v", w, err)
		}
	}
	words = ModeEnforce.Words()
	if len(words) != len(modeNames) {
		t.Errorf("Mode.Words() = %v; the parser takes %v", words, modeNames)
	}
	for _, w := range words {
		if _, err := ParseMode(w); err != nil {
			t.Errorf("Mode.Words() has %q: %v", w, err)
		}
	}
}

// The softer of two modes wins, whichever side it is on.
func TestSoften(t *testing.T) {
	for _, tc := range []struct{ a, b, want Mode }{
		{ModeEnforce, ModeEnforce, ModeEnforce},
		{ModeEnforce, ModeTag, ModeTag},
		{ModeTag, ModeEnforce, ModeTag},
		{ModeTag, ModeDryRun, ModeDryRun},
		{ModeDryRun, ModeTag, ModeDryRun},
	} {
		if got := tc.a.Soften(tc.b); got != tc.want {
			t.Errorf("%s.Soften(%s) = %s, want %s", tc.a, tc.b, got, tc.want)
		}
	}
}
