package milter_test

// How the session writes auth's answers, through the milter protocol:
// refusals at MAIL FROM, Authentication-Results and Received-SPF inserted
// at the top of the header, X-Sluice-Check appended, and the global mode
// applied to what the headers say.

import (
	"fmt"
	"strings"
	"testing"

	"github.com/d--j/go-milter"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"sluice/test/dnstest"
)

func TestAuthHeadersAndModes(t *testing.T) {
	dnsSrv := dnstest.Start(t, dnstest.NewZone().MustAddText(
		`spf-fail.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`,
		`9.100.51.198.zen.example. 300 IN A 127.0.0.2`,
	))
	const client, sender = "198.51.100.9", "alice@spf-fail.example"
	for _, tc := range []struct {
		name, top, spf, dnsbl string
		refused               string   // the MAIL FROM reply wanted; "" continue
		checks                []string // the X-Sluice-Check values wanted (check order), by prefix
	}{
		// The strictest refusal answers; of equals, the first in check
		// order: the client checks come before SPF.
		{"enforce", "", "", "", "550 5.7.1 Service unavailable; client host [198.51.100.9] blocked using zen.example", nil},
		{"enforce spf", "", "", `mode = "dry-run"`, "550 5.7.23 SPF fail: [198.51.100.9]", nil},
		{"own modes", "", `mode = "tag"`, `mode = "tag"`, "", []string{
			"dnsbl:zen.example=listed action=reject mode=tag (", "spf=fail action=reject mode=tag (",
		}},
		{"global tag", `mode = "tag"`, "", "", "", []string{
			"dnsbl:zen.example=listed action=reject mode=tag (", "spf=fail action=reject mode=tag (",
		}},
		{"global dry-run", `mode = "dry-run"`, "", "", "", nil},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			sock := startSuiteMilter(t, fmt.Sprintf(`%s
authserv_id = %q

[dns]
servers = [%q]

[spf]
enabled = true
fail = "reject"
%s

[[checks.dnsbl]]
zone = "zen.example"
action = "reject"
%s
`, tc.top, suiteAuthservID, dnsSrv.Addr(), tc.spf, tc.dnsbl), zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
			refused, mods, err := milterMessage(sock, client, "client.example.net", sender, [][2]string{{"Subject", "hi"}})
			if err != nil {
				t.Fatal(err)
			}
			if tc.refused != "" {
				if refused == nil || !strings.HasPrefix(refused.SMTPReply, tc.refused) {
					t.Fatalf("MAIL FROM: %+v; want %q", refused, tc.refused)
				}
				return
			}
			if refused != nil {
				t.Fatalf("MAIL FROM refused: %s", refused.SMTPReply)
			}
			var checks []string
			inserted := 0
			for _, m := range mods {
				t.Logf("%v", m)
				switch {
				case m.Type == milter.ActionInsertHeader:
					want := [...]string{"Authentication-Results", "Received-SPF"}
					if inserted >= len(want) || m.HeaderName != want[inserted] || m.HeaderIndex != uint32(inserted) {
						t.Errorf("inserted %s at %d; want Authentication-Results at 0, then Received-SPF at 1", m.HeaderName, m.HeaderIndex)
					}
					inserted++
				case m.Type == milter.ActionAddHeader && m.HeaderName == "X-Sluice-Check":
					checks = append(checks, m.HeaderValue)
				default:
					t.Errorf("unexpected modification %v", m)
				}
			}
			if inserted != 2 {
				t.Errorf("%d fields inserted at the top, want 2", inserted)
			}
			if len(checks) != len(tc.checks) {
				t.Fatalf("X-Sluice-Check %q; want %d starting %q", checks, len(tc.checks), tc.checks)
			}
			for i := range checks {
				if !strings.HasPrefix(checks[i], tc.checks[i]) {
					t.Errorf("X-Sluice-Check %q; want it to start %q", checks[i], tc.checks[i])
				}
			}
		})
	}
}
