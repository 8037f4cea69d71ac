package milter

import (
	"testing"

	"github.com/d--j/go-milter"

	"sluice/auth"
	"sluice/auth/dkim"
	"sluice/auth/dmarc"
	"sluice/engine/enginetest"
	"sluice/limits"
	"sluice/policy"
)

// A policy without DKIM and DMARC negotiates exactly the events it did
// before they existed — no header or body event on their account — and
// one with them asks for the header and the body.
func TestMessageChecksNegotiation(t *testing.T) {
	base := milter.OptNoUnknown | milter.OptNoData | milter.OptNoEOH | milter.OptNoHeaderReply | milter.OptNoBodyReply
	limitsOnly := []limits.Rule{
		{Name: "conns", Count: "concurrent", Per: "client_ip", Max: 20},
		{Name: "msgs", Count: "messages", Per: "client_ip", Rate: "60/1m"},
		{Name: "senders", Count: "messages", Per: "sender", Rate: "30/1m"},
	}
	ac := auth.Config{AuthservID: "mx.example"}
	ac.Defaults()
	checker, err := auth.New(&ac, nil, auth.WithResolver(nil))
	if err != nil {
		t.Fatal(err)
	}
	dc := dkim.Config{Enabled: true}
	dc.Defaults()
	verifier, err := dkim.New(&dc, nil, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	mc := dmarc.Config{Enabled: true}
	mc.Defaults()
	evaluator, err := dmarc.New(&mc, nil, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		setup    enginetest.Setup
		protocol milter.OptProtocol
	}{
		// The flags as they were negotiated before DKIM and DMARC.
		{"limits at connect and MAIL FROM", enginetest.Setup{Rules: limitsOnly, Accept: true},
			base | milter.OptNoBody | milter.OptNoRcptTo | milter.OptNoHelo | milter.OptNoHeaders},
		{"a tag rule", enginetest.Setup{Rules: []limits.Rule{{Name: "t", Count: "messages", Per: "sender", Rate: "1/1h", Action: policy.MustAction("tag")}}},
			base | milter.OptNoBody | milter.OptNoRcptTo | milter.OptNoHelo},
		{"a bytes rule", enginetest.Setup{Rules: []limits.Rule{{Name: "b", Count: "bytes", Per: "sender", Rate: "1MB/1h"}}},
			base | milter.OptNoRcptTo | milter.OptNoHelo},
		// With them: the header and the body, DKIM's header values as
		// written (the space after the colon kept).
		{"DKIM", enginetest.Setup{Rules: limitsOnly, Auth: checker, DKIM: verifier, Accept: true},
			base | milter.OptNoRcptTo | milter.OptNoHelo | milter.OptHeaderLeadingSpace},
		{"DKIM and DMARC", enginetest.Setup{Rules: limitsOnly, Auth: checker, DKIM: verifier, DMARC: evaluator, Accept: true},
			base | milter.OptNoRcptTo | milter.OptNoHelo | milter.OptHeaderLeadingSpace},
		{"DMARC alone reads the header, not the body", enginetest.Setup{Rules: limitsOnly, Auth: checker, DMARC: evaluator},
			base | milter.OptNoRcptTo | milter.OptNoHelo | milter.OptNoBody},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eng, _ := enginetest.New(t, tc.setup)
			n := eng.Needs()
			// Which answers the MTA waits for is TestNegotiation's.
			answers := milter.OptNoConnReply | milter.OptNoHeloReply | milter.OptNoMailReply | milter.OptNoRcptReply
			if protocol := negotiate(n).protocol &^ answers; protocol != tc.protocol {
				t.Errorf("protocol %v, want %v (needs %+v)", protocol, tc.protocol, n)
			}
			if tc.setup.DKIM == nil && tc.setup.DMARC == nil {
				return
			}
			if n.AcceptAtMail || !n.Header || !n.Edits || !n.SASLUser || n.Body != (tc.setup.DKIM != nil) {
				t.Errorf("needs %+v", n)
			}
			if d, m := eng.MessageChecks(); d != (tc.setup.DKIM != nil) || m != (tc.setup.DMARC != nil) {
				t.Errorf("MessageChecks %v %v", d, m)
			}
		})
	}
}
