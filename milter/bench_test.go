package milter

import (
	"io"
	"testing"

	"github.com/d--j/go-milter"
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
	m := macroModifier{"{daemon_name}": "smtpd", "i": ""}
	if resp, _ := s.Connect("unknown", "tcp4", 25, "192.0.2.25", m); resp != milter.RespContinue {
		b.Fatalf("connect: %v", resp)
	}
	b.ReportAllocs()
	for b.Loop() {
		if resp, _ := s.MailFrom("Alice.Example+news@Example.ORG", "", m); resp != milter.RespAccept {
			b.Fatalf("mail: %v", resp)
		}
		s.Abort(m)
	}
}

// macroModifier is a Modifier that only has macros, as go-milter hands a
// session before the end of a message.
type macroModifier map[string]string

func (m macroModifier) Get(name string) string { return m[name] }

func (m macroModifier) GetEx(name string) (string, bool) {
	v, ok := m[name]
	return v, ok
}

func (macroModifier) Version() uint32                        { return 6 }
func (macroModifier) Protocol() milter.OptProtocol           { return 0 }
func (macroModifier) Actions() milter.OptAction              { return 0 }
func (macroModifier) MaxDataSize() milter.DataSize           { return milter.DataSize64K }
func (macroModifier) MilterId() uint64                       { return 0 }
func (macroModifier) AddRecipient(string, string) error      { return milter.ErrModificationNotAllowed }
func (macroModifier) DeleteRecipient(string) error           { return milter.ErrModificationNotAllowed }
func (macroModifier) ReplaceBodyRawChunk([]byte) error       { return milter.ErrModificationNotAllowed }
func (macroModifier) ReplaceBody(io.Reader) error            { return milter.ErrModificationNotAllowed }
func (macroModifier) Quarantine(string) error                { return milter.ErrModificationNotAllowed }
func (macroModifier) AddHeader(string, string) error         { return milter.ErrModificationNotAllowed }
func (macroModifier) ChangeHeader(int, string, string) error { return milter.ErrModificationNotAllowed }
func (macroModifier) InsertHeader(int, string, string) error { return milter.ErrModificationNotAllowed }
func (macroModifier) ChangeFrom(string, string) error        { return milter.ErrModificationNotAllowed }
func (macroModifier) Progress() error                        { return milter.ErrModificationNotAllowed }
