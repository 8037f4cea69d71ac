package maillog

import (
	"container/heap"
	"time"

	"sluice/smtp"
)

// Stats counts what a log held.
type Stats struct {
	Lines   int64 // every line read
	Skipped int64 // lines that could not be read: garbled, or malformed mail lines
	Ignored int64 // lines of no use here: other programs, other messages
	// Late are lines of a transaction already replayed (a message
	// released from hold days later, a delivery after the session
	// timeout).
	Late int64

	Sessions        int64 // milter sessions rebuilt
	PartialSessions int64
	Messages        int64 // transactions whose MAIL FROM milters saw
	Partial         int64 // transactions with lines missing
	// MTARefused counts the commands the MTA refused by its own checks,
	// by stage; MilterRefused those a milter refused.
	MTARefused    [smtp.Data + 1]int64
	MilterRefused [smtp.Data + 1]int64
	Held          int64 // messages held (by the MTA's checks or a milter)
	Discarded     int64
	// Unseen are MAIL commands the MTA counted (Postfix's disconnect
	// line) of which no other line tells: a transaction ended by RSET
	// before any recipient.
	Unseen int64

	First, Last int64 // the time of the first and the last line read
}

// MTARefusedTotal is every command the MTA refused.
func (s *Stats) MTARefusedTotal() int64 {
	var n int64
	for _, v := range s.MTARefused {
		n += v
	}
	return n
}

// connKey names one SMTP server process's session: Postfix's smtpd and
// Sendmail's session processes serve one client at a time.
type connKey struct {
	host string
	pid  int
}

// queueKey names one message.
type queueKey struct {
	host string
	qid  string
}

// conn is one SMTP connection: its milter sessions (more than one after
// XCLIENT), and what it still waits for.
type conn struct {
	key      connKey
	mta      MTA
	sessions []*Session
	start    int64
	startSeq uint64
	last     int64 // the time of the last line that touched it
	lastSeq  uint64
	// own is the time of the last line of its server process (not of
	// its messages' delivery): where its session ends.
	own    int64
	ownSeq uint64
	closed bool   // its end was logged
	ready  bool   // handed to the schedule
	seq    uint64 // the order conns began in, which breaks ties of time
	// The command counts of Postfix's disconnect line; -1: not logged.
	helos, xclients, mails, datas int
	// cur is the transaction in progress: the NOQUEUE refusals and queue
	// ids of one MAIL FROM.
	cur *Message

	prev, next *conn // in the idle list, least recently touched first
}

func (c *conn) session() *Session { return c.sessions[len(c.sessions)-1] }

// Rebuilder turns events into sessions and hands their steps on in time
// order. A session's steps are handed on once the session is over and
// every one of its messages is complete (or given up on after the
// session timeout), and only when no session still open began earlier:
// the steps of all sessions come out interleaved as they happened.
type Rebuilder struct {
	// Timeout closes a session no line touched for this long, in log
	// time (its transactions count as partial).
	Timeout time.Duration
	// Listeners maps a Postfix service ("smtpd", "submission") or a
	// Sendmail daemon name ("MTA") to the listener name milters were
	// given; a name not in it is used as it is.
	Listeners map[string]string
	// Emit is handed each step, in time order.
	Emit func(*Step)

	Stats Stats

	conns map[connKey]*conn
	queue map[queueKey]*Message
	owner map[*Message]*conn
	// byStart holds conns in the order they began, for the watermark.
	byStart []*conn
	idle    struct{ head, tail *conn }
	sched   schedule
	now     int64
	swept   int64
	seq     uint64
	line    uint64 // lines added: the order of events within a second
	open    int
}

// NewRebuilder makes a Rebuilder that hands steps to emit.
func NewRebuilder(timeout time.Duration, emit func(*Step)) *Rebuilder {
	return &Rebuilder{
		Timeout: timeout,
		Emit:    emit,
		conns:   make(map[connKey]*conn),
		queue:   make(map[queueKey]*Message),
		owner:   make(map[*Message]*conn),
	}
}

func (r *Rebuilder) listener(name string) string {
	if l, ok := r.Listeners[name]; ok {
		return l
	}
	return name
}

// Add takes one event, in log order.
func (r *Rebuilder) Add(e *Event) {
	r.line++
	if e.Time > r.now {
		r.now = e.Time
	}
	if r.Stats.First == 0 || e.Time < r.Stats.First {
		r.Stats.First = e.Time
	}
	r.Stats.Last = max(r.Stats.Last, e.Time)
	if e.Kind == Ignored {
		r.Stats.Ignored++
		return
	}
	r.count(e)
	switch e.MTA {
	case Postfix:
		r.postfix(e)
	case Sendmail:
		r.sendmail(e)
	}
	if r.now-r.swept >= int64(time.Second) {
		r.swept = r.now
		r.expire(r.now - int64(r.Timeout))
		r.release()
	}
}

// count keeps the refusal statistics, which need no session.
func (r *Rebuilder) count(e *Event) {
	if e.Kind != Refused {
		return
	}
	switch e.Action {
	case smtp.ActionHold:
		r.Stats.Held++
	case actionDiscard:
		r.Stats.Discarded++
	case smtp.ActionTempfail, smtp.ActionReject, smtp.ActionDisconnect:
		if e.By == ByMilter {
			r.Stats.MilterRefused[e.Stage]++
		} else {
			r.Stats.MTARefused[e.Stage]++
		}
	}
}

// Flush ends every session still open, as the end of the log does, and
// hands on every step left.
func (r *Rebuilder) Flush() {
	r.expire(r.now + 1)
	r.release()
	r.sched.run(r.now+1, 0, r.Emit)
}

// Open is how many connections are still open or waiting for lines.
func (r *Rebuilder) Open() int { return r.open }

// newConn starts a connection at time t.
func (r *Rebuilder) newConn(k connKey, mta MTA, t int64, closed *conn) *conn {
	if closed != nil {
		r.end(closed, true)
	}
	r.seq++
	c := &conn{key: k, mta: mta, start: t, startSeq: r.line, last: t, own: t, ownSeq: r.line, seq: r.seq, helos: -1, xclients: -1, mails: -1, datas: -1}
	r.conns[k] = c
	r.open++
	r.byStart = append(r.byStart, c)
	r.touch(c, t)
	return c
}

func (r *Rebuilder) newSession(c *conn, e *Event, t int64, seq uint64) *Session {
	s := &Session{MTA: c.mta, Start: t, End: t, startSeq: seq, endSeq: seq, Listener: r.listener(e.Listener)}
	if e.HasClient {
		s.ClientIP, s.ClientName = e.ClientIP, e.ClientName
	}
	c.sessions = append(c.sessions, s)
	c.cur = nil
	return s
}

// seen marks a line of c's own server process at t: the session lasts
// at least until then.
func (r *Rebuilder) seen(c *conn, t int64) {
	c.own, c.ownSeq = max(c.own, t), r.line
	r.touch(c, t)
}

// touch marks c as seen at t: it moves to the end of the idle list.
func (r *Rebuilder) touch(c *conn, t int64) {
	c.last = max(c.last, t)
	c.lastSeq = r.line
	if r.idle.tail == c {
		return
	}
	r.unlink(c)
	c.prev = r.idle.tail
	if r.idle.tail != nil {
		r.idle.tail.next = c
	} else {
		r.idle.head = c
	}
	r.idle.tail = c
}

func (r *Rebuilder) unlink(c *conn) {
	if c.prev != nil {
		c.prev.next = c.next
	} else if r.idle.head == c {
		r.idle.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else if r.idle.tail == c {
		r.idle.tail = c.prev
	}
	c.prev, c.next = nil, nil
}

// postfix places one Postfix event.
func (r *Rebuilder) postfix(e *Event) {
	k := connKey{e.Host, e.PID}
	switch e.Kind {
	case Connect:
		c := r.newConn(k, Postfix, e.Time, r.conns[k])
		r.newSession(c, e, e.Time, r.line)
		return
	case Disconnect:
		c := r.conns[k]
		if c == nil {
			// The log began inside this session.
			c = r.newConn(k, Postfix, e.Time, nil)
			r.newSession(c, e, e.Time, r.line).Partial = true
		}
		r.seen(c, e.Time)
		r.switchClient(c, e)
		c.helos, c.xclients, c.mails, c.datas = e.Helos, e.XClients, e.Mails, e.Datas
		r.close(c)
		return
	case Client, Refused:
		if isSmtpd(e) {
			r.smtpdTransaction(k, e)
			return
		}
	}
	r.queueEvent(e)
}

func isSmtpd(e *Event) bool {
	d, _, _ := postfixDaemon(e.Program)
	return d == "smtpd"
}

// smtpdTransaction places a line smtpd logged about a transaction: a
// queue id given, a command refused.
func (r *Rebuilder) smtpdTransaction(k connKey, e *Event) {
	c := r.conns[k]
	if c == nil {
		c = r.newConn(k, Postfix, e.Time, nil)
		r.newSession(c, e, e.Time, r.line).Partial = true
	}
	r.seen(c, e.Time)
	s := r.switchClient(c, e)
	if e.Kind == Refused && (e.Stage == smtp.Connect || e.Stage == smtp.Helo) {
		if e.Helo != "" {
			s.Helo = e.Helo
		}
		return
	}
	var m *Message
	if e.QueueID != "" {
		m = r.queue[queueKey{e.Host, e.QueueID}]
	}
	if m == nil {
		m = c.cur
		// A NOQUEUE refusal belongs to the transaction in progress when
		// that has no queue id either, names the same sender and not yet
		// this recipient. A queue id starts a transaction: one that began
		// with NOQUEUE refusals is joined to it at the end, when
		// Postfix's count of MAIL commands says so.
		if m == nil || m.QueueID != "" || e.QueueID != "" || !sameTransaction(m, e) {
			m = &Message{Time: e.Time, seq: r.line, Nrcpt: -1}
			s.Messages = append(s.Messages, m)
			c.cur = m
		}
		if e.QueueID != "" {
			m.QueueID = e.QueueID
			r.queue[queueKey{e.Host, e.QueueID}] = m
			r.owner[m] = c
		}
	}
	if e.Helo != "" {
		s.Helo = e.Helo
	}
	switch e.Kind {
	case Client:
		m.MailSeen = true
		if e.SASLUser != "" {
			s.SASLUser = e.SASLUser
		}
	case Refused:
		r.refuse(m, e)
	}
}

// sameTransaction reports whether a NOQUEUE refusal continues m.
func sameTransaction(m *Message, e *Event) bool {
	if !m.SenderKnown || !e.HasSender || m.Sender != e.Sender || e.Stage != smtp.Rcpt {
		return false
	}
	for _, a := range e.Rcpts {
		if m.hasRcpts[a] != 0 {
			return false
		}
	}
	return true
}

// refuse records a refusal in its transaction.
func (r *Rebuilder) refuse(m *Message, e *Event) {
	if e.HasSender && !m.SenderKnown {
		m.Sender, m.SenderKnown = e.Sender, true
	}
	seen := e.By == ByMilter
	switch e.Stage {
	case smtp.Mail:
		if seen || e.Action == smtp.ActionHold || e.Action == actionDiscard {
			m.MailSeen = true
		}
	case smtp.Rcpt:
		// The MTA's own recipient checks come before milters: MAIL FROM
		// was given and passed.
		m.MailSeen = true
		for _, a := range e.Rcpts {
			m.addRcpt(a, e.Time, r.line, seen || e.Action == smtp.ActionHold || e.Action == actionDiscard)
		}
	case smtp.Data:
		m.MailSeen = true
		if e.By == ByMilter || e.Action == smtp.ActionHold || e.Action == actionDiscard {
			m.Data = true
			m.DataTime, m.dataSeq = e.Time, r.line
		}
		if e.Action == smtp.ActionHold || e.Action == actionDiscard {
			m.Accepted = true
			for _, a := range e.Rcpts {
				m.addRcpt(a, e.Time, r.line, true)
			}
		}
		m.final = true
	}
}

// switchClient follows an XCLIENT: a line naming another client than the
// session's starts a new milter session for it. Postfix does not log the
// XCLIENT command itself; a proxy or a test sends it right after the
// greeting, so a session that had no transaction yet is taken to have
// ended as it began, and the new client's to begin then.
func (r *Rebuilder) switchClient(c *conn, e *Event) *Session {
	s := c.session()
	if !e.HasClient || c.mta != Postfix || e.ClientIP == s.ClientIP && e.ClientName == s.ClientName {
		return s
	}
	if !s.ClientIP.IsValid() && s.ClientName == "" {
		s.ClientIP, s.ClientName = e.ClientIP, e.ClientName
		return s
	}
	at, seq := e.Time, r.line
	if len(s.Messages) == 0 {
		at, seq = s.Start, s.startSeq
	}
	s.End, s.endSeq = at, seq
	return r.newSession(c, e, at, seq)
}

// queueEvent places a line about a queued message: cleanup, qmgr and the
// delivery agents.
func (r *Rebuilder) queueEvent(e *Event) {
	if e.QueueID == "" {
		return
	}
	m := r.queue[queueKey{e.Host, e.QueueID}]
	if m == nil {
		switch e.Kind {
		case Data, Queued, Delivery, Refused:
			// Mail that came not through smtpd (pickup, bounces), or a
			// transaction already replayed.
			r.Stats.Late++
		}
		return
	}
	c := r.owner[m]
	r.touch(c, e.Time)
	switch e.Kind {
	case Data:
		m.MailSeen, m.Data, m.DataTime, m.dataSeq = true, true, e.Time, r.line
	case Queued:
		m.MailSeen, m.Data, m.Accepted, m.queued = true, true, true, true
		if m.DataTime == 0 {
			m.DataTime, m.dataSeq = e.Time, r.line
		}
		m.Sender, m.SenderKnown = e.Sender, true
		m.Size, m.Nrcpt = e.Size, e.Nrcpt
	case Delivery:
		for _, a := range e.Rcpts {
			m.addRcpt(a, m.Time, m.seq, true)
		}
	case Removed:
		// Every delivery is logged before this: recipients fewer than
		// nrcpt were expanded by an alias (orig_to), not lost.
		m.final, m.removed = true, true
	case Refused:
		r.refuse(m, e)
	}
	if m.complete() {
		m.final = true
	}
	if c.closed {
		r.end(c, false)
	}
}

// close marks the end of c's session: its process is free for the next,
// and c waits only for the lines of its messages.
func (r *Rebuilder) close(c *conn) {
	c.closed = true
	if r.conns[c.key] == c {
		delete(r.conns, c.key)
	}
	r.end(c, false)
}

// complete reports whether every recipient the MTA accepted is known.
func (m *Message) complete() bool {
	return m.final || m.queued && m.Nrcpt >= 0 && m.accepted() >= m.Nrcpt
}

// sendmail places one Sendmail event. A Sendmail session is one process:
// its lines carry its pid, and nothing marks its end but "did not issue
// MAIL" or silence.
func (r *Rebuilder) sendmail(e *Event) {
	k := connKey{e.Host, e.PID}
	if e.Kind == Delivery {
		r.queueEvent(e)
		return
	}
	c := r.conns[k]
	if c != nil && e.HasClient {
		if s := c.session(); s.ClientIP.IsValid() && s.ClientIP != e.ClientIP {
			// The pid was used again by a new session.
			c = nil
		}
	}
	if c == nil {
		c = r.newConn(k, Sendmail, e.Time, r.conns[k])
		r.newSession(c, e, e.Time, r.line)
	}
	r.seen(c, e.Time)
	s := c.session()
	if e.HasClient && !s.ClientIP.IsValid() {
		s.ClientIP, s.ClientName = e.ClientIP, e.ClientName
	}
	if e.Listener != "" && s.Listener == "" {
		s.Listener = r.listener(e.Listener)
	}
	switch e.Kind {
	case Auth:
		s.SASLUser = e.SASLUser
		return
	case NoMail, Disconnect:
		r.close(c)
		return
	case Refused:
		if e.Stage == smtp.Connect || e.Stage == smtp.Helo {
			return
		}
	}
	if e.QueueID == "" {
		return
	}
	m := r.queue[queueKey{e.Host, e.QueueID}]
	if m == nil {
		m = &Message{QueueID: e.QueueID, Time: e.Time, seq: r.line, Nrcpt: -1, MailSeen: true}
		s.Messages = append(s.Messages, m)
		r.queue[queueKey{e.Host, e.QueueID}] = m
		r.owner[m] = c
	}
	switch e.Kind {
	case Queued:
		// Logged when the transaction ends: with the message, or with
		// nrcpts=0 and size=0 when it ended without one.
		m.Sender, m.SenderKnown = e.Sender, true
		m.Nrcpt = e.Nrcpt
		if e.Size > 0 && e.Nrcpt > 0 {
			m.Size, m.Data, m.DataTime, m.dataSeq, m.Accepted, m.queued = e.Size, true, e.Time, r.line, true, true
		} else {
			if e.Nrcpt > 0 {
				// Recipients accepted, then no message: their addresses
				// are in no line.
				m.Partial = true
			}
			m.final = true
		}
		if m.complete() {
			m.final = true
		}
	case Refused:
		if e.Stage == smtp.Mail && e.By == ByMTA {
			m.MailSeen = false
			m.final = true
		}
		r.refuse(m, e)
	}
}

// end closes c when everything it waits for is known, or at once when
// force is set (the session timed out, or a new one took its process).
func (r *Rebuilder) end(c *conn, force bool) {
	if c.ready {
		return
	}
	if !force {
		for _, s := range c.sessions {
			for _, m := range s.Messages {
				if !m.final && !r.abandoned(c, m) {
					return
				}
			}
		}
	}
	c.ready = true
	r.open--
	if r.conns[c.key] == c {
		delete(r.conns, c.key)
	}
	r.unlink(c)
	r.finish(c, force)
}

// abandoned reports whether a message of a closed connection will get no
// more lines: it never reached the end of DATA (Postfix logs the end of
// the session only after the last transaction's DATA was answered).
func (r *Rebuilder) abandoned(c *conn, m *Message) bool {
	return c.closed && c.mta == Postfix && !m.Data && !m.queued
}

// finish settles a connection's sessions and schedules their steps.
func (r *Rebuilder) finish(c *conn, cut bool) {
	for _, s := range c.sessions {
		for _, m := range s.Messages {
			if m.QueueID != "" {
				delete(r.queue, queueKey{c.key.host, m.QueueID})
			}
			delete(r.owner, m)
		}
	}
	r.mergeNoqueue(c)
	r.placeHelos(c)
	last := c.sessions[len(c.sessions)-1]
	last.End, last.endSeq = c.own, c.ownSeq
	if (cut || !c.closed) && c.mta == Postfix {
		last.Partial = true
	}
	for i, s := range c.sessions {
		if s.End < s.Start {
			s.End = s.Start
		}
		r.Stats.Sessions++
		if s.Partial {
			r.Stats.PartialSessions++
		}
		for _, m := range s.Messages {
			if !m.final && !r.abandoned(c, m) || m.MailSeen && !m.SenderKnown || m.queued && !m.removed && m.Nrcpt > m.accepted() {
				m.Partial = true
			}
			if m.MailSeen {
				r.Stats.Messages++
				if m.Partial {
					r.Stats.Partial++
				}
			}
			m.hasRcpts = nil
		}
		// An XCLIENT's new session opens after the old one closed.
		r.sched.add(s.steps(), c.seq<<8|uint64(min(i, 255)))
	}
}

// mergeNoqueue joins refusals logged as NOQUEUE to the transaction whose
// queue id came after them, when Postfix's count of MAIL commands says
// they were one (a refused recipient before the first accepted one).
func (r *Rebuilder) mergeNoqueue(c *conn) {
	if c.mails < 0 {
		return
	}
	n := 0
	for _, s := range c.sessions {
		for _, m := range s.Messages {
			if m.MailSeen {
				n++
			}
		}
	}
	for _, s := range c.sessions {
		for i := 0; n > c.mails && i+1 < len(s.Messages); i++ {
			a, b := s.Messages[i], s.Messages[i+1]
			if a.QueueID != "" || !a.MailSeen || !b.MailSeen || a.SenderKnown && b.SenderKnown && a.Sender != b.Sender {
				continue
			}
			for _, rc := range a.Rcpts {
				b.Rcpts = append([]Rcpt{rc}, b.Rcpts...)
			}
			if a.Time < b.Time || a.Time == b.Time && a.seq < b.seq {
				b.Time, b.seq = a.Time, a.seq
			}
			if !b.SenderKnown {
				b.Sender, b.SenderKnown = a.Sender, a.SenderKnown
			}
			s.Messages = append(s.Messages[:i], s.Messages[i+1:]...)
			n--
			i--
		}
	}
	if n < c.mails {
		r.Stats.Unseen += int64(c.mails - n)
	}
}

// placeHelos gives each milter session its HELO commands: after an
// XCLIENT the client must greet again to send mail; the rest were given
// before it.
func (r *Rebuilder) placeHelos(c *conn) {
	if c.mta == Sendmail || c.helos < 0 {
		// Not logged: a session that sent mail greeted once.
		for _, s := range c.sessions {
			if len(s.Messages) > 0 {
				s.Helos = 1
			}
		}
		return
	}
	left := c.helos
	for i := len(c.sessions) - 1; i > 0 && left > 0; i-- {
		if len(c.sessions[i].Messages) > 0 {
			c.sessions[i].Helos = 1
			left--
		}
	}
	c.sessions[0].Helos = left
}

// expire ends the connections no line touched since before.
func (r *Rebuilder) expire(before int64) {
	for c := r.idle.head; c != nil && c.last < before; c = r.idle.head {
		r.end(c, true)
	}
}

// release hands on every step that no open session can precede.
func (r *Rebuilder) release() {
	i := 0
	for i < len(r.byStart) && r.byStart[i].ready {
		r.byStart[i] = nil
		i++
	}
	r.byStart = r.byStart[i:]
	until, line := r.now, r.line+1
	if len(r.byStart) > 0 {
		until, line = r.byStart[0].start, r.byStart[0].startSeq
	}
	if len(r.byStart) == 0 && cap(r.byStart) > 1024 {
		r.byStart = nil
	}
	r.sched.run(until, line, r.Emit)
}

// schedule merges the steps of finished sessions in time order.
type schedule []*cursor

type cursor struct {
	steps []Step
	seq   uint64
}

func (s schedule) Len() int { return len(s) }
func (s schedule) Less(i, j int) bool {
	a, b := s[i], s[j]
	if a.steps[0].Time != b.steps[0].Time {
		return a.steps[0].Time < b.steps[0].Time
	}
	// Lines logged in the same second (or microsecond) keep their order.
	if a.steps[0].Seq != b.steps[0].Seq {
		return a.steps[0].Seq < b.steps[0].Seq
	}
	return a.seq < b.seq
}
func (s schedule) Swap(i, j int) { s[i], s[j] = s[j], s[i] }
func (s *schedule) Push(x any)   { *s = append(*s, x.(*cursor)) }
func (s *schedule) Pop() any {
	old := *s
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*s = old[:len(old)-1]
	return c
}

func (s *schedule) add(steps []Step, seq uint64) {
	if len(steps) > 0 {
		heap.Push(s, &cursor{steps: steps, seq: seq})
	}
}

// run hands on the steps before the line of number line at time until.
func (s *schedule) run(until int64, line uint64, emit func(*Step)) {
	for len(*s) > 0 {
		c := (*s)[0]
		st := &c.steps[0]
		if st.Time > until || st.Time == until && st.Seq >= line {
			return
		}
		emit(st)
		c.steps = c.steps[1:]
		if len(c.steps) == 0 {
			heap.Pop(s)
		} else {
			heap.Fix(s, 0)
		}
	}
}
