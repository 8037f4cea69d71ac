package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/d--j/go-milter"
)

// Config is one round of load.
type Config struct {
	Addr        string  `json:"addr"`
	Concurrency int     `json:"concurrency"`
	Sessions    int     `json:"sessions"`
	Messages    int     `json:"messages_per_session"`
	Rcpts       int     `json:"rcpts_per_message"`
	Clients     int     `json:"clients"`
	Senders     int     `json:"senders"`
	Recipients  int     `json:"recipients"`
	Headers     int     `json:"headers"`
	BodySize    int     `json:"body_bytes"`
	Rate        float64 `json:"rate"`
	Offset      int     `json:"offset"`
	// Duration, when set, ends the round after that long instead of after
	// Sessions sessions.
	Duration time.Duration `json:"duration_ns,omitempty"`
	// Churn, when set, moves to fresh client addresses and senders that
	// often, so that a long round keeps making new keys.
	Churn time.Duration `json:"churn_ns,omitempty"`
	// Interval, when set, is how often Run writes an Interval record.
	Interval time.Duration `json:"interval_ns,omitempty"`
	// Window, a multiple of Interval, is how often a record also carries
	// the p99s of the whole window.
	Window time.Duration `json:"window_ns,omitempty"`
	// Tag goes into each Interval record.
	Tag string `json:"tag,omitempty"`
}

// The stages timed, in protocol order. "message" is a whole transaction,
// MAIL to end of message.
var stageNames = []string{"negotiate", "connect", "helo", "mail", "rcpt", "header", "eoh", "body", "eom", "message"}

const (
	stNegotiate = iota
	stConnect
	stHelo
	stMail
	stRcpt
	stHeader
	stEOH
	stBody
	stEOM
	stMessage
	nStages
)

// Stage is the latency of one kind of command: from writing it to reading
// the milter's answer.
type Stage struct {
	N    int           `json:"n"`
	P50  time.Duration `json:"p50_ns"`
	P99  time.Duration `json:"p99_ns"`
	P999 time.Duration `json:"p999_ns"`
	Max  time.Duration `json:"max_ns"`
}

// Result is one round against one milter.
type Result struct {
	Sessions       int               `json:"sessions"`
	Messages       int               `json:"messages"`
	Elapsed        time.Duration     `json:"elapsed_ns"`
	SessionsPerSec float64           `json:"sessions_per_s"`
	MsgsPerSec     float64           `json:"messages_per_s"`
	Negotiated     string            `json:"negotiated"`
	Refused        map[string]int    `json:"refused,omitempty"`
	AcceptedAt     map[string]int    `json:"accepted_early,omitempty"`
	Errors         int               `json:"errors"`
	FirstError     string            `json:"first_error,omitempty"`
	CPUSeconds     float64           `json:"milter_cpu_s,omitempty"`
	CPUPerMsg      float64           `json:"milter_cpu_ms_per_message,omitempty"`
	SelfCPUPerMsg  float64           `json:"load_cpu_ms_per_message,omitempty"`
	Stages         map[string]*Stage `json:"stages"`
}

// worker is one goroutine's share of the round. Only the interval
// reporter reads it while it runs, under mu.
type worker struct {
	cfg    *Config
	client *milter.Client
	dial   *dialer
	pace   *pacer
	start  time.Time
	neg    string
	body   []byte

	mu         sync.Mutex
	lat        [nStages][]time.Duration
	refused    [nStages]int
	acceptedAt [nStages]int // messages the milter accepted before end of message
	sessions   int
	msgs       int
	errs       int
	firstEr    error
	seen       seen // what the interval reporter has taken
}

// postfixMacros are the macros Postfix 3.7 sends at each stage as the
// test MTAs configure it (test/mta: milter_*_macros), for a milter that
// asks for none of its own. A milter that asks for its own (protocol 6,
// SMFIF_SETSYMLIST) gets those instead, as from Postfix.
var postfixMacros = []struct {
	stage milter.MacroStage
	names []string
}{
	{milter.StageConnect, []string{"j", "{daemon_name}", "{daemon_addr}", "{daemon_port}", "v", "_", "{client_addr}", "{client_name}", "{client_ptr}"}},
	{milter.StageHelo, []string{"{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"}},
	{milter.StageMail, []string{"{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}", "{mail_host}", "{mail_mailer}", "{client_addr}", "{daemon_name}"}},
	{milter.StageRcpt, []string{"i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}", "{auth_authen}"}},
	{milter.StageEOH, []string{"i"}},
	{milter.StageEOM, []string{"i", "{auth_authen}", "{daemon_name}"}},
}

// newClient is a milter client that offers what Postfix 3.7 offers:
// protocol 6, every action and protocol option, and its macros.
func newClient(network, addr string, d *dialer) *milter.Client {
	opts := []milter.Option{
		milter.WithDialer(d),
		milter.WithReadTimeout(30 * time.Second),
		milter.WithWriteTimeout(30 * time.Second),
		milter.WithoutDefaultMacros(),
	}
	for _, m := range postfixMacros {
		opts = append(opts, milter.WithMacroRequest(m.stage, m.names))
	}
	return milter.NewClient(network, addr, opts...)
}

// Run drives one round against cfg.Addr. pid, when not 0, is the milter's
// process, whose CPU time is read before and after. With cfg.Interval,
// each interval's figures go to intervals as a line of JSON.
func Run(cfg Config, pid int, intervals io.Writer) (*Result, error) {
	network, addr, err := splitSpec(cfg.Addr)
	if err != nil {
		return nil, err
	}
	var next atomic.Int64
	p := &pacer{rate: cfg.Rate}
	workers := make([]*worker, cfg.Concurrency)
	expected := cfg.Sessions * max(cfg.Messages, 1)
	if cfg.Duration > 0 {
		// Room for what the round will send; a flat-out round grows it.
		expected = int(max(cfg.Rate, 1000) * cfg.Duration.Seconds())
	}
	perWorker := expected/cfg.Concurrency + 16
	for i := range workers {
		w := &worker{cfg: &cfg, pace: p, body: body(cfg.BodySize), dial: &dialer{d: net.Dialer{Timeout: 10 * time.Second}}}
		for st := range nStages {
			w.lat[st] = make([]time.Duration, 0, perWorker)
		}
		w.client = newClient(network, addr, w.dial)
		workers[i] = w
	}
	cpu0, err := procCPU(pid)
	if err != nil {
		return nil, err
	}
	self0 := selfCPU()
	start := time.Now()
	p.start = start
	var wg sync.WaitGroup
	for _, w := range workers {
		w.start = start
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1)) - 1
				if cfg.Duration > 0 && time.Since(start) >= cfg.Duration || cfg.Duration <= 0 && k >= cfg.Sessions {
					return
				}
				w.session(k)
			}
		}()
	}
	var rep *reporter
	if cfg.Interval > 0 && intervals != nil {
		rep = startReporter(intervals, workers, start, &cfg, pid)
	}
	wg.Wait()
	elapsed := time.Since(start)
	if rep != nil {
		if err := rep.stop(); err != nil {
			return nil, fmt.Errorf("interval records: %w", err)
		}
	}
	cpu1, err := procCPU(pid)
	if err != nil {
		return nil, err
	}
	self1 := selfCPU()

	r := &Result{Elapsed: elapsed, Stages: map[string]*Stage{}, Refused: map[string]int{}, AcceptedAt: map[string]int{}}
	var all [nStages][]time.Duration
	for _, w := range workers {
		r.Sessions += w.sessions
		r.Messages += w.msgs
		r.Errors += w.errs
		if w.firstEr != nil && r.FirstError == "" {
			r.FirstError = w.firstEr.Error()
		}
		if w.neg != "" {
			r.Negotiated = w.neg
		}
		for st := range nStages {
			all[st] = append(all[st], w.lat[st]...)
			if w.refused[st] > 0 {
				r.Refused[stageNames[st]] += w.refused[st]
			}
			if w.acceptedAt[st] > 0 {
				r.AcceptedAt[stageNames[st]] += w.acceptedAt[st]
			}
		}
	}
	for st := range nStages {
		r.Stages[stageNames[st]] = summarize(all[st])
	}
	r.SessionsPerSec = float64(r.Sessions) / elapsed.Seconds()
	r.MsgsPerSec = float64(r.Messages) / elapsed.Seconds()
	if pid != 0 && r.Messages > 0 {
		r.CPUSeconds = (cpu1 - cpu0).Seconds()
		r.CPUPerMsg = ms(cpu1-cpu0) / float64(r.Messages)
	}
	if r.Messages > 0 {
		r.SelfCPUPerMsg = ms(self1-self0) / float64(r.Messages)
	}
	return r, nil
}

// session runs the k-th session of the round.
func (w *worker) session(k int) {
	err := w.trySession(k, w.offset())
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sessions++
	if err != nil {
		w.errs++
		if w.firstEr == nil {
			w.firstEr = err
		}
	}
}

// offset is the first client and sender number for a session starting
// now: with Churn, each period's keys are new.
func (w *worker) offset() int {
	cfg := w.cfg
	if cfg.Churn <= 0 {
		return cfg.Offset
	}
	return cfg.Offset + int(time.Since(w.start)/cfg.Churn)*(cfg.Clients+cfg.Senders)
}

func (w *worker) trySession(k, offset int) error {
	cfg := w.cfg
	n := offset + k%cfg.Clients + 1
	ip := fmt.Sprintf("10.%d.%d.%d", n>>16&255, n>>8&255, n&255)
	host := fmt.Sprintf("host%d.client.test", n)
	// What the client sends of these is what the stage's list names.
	macros := milter.NewMacroBag()
	for _, kv := range [][2]string{
		{"j", "mx.example.test"}, {"{daemon_name}", "smtpd"}, {"{daemon_addr}", "127.0.0.1"}, {"{daemon_port}", "25"},
		{"v", "Postfix 3.7.11"}, {"_", host + " [" + ip + "]"}, {"{client_addr}", ip}, {"{client_name}", host},
		{"{client_ptr}", host}, {"{tls_version}", ""}, {"{cipher}", ""}, {"{cipher_bits}", ""}, {"{cert_subject}", ""},
		{"{cert_issuer}", ""}, {"{auth_type}", ""}, {"{auth_authen}", ""}, {"{auth_author}", ""}, {"{mail_host}", ""},
		{"{mail_mailer}", "smtp"}, {"{rcpt_host}", ""}, {"{rcpt_mailer}", "smtp"},
	} {
		macros.Set(kv[0], kv[1])
	}
	t0 := time.Now()
	w.dial.conn = nil
	s, err := w.client.Session(macros)
	if err != nil {
		if w.dial.conn != nil {
			w.dial.conn.Close()
		}
		return err
	}
	w.add(stNegotiate, time.Since(t0))
	// Postfix ends the milter session with QUIT.
	defer s.Close()
	if w.neg == "" {
		w.neg = negotiated(s)
	}

	act, err := w.timed(stConnect, func() (*milter.Action, error) {
		return s.Conn(host, milter.FamilyInet, uint16(1024+k%60000), ip)
	})
	if err != nil {
		return err
	}
	w.note(stConnect, act)
	if s.ProtocolOption(milter.OptNoHelo) {
		// Sends nothing, but the client must have seen HELO.
		_, err = s.Helo(host)
	} else {
		act, err = w.timed(stHelo, func() (*milter.Action, error) { return s.Helo(host) })
		if err == nil {
			w.note(stHelo, act)
		}
	}
	if err != nil {
		return err
	}
	for m := 0; m < cfg.Messages; m++ {
		if err := w.message(s, macros, k, m, offset); err != nil {
			return err
		}
	}
	return nil
}

// message sends one transaction as Postfix does, and the Abort that
// Postfix sends after every transaction, accepted or not.
func (w *worker) message(s *milter.ClientSession, macros *milter.MacroBag, k, m, offset int) error {
	cfg := w.cfg
	w.pace.wait()
	seq := k*cfg.Messages + m
	sender := fmt.Sprintf("user%d@sender%d.test", offset+seq%cfg.Senders, seq%97)
	qid := fmt.Sprintf("%X", 0x1000000+seq)
	start := time.Now()
	macros.Set("{mail_addr}", sender)
	// Postfix knows the queue id from the first recipient on; a milter
	// that asks for it at MAIL FROM gets none.
	macros.Set("i", "")
	abort := func() error { return s.Abort(nil) }
	act, err := w.timed(stMail, func() (*milter.Action, error) { return s.Mail(sender, "SIZE=1000") })
	if err != nil {
		return err
	}
	if act.Type == milter.ActionAccept {
		// The milter accepts the message here: like Postfix, leave it out
		// of the rest of the transaction.
		w.add(stMessage, time.Since(start))
		w.mu.Lock()
		w.msgs++
		w.acceptedAt[stMail]++
		w.mu.Unlock()
		return abort()
	}
	if w.note(stMail, act) {
		return abort()
	}
	macros.Set("i", qid)
	accepted := 0
	for r := 0; r < cfg.Rcpts; r++ {
		j := (seq*cfg.Rcpts + r) % cfg.Recipients
		rcpt := fmt.Sprintf("rcpt%d@dest%d.test", j, j%50)
		macros.Set("{rcpt_addr}", rcpt)
		if s.ProtocolOption(milter.OptNoRcptTo) {
			// Sends nothing, but the client must have seen a recipient.
			if _, err := s.Rcpt(rcpt, ""); err != nil {
				return err
			}
			accepted++
			continue
		}
		act, err := w.timed(stRcpt, func() (*milter.Action, error) { return s.Rcpt(rcpt, "") })
		if err != nil {
			return err
		}
		if !w.note(stRcpt, act) {
			accepted++
		}
	}
	if accepted == 0 {
		return abort()
	}
	// DATA: sent only to a milter that takes it.
	if act, err := s.DataStart(); err != nil {
		return err
	} else if act.Type != milter.ActionContinue {
		return abort()
	}
	if !s.ProtocolOption(milter.OptNoHeaders) {
		for h := 0; h < cfg.Headers; h++ {
			name, value := header(h, sender, qid)
			if s.ProtocolOption(milter.OptHeaderLeadingSpace) {
				value = " " + value // as an MTA sends it when asked to keep the space
			}
			act, err := w.timed(stHeader, func() (*milter.Action, error) { return s.HeaderField(name, value, nil) })
			if err != nil {
				return err
			}
			if w.note(stHeader, act) {
				return abort()
			}
		}
	}
	if s.ProtocolOption(milter.OptNoEOH) {
		_, err = s.HeaderEnd() // sends nothing
	} else {
		act, err = w.timed(stEOH, s.HeaderEnd)
		if err == nil && w.note(stEOH, act) {
			return abort()
		}
	}
	if err != nil {
		return err
	}
	if s.ProtocolOption(milter.OptNoBody) || len(w.body) == 0 {
		_, err = s.BodyChunk(nil) // sends nothing unless the milter takes the body
	} else {
		act, err = w.timed(stBody, func() (*milter.Action, error) { return s.BodyChunk(w.body) })
		if err == nil && w.note(stBody, act) {
			return abort()
		}
	}
	if err != nil {
		return err
	}
	act, err = w.timed(stEOM, func() (*milter.Action, error) {
		_, act, err := s.End()
		return act, err
	})
	if err != nil {
		return err
	}
	w.add(stMessage, time.Since(start))
	w.mu.Lock()
	if act.Type == milter.ActionContinue || act.Type == milter.ActionAccept {
		w.msgs++
	} else {
		w.refused[stEOM]++
	}
	w.mu.Unlock()
	return abort()
}

// note counts a refusal; it reports whether the action ends the
// transaction.
func (w *worker) note(st int, act *milter.Action) bool {
	if act.Type == milter.ActionContinue {
		return false
	}
	w.mu.Lock()
	w.refused[st]++
	w.mu.Unlock()
	return true
}

func (w *worker) timed(st int, f func() (*milter.Action, error)) (*milter.Action, error) {
	t := time.Now()
	act, err := f()
	w.add(st, time.Since(t))
	return act, err
}

func (w *worker) add(st int, d time.Duration) {
	w.mu.Lock()
	w.lat[st] = append(w.lat[st], d)
	w.mu.Unlock()
}

func header(i int, sender, qid string) (string, string) {
	switch i {
	case 0:
		return "Received", "from host.client.test (host.client.test [10.0.0.1])\n\tby mx.example.test (Postfix) with ESMTP id " + qid
	case 1:
		return "From", "<" + sender + ">"
	case 2:
		return "To", "<rcpt@dest.test>"
	case 3:
		return "Subject", "load test message " + qid
	case 4:
		return "Date", "Mon, 1 Jan 2024 00:00:00 +0000"
	case 5:
		return "Message-ID", "<" + qid + "@client.test>"
	}
	return "X-Load-" + strconv.Itoa(i), "value " + strconv.Itoa(i)
}

func body(n int) []byte {
	line := []byte("The quick brown fox jumps over the lazy dog 0123456789.\r\n")
	b := make([]byte, 0, n)
	for len(b) < n {
		b = append(b, line[:min(len(line), n-len(b))]...)
	}
	return b
}

// negotiated names the events the milter takes, each followed by "-"
// when the milter does not answer it (SMFIP_NR_*).
func negotiated(s *milter.ClientSession) string {
	var ev []string
	for _, e := range []struct {
		opt, noReply milter.OptProtocol
		name         string
	}{
		{milter.OptNoConnect, milter.OptNoConnReply, "connect"}, {milter.OptNoHelo, milter.OptNoHeloReply, "helo"},
		{milter.OptNoMailFrom, milter.OptNoMailReply, "mail"}, {milter.OptNoRcptTo, milter.OptNoRcptReply, "rcpt"},
		{milter.OptNoHeaders, milter.OptNoHeaderReply, "header"}, {milter.OptNoEOH, milter.OptNoEOHReply, "eoh"},
		{milter.OptNoBody, milter.OptNoBodyReply, "body"},
	} {
		if s.ProtocolOption(e.opt) {
			continue
		}
		if s.ProtocolOption(e.noReply) {
			e.name += "-"
		}
		ev = append(ev, e.name)
	}
	return strings.Join(append(ev, "eom"), ",")
}

func summarize(d []time.Duration) *Stage {
	if len(d) == 0 {
		return &Stage{}
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	at := func(q float64) time.Duration {
		i := int(q * float64(len(d)))
		return d[min(i, len(d)-1)]
	}
	return &Stage{N: len(d), P50: at(0.50), P99: at(0.99), P999: at(0.999), Max: d[len(d)-1]}
}

// pacer spaces message starts evenly at rate per second across workers.
type pacer struct {
	rate  float64
	start time.Time
	n     atomic.Int64
}

func (p *pacer) wait() {
	if p.rate <= 0 {
		return
	}
	i := p.n.Add(1) - 1
	at := p.start.Add(time.Duration(float64(i) / p.rate * float64(time.Second)))
	if d := time.Until(at); d > 0 {
		time.Sleep(d)
	}
}

// dialer gives go-milter's client a buffered reader (it reads each
// packet's length and body with separate calls, which would otherwise be
// two system calls per answer on the machine under test), and keeps the
// connection for its worker: go-milter's ClientSession keeps it private,
// and the worker writes QUIT itself. Session dials on the worker's own
// goroutine, so nothing here is shared.
type dialer struct {
	d    net.Dialer
	conn net.Conn
}

func (d *dialer) Dial(network, addr string) (net.Conn, error) {
	c, err := d.d.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	d.conn = &bufConn{Conn: c, r: bufio.NewReaderSize(c, 4096)}
	return d.conn, nil
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// procCPU returns the user+system CPU time a process has used.
func procCPU(pid int) (time.Duration, error) {
	if pid == 0 {
		return 0, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("milter CPU: %w", err)
	}
	// The command name may hold spaces; the fields after it do not.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("milter CPU: short /proc stat line")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	// Linux reports in clock ticks of 1/100 s (USER_HZ).
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func splitSpec(spec string) (network, addr string, err error) {
	kind, rest, ok := strings.Cut(spec, ":")
	switch {
	case ok && kind == "inet":
		return "tcp", rest, nil
	case ok && kind == "unix":
		return "unix", rest, nil
	}
	return "", "", fmt.Errorf("socket %q: want inet:host:port or unix:/path", spec)
}
