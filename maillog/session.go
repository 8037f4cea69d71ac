package maillog

import "net/netip"

// Session is one client's session as milters saw it: from its connection
// to its end, or to an XCLIENT that handed the connection to another
// client (Postfix then closes the milter session and opens a new one).
type Session struct {
	MTA        MTA
	Start, End int64 // Unix nanoseconds
	ClientIP   netip.Addr
	ClientName string
	Listener   string
	// Helos is how many HELO/EHLO commands milters saw; Helo the name,
	// when a line logged it.
	Helos    int
	Helo     string
	SASLUser string
	Messages []*Message
	// Partial: the log does not hold the whole session (its connection
	// or its end is missing: a rotated log, a session cut by the
	// session timeout).
	Partial bool

	startSeq, endSeq uint64 // the lines of its start and end
}

// Message is one mail transaction.
type Message struct {
	QueueID string
	// Time is when MAIL FROM was given, as near as the log tells (the
	// first line of the transaction); DataTime the end of DATA.
	Time, DataTime int64
	Sender         string
	SenderKnown    bool
	Rcpts          []Rcpt
	Size           int64 // as the MTA logged it: with the Received: field it adds
	Nrcpt          int   // recipients the MTA accepted, when it logged it; -1 if not
	// MailSeen: milters saw MAIL FROM (the MTA did not refuse it first).
	MailSeen bool
	// Data: the message reached the end of DATA and milters saw it.
	Data bool
	// Accepted: the MTA took the message (queued, held or discarded).
	Accepted bool
	// Partial: lines of the transaction are missing (its sender, its
	// recipients, its end).
	Partial bool

	seq, dataSeq uint64 // the lines of Time and DataTime
	queued       bool   // the MTA logged its sender, size and recipient count
	final        bool   // nothing more is to come
	removed      bool   // Postfix's qmgr logged it gone
	hasRcpts     map[string]uint8
}

// Rcpt is one recipient given in RCPT TO.
type Rcpt struct {
	Addr string
	Time int64
	// Seen: milters saw the RCPT (the MTA did not refuse it first).
	Seen bool
	seq  uint64
}

// addRcpt records a recipient once as seen by milters and once as
// refused by the MTA: a delivery retried, or a line logged twice, is the
// same RCPT.
func (m *Message) addRcpt(addr string, t int64, seq uint64, seen bool) {
	flag := rcptRefused
	if seen {
		flag = rcptSeen
	}
	if m.hasRcpts == nil {
		m.hasRcpts = make(map[string]uint8, 2)
	}
	if m.hasRcpts[addr]&flag != 0 {
		return
	}
	m.hasRcpts[addr] |= flag
	m.Rcpts = append(m.Rcpts, Rcpt{Addr: addr, Time: t, Seen: seen, seq: seq})
}

const (
	rcptSeen    uint8 = 1
	rcptRefused uint8 = 2
)

// accepted is how many recipients milters saw.
func (m *Message) accepted() int {
	n := 0
	for _, r := range m.Rcpts {
		if r.Seen {
			n++
		}
	}
	return n
}

// StepKind is one call a front end makes on the engine's session.
type StepKind uint8

const (
	StepOpen  StepKind = iota // open the session and ask CONNECT
	StepHelo                  // HELO/EHLO
	StepMail                  // MAIL FROM: Message
	StepRcpt                  // RCPT TO: Message.Rcpts[Rcpt]
	StepData                  // end of DATA: Message
	StepEnd                   // the transaction is over: Message, accepted or not
	StepClose                 // the session is over
)

var stepNames = [...]string{"open", "helo", "mail", "rcpt", "data", "end", "close"}

func (k StepKind) String() string {
	if int(k) < len(stepNames) {
		return stepNames[k]
	}
	return "step?"
}

// Step is one thing that happened in a session, at its time.
type Step struct {
	Time    int64
	Seq     uint64 // the log line it comes from: the order within one time
	Kind    StepKind
	Session *Session
	Message *Message
	Rcpt    int
}

// steps lists the session's steps in the order milters saw them. Times
// never go back within a session.
func (s *Session) steps() []Step {
	n := 2 + s.Helos
	for _, m := range s.Messages {
		n += 3 + len(m.Rcpts)
	}
	out := make([]Step, 0, n)
	t, seq := s.Start, s.startSeq
	add := func(at int64, line uint64, k StepKind, m *Message, rcpt int) {
		t, seq = max(t, at), max(seq, line)
		out = append(out, Step{Time: t, Seq: seq, Kind: k, Session: s, Message: m, Rcpt: rcpt})
	}
	add(s.Start, s.startSeq, StepOpen, nil, 0)
	for range s.Helos {
		add(s.Start, s.startSeq, StepHelo, nil, 0)
	}
	for _, m := range s.Messages {
		if !m.MailSeen {
			continue
		}
		add(m.Time, m.seq, StepMail, m, 0)
		for i, r := range m.Rcpts {
			if r.Seen {
				add(r.Time, r.seq, StepRcpt, m, i)
			}
		}
		end, endSeq := m.Time, m.seq
		if m.Data {
			add(m.DataTime, m.dataSeq, StepData, m, 0)
			end, endSeq = m.DataTime, m.dataSeq
		}
		add(end, endSeq, StepEnd, m, 0)
	}
	add(s.End, s.endSeq, StepClose, nil, 0)
	return out
}
