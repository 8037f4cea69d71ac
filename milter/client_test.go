package milter

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/d--j/go-milter"
)

// mta is the MTA side of a test session: go-milter's client, which sends
// the macros set in its bag at the stages sluice asks for them, as Postfix
// and Sendmail do. It fills in the steps of a message a test leaves out
// (DATA, the end of the header, the body), which the client insists on.
type mta struct {
	*milter.ClientSession
	bag  *milter.MacroBag
	step int // of the message: 0 before DATA, then afterData, afterHeader, afterBody
}

const (
	afterData = iota + 1
	afterHeader
	afterBody
)

// dialMTA opens a milter session on the unix socket sock, closed when the
// test ends. Without opts the client is a protocol 6 MTA offering every
// action and protocol option, as Postfix 3.7 and Sendmail 8.17 do.
func dialMTA(t testing.TB, sock string, opts ...milter.Option) *mta {
	t.Helper()
	s, err := newMTA(sock, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// newMTA is dialMTA for a caller that closes the session itself.
func newMTA(sock string, opts ...milter.Option) (*mta, error) {
	base := []milter.Option{
		milter.WithDialer(&net.Dialer{Timeout: time.Second}),
		milter.WithReadTimeout(30 * time.Second),
		milter.WithWriteTimeout(5 * time.Second),
	}
	bag := milter.NewMacroBag()
	s, err := milter.NewClient("unix", sock, append(base, opts...)...).Session(bag)
	if err != nil {
		return nil, err
	}
	return &mta{ClientSession: s, bag: bag}, nil
}

// set gives macros (name, value, ...) their values from now on.
func (m *mta) set(kv ...string) {
	for i := 0; i+1 < len(kv); i += 2 {
		m.bag.Set(kv[i], kv[i+1])
	}
}

func (m *mta) Mail(from string) (*milter.Action, error) {
	m.step = 0
	return m.ClientSession.Mail(from, "")
}

func (m *mta) Rcpt(rcpt string) (*milter.Action, error) {
	return m.ClientSession.Rcpt(rcpt, "")
}

// to brings the message to step, sending what comes before it.
func (m *mta) to(step int) error {
	for m.step < step {
		var err error
		switch m.step {
		case 0:
			_, err = m.DataStart()
		case afterData:
			_, err = m.ClientSession.HeaderEnd()
		case afterHeader:
			_, err = m.ClientSession.BodyChunk(nil)
		}
		if err != nil {
			return err
		}
		m.step++
	}
	return nil
}

// HeaderField sends a field whose value is as MTAs send it by default,
// without the space after the colon; it puts the space back, as Postfix
// and Sendmail do, when the milter asked for it (SMFIP_HDR_LEADSPC).
func (m *mta) HeaderField(name, value string) (*milter.Action, error) {
	if err := m.to(afterData); err != nil {
		return nil, err
	}
	if m.ClientSession.ProtocolOption(milter.OptHeaderLeadingSpace) {
		value = " " + value
	}
	return m.ClientSession.HeaderField(name, value, nil)
}

func (m *mta) HeaderEnd() (*milter.Action, error) {
	if err := m.to(afterData); err != nil {
		return nil, err
	}
	m.step = afterHeader
	return m.ClientSession.HeaderEnd()
}

func (m *mta) BodyChunk(chunk []byte) (*milter.Action, error) {
	if err := m.to(afterHeader); err != nil {
		return nil, err
	}
	m.step = afterBody
	return m.ClientSession.BodyChunk(chunk)
}

// End ends the message: the modifications and the answer.
func (m *mta) End() ([]milter.ModifyAction, *milter.Action, error) {
	if err := m.to(afterBody); err != nil {
		return nil, nil, err
	}
	m.step = 0
	return m.ClientSession.End()
}

// Abort ends the transaction, as Postfix does after every one.
func (m *mta) Abort() error {
	m.step = 0
	return m.ClientSession.Abort(nil)
}

// replyText is the text of a refusal after its code ("4.7.1 ...").
func replyText(act *milter.Action) string {
	_, text, _ := strings.Cut(act.SMTPReply, " ")
	return text
}

// refused reports whether act refuses with an SMTP reply.
func refused(act *milter.Action) bool { return act.Type == milter.ActionRejectWithCode }

// passed reports whether act lets the message through at step: continue,
// or accept at its end (go-milter's answer to sluice's continue there).
func passed(step string, act *milter.Action) bool {
	return act.Type == milter.ActionContinue || step == "end of message" && act.Type == milter.ActionAccept
}
