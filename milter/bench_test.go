package milter

import (
	"net"
	"testing"

	"github.com/emersion/go-milter"
	"go.uber.org/zap"

	"sluice/limits"
)

// BenchmarkMailFrom is one message's MAIL FROM and Abort as go-milter hands
// them to a session: the translation and the engine's stage, without the
// socket. The built-in policy's message rules, never crossed.
func BenchmarkMailFrom(b *testing.B) {
	eng := testEngine(b, setup{Accept: true, Rules: []limits.Rule{
		{Name: "msgs-per-ip", Count: "messages", Per: "client_ip", Rate: []any{"1000000000/1s", "1000000000/1d"}},
		{Name: "msgs-per-sender", Count: "messages", Per: "sender", Rate: []any{"1000000000/1s", "1000000000/1d"}},
	}}, zap.NewNop())
	srv := NewServer(Config{}, eng, zap.NewNop())
	s := newSession(srv, eng)
	m := &milter.Modifier{Macros: map[string]string{"{daemon_name}": "smtpd", "i": ""}}
	if resp, _ := s.Connect("unknown", "tcp4", 25, net.ParseIP("192.0.2.25"), m); resp != milter.RespContinue {
		b.Fatalf("connect: %v", resp)
	}
	b.ReportAllocs()
	for b.Loop() {
		if resp, _ := s.MailFrom("Alice.Example+news@Example.ORG", m); resp != milter.RespAccept {
			b.Fatalf("mail: %v", resp)
		}
		s.Abort(m)
	}
}
