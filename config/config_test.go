package config

import (
	"strings"
	"testing"
)

// A value refused while the file is read (an action, a mode or a reply
// that is no such thing) names the file, its line, and which [[limit]] it
// is in, as a value refused by validation does.
func TestTypedValuesRefusedWithTheirPlace(t *testing.T) {
	rules := `[[limit]]
name = "first"
count = "messages"
per = "sender"
rate = "10/1h"

[[limit]]
name = "second"
count = "messages"
per = "sender"
rate = "10/1h"
`
	for _, tc := range []struct{ line, want string }{
		{`action = "explode"`, `f.toml:12: limit[2].action: unknown action "explode"`},
		{`mode = "soft"`, `f.toml:12: limit[2].mode: unknown mode "soft"`},
		{`reply = "45 hi"`, `f.toml:12: limit[2].reply: reply "45 hi" must start with a 4xx or 5xx code`},
		{`reply = "550 5.7.1 no"`, `f.toml:12: limit[2].reply: reply "550 5.7.1 no": action tempfail needs a 4xx reply`},
		{`delay = "1s"`, `f.toml:12: limit[2].delay: only for action = "delay"`},
	} {
		_, err := Parse("f.toml", []byte(rules+tc.line+"\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.line, err, tc.want)
		}
	}
	_, err := Parse("f.toml", []byte("[spf]\nenabled = true\nfail = \"hold\"\n"))
	if err == nil || !strings.Contains(err.Error(), "f.toml:3: spf.fail: action hold is not for checks") {
		t.Errorf("a check's action that checks cannot take: %v", err)
	}
}
