package engine_test

import (
	"fmt"
	"testing"

	"sluice/limits"
)

// A rule that matches a listener name no session comes on is pointed out,
// once, with the names that did come: Postfix sends $myhostname unless
// master.cf names the service, and match.listener = ["smtpd"] then never
// applies. A name that comes silences it; so does a rule per listener
// once any name comes.
func TestListenerNamesNeverSeenAreLogged(t *testing.T) {
	port25 := limits.Rule{Name: "port25", Count: "messages", Per: "client_ip", Rate: "10/1h", Match: limits.Match{Listener: []string{"smtpd"}}}
	perListener := limits.Rule{Name: "per-listener", Count: "connections", Per: "listener", Rate: "100/1m"}
	const warning = "match.listener names a listener no session came on: the rules that match it have not applied"
	for _, tc := range []struct {
		name      string
		rules     []limits.Rule
		listeners []string // of the sessions, in turn
		warnings  int
		noName    int // warnings that rules per listener counted nothing
	}{
		{"hostname only", []limits.Rule{port25}, []string{"mx.example.test"}, 1, 0},
		{"named after a while", []limits.Rule{port25}, []string{"mx.example.test", "smtpd"}, 0, 0},
		{"no names at all", []limits.Rule{perListener}, []string{""}, 0, 1},
		{"names come", []limits.Rule{perListener}, []string{"", "mx.example.test"}, 0, 0},
		{"no rule asks", nil, []string{"mx.example.test"}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newEnv(t, setup{Rules: tc.rules})
			for i := range 300 {
				v.openOn(fmt.Sprintf("192.0.2.%d", i%250+1), tc.listeners[i%len(tc.listeners)])
			}
			if got := v.logs.FilterMessage(warning).Len(); got != tc.warnings {
				t.Errorf("%d warnings of an unseen listener, want %d", got, tc.warnings)
			}
			if got := v.logs.FilterMessageSnippet("no session had a listener name").Len(); got != tc.noName {
				t.Errorf("%d warnings of no listener name, want %d", got, tc.noName)
			}
			for _, l := range v.logs.FilterMessage(warning).All() {
				ctx := l.ContextMap()
				if ctx["listener"] != "smtpd" || fmt.Sprint(ctx["seen"]) != "[mx.example.test]" || fmt.Sprint(ctx["rules"]) != "[port25]" {
					t.Errorf("warning %v; want listener smtpd, rules [port25], seen [mx.example.test]", ctx)
				}
			}
		})
	}
}
