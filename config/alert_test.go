package config

import (
	"strings"
	"testing"
)

// An [[alert]] is checked against the file's rules, and its errors name
// the file, the line and which [[alert]] it is.
func TestAlertErrorsPlaced(t *testing.T) {
	base := `[[limit]]
name = "rcpts"
count = "recipients"
per = "sasl_user"
rate = "10/1h"
restrict_for = "today"

[[alert]]
webhook = "https://hooks.example.com/sluice"

[[alert]]
`
	for _, tc := range []struct{ line, want string }{
		{`rules = ["rcpts", "nope"]`, `f.toml:12: alert[2].rules[2]: no [[limit]] named "nope"`},
		{`webhook = "http://hooks.example.com/"`, `f.toml:12: alert[2].webhook: "http://hooks.example.com/": alerts name accounts; send them over https`},
		{`mail = "postmaster@example.com"` + "\n" + `sendmail_path = "/nonexistent/sendmail"`, `f.toml:13: alert[2].sendmail_path`},
		{`on = ["explode"]` + "\n" + `webhook = "https://h.example/"`, `f.toml:12: alert[2].on[1]: unknown event "explode"`},
	} {
		_, err := Parse("f.toml", []byte(base+tc.line+"\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.line, err, tc.want)
		}
	}
	if _, err := Parse("f.toml", []byte(base+`webhook = "https://h.example/"`+"\n")); err != nil {
		t.Errorf("a good file: %v", err)
	}
}
