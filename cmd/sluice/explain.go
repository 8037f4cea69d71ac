package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"sluice/admin"
	"sluice/config"
	"sluice/engine"
	"sluice/limits"
	"sluice/limits/memstore"
	"sluice/policy"
	"sluice/smtp"
)

// explainCmd shows how a policy treats one SMTP session before the policy
// is loaded. It drives the same engine as the milter: for each stage, the
// rules that count there and why the others do not, the sender checks and
// their results (asked of DNS through [dns]; -no-dns leaves them out), the
// decision, and at the end the header fields the message would get. Then
// it repeats the session to show when each limit is crossed. It counts in
// private memory stores with a stopped clock; a running sluice's counters
// are never read or touched.
func explainCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	path := fs.String("config", "", "config file (default: the built-in config)")
	client := fs.String("client", "", "client IP address (empty: a client without one, as on a unix socket)")
	name := fs.String("name", "unknown", "client host name as the MTA verified it")
	helo := fs.String("helo", "", "HELO/EHLO name")
	sender := fs.String("sender", "", "envelope sender (empty or <> for the null sender)")
	var rcpts []string
	fs.Func("rcpt", "envelope recipient (repeat for several)", func(s string) error { rcpts = append(rcpts, s); return nil })
	listener := fs.String("listener", defaultListener(), "listener as the MTA names it: Postfix's {daemon_name} is $myhostname unless master.cf says -o milter_macro_daemon_name=NAME; Sendmail's is DAEMON_OPTIONS Name=")
	auth := fs.String("auth", "", "SASL user name, when the client authenticated")
	size := fs.Int64("size", 10240, "message size in bytes (header and body as the client sent them), for bytes rules")
	message := fs.String("message", "", "a message file (header and body): its header fields and body go through the engine, so DKIM and DMARC verify it; its size replaces -size")
	most := fs.Int("n", 100000, "repeat the session at most this many times")
	noDNS := fs.Bool("no-dns", false, "leave out the checks that ask DNS (SPF, dnsbl, client_rdns, sender_domain_exists); the access tables and the other checks still answer")
	asJSON := fs.Bool("json", false, "print the session's stages and decisions as JSON")
	adminSock := fs.String("admin", "", "take the runtime limits (sluice counters limits) of the sluice answering on this admin socket")
	if code := flags(fs, args, stderr); code >= 0 {
		return code
	}
	x := &explainer{
		client: smtp.Client{Name: *name, Listener: *listener},
		helo:   *helo, sender: strings.Trim(*sender, "<>"), sasl: *auth, rcpts: rcpts, size: *size,
	}
	if *client != "" {
		ip, err := netip.ParseAddr(*client)
		if err != nil {
			fmt.Fprintf(stderr, "sluice explain: -client: %v\n", err)
			return 2
		}
		x.client.IP = ip.Unmap()
	}
	if *message != "" {
		raw, err := os.ReadFile(*message)
		if err != nil {
			fmt.Fprintf(stderr, "sluice explain: -message: %v\n", err)
			return 2
		}
		if x.fields, x.body, err = splitMessage(raw); err != nil {
			fmt.Fprintf(stderr, "sluice explain: -message %s: %v\n", *message, err)
			return 2
		}
		x.message = true
		x.size = int64(len(raw))
	}
	if *size < 0 || *most < 1 {
		fmt.Fprintln(stderr, "sluice explain: -size must not be negative and -n must be at least 1")
		return 2
	}
	c, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	x.cfg, x.config, x.noDNS = c, configName(*path), *noDNS
	// The session as explained, every check that is configured.
	main, err := x.open(!*noDNS)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer main.close()
	// The repetitions count on their own fresh counters and leave the
	// checks that ask DNS out: their answers do not depend on counters,
	// and a hundred thousand sessions must not ask DNS.
	counting, err := x.open(false)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer counting.close()
	// Sessions held open at once count on fresh counters of their own,
	// not on what the repetitions used.
	concurrent, err := x.open(false)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer concurrent.close()
	x.main, x.counting, x.concurrency = main, counting, concurrent
	if *adminSock != "" {
		if err := x.runtimeLimits(*adminSock); err != nil {
			fmt.Fprintf(stderr, "sluice explain: -admin: %v\n", err)
			return 1
		}
	}
	if *asJSON {
		return x.json(stdout, *most)
	}
	x.run(stdout, *most)
	return 0
}

// explainer runs sessions of one client against the policy on private
// counters.
type explainer struct {
	cfg    *config.Config
	config string // the file's name for people
	noDNS  bool

	main        *private // the explained session, every check included
	counting    *private // repetitions: no check that asks DNS
	concurrency *private // sessions held open at once

	client smtp.Client
	helo   string
	sender string
	sasl   string
	rcpts  []string
	size   int64

	// -message: the header fields and body the session is given.
	message bool
	fields  []field
	body    []byte
}

// field is one header field as the MTA gives it to a milter.
type field struct{ name, value string }

// maxMessageFile bounds the message file explain reads.
const maxMessageFile = 64 << 20

// splitMessage cuts a message into its header fields, values as written
// after the colon (leading space and folded lines kept) and a
// body with CRLF line ends, whatever line ends the file has.
func splitMessage(raw []byte) ([]field, []byte, error) {
	if len(raw) > maxMessageFile {
		return nil, nil, fmt.Errorf("%d bytes: larger than %d", len(raw), maxMessageFile)
	}
	text := strings.ReplaceAll(string(raw), "\r\n", "\n")
	head, body, found := strings.Cut(text, "\n\n")
	if !found {
		head, body = strings.TrimSuffix(text, "\n"), ""
	}
	var fs []field
	for i, line := range strings.Split(head, "\n") {
		if line != "" && (line[0] == ' ' || line[0] == '\t') {
			if len(fs) == 0 {
				return nil, nil, fmt.Errorf("line %d: a continuation line before any header field", i+1)
			}
			fs[len(fs)-1].value += "\r\n" + line
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return nil, nil, fmt.Errorf("line %d: not a header field: %q", i+1, smtp.Printable(line, 80))
		}
		fs = append(fs, field{name, value}) // as written: DKIM's simple form hashes the space
	}
	return fs, []byte(strings.ReplaceAll(body, "\n", "\r\n")), nil
}

// private is an engine on a memory store of its own.
type private struct {
	eng   *engine.Engine
	store *memstore.Store
}

func (p *private) close() { p.store.Close() }

// explainEpoch is the stopped clock of the private counters: every
// repetition happens at the same instant, the worst case for a burst.
var explainEpoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()

// open builds the policy's engine on a fresh private store; dns says
// whether the checks that ask DNS are in.
func (x *explainer) open(dns bool) (*private, error) {
	store, err := memstore.New(memstore.Config{MaxKeys: 1 << 20}, nil, memstore.WithClock(func() int64 { return explainEpoch }))
	if err != nil {
		return nil, err
	}
	b, err := x.cfg.Build(config.Runtime{Store: store, NoDNS: !dns})
	if err != nil {
		store.Close()
		return nil, err
	}
	return &private{eng: b.Engine, store: store}, nil
}

// runtimeLimits copies a running sluice's runtime limits into the private
// engines, as in force now (the private counters' clock stands still).
func (x *explainer) runtimeLimits(socket string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ls, _, err := admin.NewClient(socket).Limits(ctx, "")
	if err != nil {
		return err
	}
	for _, l := range ls {
		if !l.InConfig {
			continue
		}
		for _, p := range []*private{x.main, x.counting} {
			if _, err := p.eng.Limits().SetLimit(ctx, l.Rule, l.Key, l.Limit, l.At, time.Time{}, l.By); err != nil {
				return fmt.Errorf("%s %s: %w", l.Rule, l.Key, err)
			}
		}
	}
	return nil
}

// step is one stage of a simulated session and what it was answered.
type step struct {
	label string // "mail", "rcpt bob@example.net"
	st    smtp.Stage
	facts policy.Facts // as the stage saw them
	d     smtp.Decision
}

// result is one session: its steps and, when the message was not refused,
// the changes to it.
type result struct {
	steps []step
	edits []smtp.Edit
}

// session runs one SMTP session through every stage, as the milter would
// drive the engine. A refusal ends what it ends for a real client: at
// connect or HELO the session, at MAIL or DATA the message, at RCPT that
// recipient; an Accept at MAIL FROM ends sluice's part in the message.
// With keepOpen the session is not closed (its concurrency slots stay).
func (x *explainer) session(p *private, keepOpen bool) result {
	ctx := context.Background()
	es := p.eng.Open(x.client)
	s := es.(*engine.Session)
	if !keepOpen {
		defer s.Close(ctx)
	}
	var r result
	ask := func(label string, st smtp.Stage) smtp.Decision {
		f := s.Facts()
		if st == smtp.Data {
			f.Size = x.size
		}
		d := s.Stage(ctx, st)
		r.steps = append(r.steps, step{label: label, st: st, facts: f, d: d})
		return d
	}
	if ask("connect", smtp.Connect).Refused() {
		return r
	}
	s.Helo(x.helo)
	if ask("helo", smtp.Helo).Refused() {
		return r
	}
	s.Mail(x.sender, x.sasl)
	switch d := ask("mail", smtp.Mail); {
	case d.Refused():
		s.EndMessage(ctx, false)
		return r
	case d.Kind == smtp.Accept:
		return r
	}
	accepted := 0
	for _, rcpt := range x.rcpts {
		s.Rcpt(rcpt)
		if !ask("rcpt "+rcpt, smtp.Rcpt).Refused() {
			accepted++
		}
	}
	if len(x.rcpts) > 0 && accepted == 0 {
		s.EndMessage(ctx, false)
		return r
	}
	if x.message {
		for _, f := range x.fields {
			s.ExactHeader(f.name, f.value)
		}
		for rest := x.body; len(rest) > 0; {
			n := min(len(rest), 65535) // Postfix's chunks
			s.Body(rest[:n])
			rest = rest[n:]
		}
	} else {
		// The size as the client sent it: the engine adds the empty line
		// between header and body to what it is shown.
		for left := max(x.size-2, 0); left > 0; left -= int64(len(zeros)) {
			s.Body(zeros[:min(left, int64(len(zeros)))])
		}
	}
	if ask("data", smtp.Data).Refused() {
		s.EndMessage(ctx, false)
		return r
	}
	r.edits = s.Edits()
	s.EndMessage(ctx, true)
	return r
}

// zeros stands for a body of -size bytes: only its length is read.
var zeros = make([]byte, 64<<10)

func (x *explainer) checksLine() string {
	line := "checks: none configured"
	switch {
	case x.noDNS && x.main.eng.Checks():
		line = "checks: the access tables and the checks of what the client said; those that ask DNS left out (-no-dns)"
	case x.noDNS && x.dnsChecks():
		return "checks: those that ask DNS left out (-no-dns), and no other is configured"
	case x.noDNS:
		return line
	case x.checksOn():
		line = "checks: client_access at connect; the others at MAIL FROM, asking DNS through [dns]"
	}
	switch dkim, dmarc := x.main.eng.MessageChecks(); {
	case (dkim || dmarc) && !x.message:
		line += "\nDKIM and DMARC: on, but no -message given: they see an empty header and say none or permerror"
	case dkim && dmarc:
		line += "\nDKIM and DMARC: the message of -message verified at end of message"
	case dkim:
		line += "\nDKIM: the message of -message verified at end of message"
	case dmarc:
		line += "\nDMARC: the message of -message evaluated at end of message"
	}
	return line
}

// dnsChecks reports whether the config has checks that ask DNS.
func (x *explainer) dnsChecks() bool {
	k := &x.cfg.Checks
	return x.cfg.SPF.Enabled || k.SenderDomainExists != nil || k.ClientRDNS != nil || len(k.DNSBL) > 0 ||
		x.cfg.DKIM.Enabled || x.cfg.DMARC.Enabled
}

// checksOn reports whether the explained engine runs checks.
func (x *explainer) checksOn() bool { return x.main.eng.Checks() }

func (x *explainer) run(w io.Writer, most int) {
	fmt.Fprintf(w, "sluice explain: %s, mode %s\n", x.config, x.cfg.Mode)
	who := ipText(x.client.IP)
	if who == "" {
		who = "(no address)"
	}
	fmt.Fprintf(w, "client %s [%s] on listener %q, HELO %q", who, x.client.Name, x.client.Listener, x.helo)
	if x.main.eng.Limits().Trusted(x.client.IP) {
		fmt.Fprint(w, " — on the trusted list")
	}
	if x.sasl != "" {
		fmt.Fprintf(w, ", authenticated as %q", x.sasl)
	} else {
		fmt.Fprint(w, ", not authenticated")
	}
	fmt.Fprintf(w, "\nsender %s, recipients %s, message size %d bytes\n", addrText(x.sender), strings.Join(x.rcpts, ", "), x.size)
	fmt.Fprintln(w, "counters: a private, fresh memory store (a running sluice's counters are not read)")
	fmt.Fprintln(w, x.checksLine())

	first := x.session(x.main, false)
	for _, s := range first.steps {
		fmt.Fprintf(w, "\n%s\n", s.label)
		x.printTraces(w, s)
		printChecks(w, s.d.Checks)
		fmt.Fprintf(w, "  => %s\n", describe(s.d, true))
	}
	if len(first.edits) > 0 {
		fmt.Fprintln(w, "\nat end of message")
		for _, e := range first.edits {
			fmt.Fprintf(w, "  %s\n", editText(e))
		}
	}
	if len(x.rcpts) == 0 {
		fmt.Fprintln(w, "\n(no -rcpt given: rules that count recipients were not asked)")
	}
	x.repeat(w, most)
	x.concurrent(w, most)
}

func (x *explainer) printTraces(w io.Writer, s step) {
	traces := x.main.eng.Limits().Explain(s.st, &s.facts)
	if len(traces) == 0 {
		fmt.Fprintln(w, "  (no rule counts at this stage)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, t := range traces {
		if !t.Applies || t.Why != "" {
			fmt.Fprintf(tw, "  %s\tno\t%s\n", t.Rule, t.Why)
			continue
		}
		what := fmt.Sprintf("%s, %s", t.What, t.Action)
		if t.Mode != smtp.ModeEnforce {
			what += " (mode " + t.Mode.String() + ")"
		}
		if t.From != "" && t.From != "rule" {
			what += " (the key's own limit: " + t.From + ")"
		}
		if t.Restrict != "" {
			what += ", restricts for " + t.Restrict
		}
		if t.Final {
			what += ", final"
		}
		key := t.Key
		switch {
		case key != "":
		case t.Tarpit:
			key = "(a tarpit: no key)"
		default:
			key = "(per message)"
		}
		fmt.Fprintf(tw, "  %s\tapplies\t%s\t%s\n", t.Rule, key, what)
	}
	tw.Flush()
}

func printChecks(w io.Writer, cs []smtp.Check) {
	if len(cs) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range cs {
		what := "no action"
		if c.Asked != smtp.ActionNone {
			what = "asks " + c.Asked.String()
			if c.Mode != smtp.ModeEnforce {
				what += " (mode " + c.Mode.String() + ")"
			}
		}
		fmt.Fprintf(tw, "  check %s\t%s\t%s\t%s\n", c.Name, c.Result, what, smtp.Printable(c.Detail, 200))
	}
	tw.Flush()
}

func editText(e smtp.Edit) string {
	switch e.Kind {
	case smtp.Remove:
		return fmt.Sprintf("remove %s #%d", e.Name, e.Index)
	case smtp.Insert:
		return fmt.Sprintf("insert at %d  %s: %s", e.Index, e.Name, e.Value)
	case smtp.Quarantine:
		return "hold: " + e.Value
	}
	return fmt.Sprintf("add  %s: %s", e.Name, e.Value)
}

// repeat runs the session again and again, each closed before the next,
// and prints each stage's answer when it changes from the first session's.
func (x *explainer) repeat(w io.Writer, most int) {
	first := x.session(x.counting, false)
	n := x.repetitions(first.steps, most)
	fmt.Fprintf(w, "\nOn a fresh counter, the same session again and again, each closed before the next (up to %d):\n", n)
	if x.checksOn() && !x.noDNS {
		fmt.Fprintln(w, "  (the checks that ask DNS left out: they answer each session alike)")
	}
	changes, never := x.repetition(first, n)
	for _, c := range changes {
		fmt.Fprintf(w, "  from session %d, %s: %s\n", c.session, c.label, describe(c.d, true))
	}
	if len(changes) == 0 {
		fmt.Fprintf(w, "  no answer changes within %d sessions\n", n)
	}
	if len(never) > 0 {
		fmt.Fprintf(w, "  never crossed: %s (a refusal at another rule stops the session first, or the limit is beyond %d sessions)\n", strings.Join(never, ", "), n)
	}
}

// change is a stage whose answer changed from one session on.
type change struct {
	session int
	label   string
	d       smtp.Decision
}

// repetition runs sessions 2..n after first and returns each change of a
// stage's answer, and the rules that apply but were never crossed.
func (x *explainer) repetition(first result, n int) ([]change, []string) {
	last := map[string]string{}
	crossed := map[string]bool{}
	note := func(d *smtp.Decision) {
		for _, o := range d.Outcomes {
			crossed[o.Source] = true
		}
	}
	for _, s := range first.steps {
		last[s.label] = describe(s.d, false)
		note(&s.d)
	}
	var changes []change
	for i := 2; i <= n; i++ {
		for _, s := range x.session(x.counting, false).steps {
			note(&s.d)
			got := describe(s.d, false)
			if got == last[s.label] {
				continue
			}
			last[s.label] = got
			changes = append(changes, change{session: i, label: s.label, d: s.d})
		}
	}
	var never []string
	for _, s := range first.steps {
		for _, t := range x.counting.eng.Limits().Explain(s.st, &s.facts) {
			if t.Applies && t.Why == "" && t.Count != "concurrent" && !crossed[t.Rule] && !slices.Contains(never, t.Rule) {
				never = append(never, t.Rule)
			}
		}
	}
	return changes, never
}

// repetitions is how many sessions it takes for every rule that applies
// to cross, plus one, within most.
func (x *explainer) repetitions(first []step, most int) int {
	need := int64(2)
	for _, s := range first {
		for _, t := range x.counting.eng.Limits().Explain(s.st, &s.facts) {
			if !t.Applies || t.Why != "" || t.Count == "concurrent" {
				continue
			}
			b := t.Burst
			if t.Count == "bytes" {
				b = b/max(x.size, 1) + 1
			}
			need = max(need, b+2)
		}
	}
	return int(min(need, int64(most)))
}

// concurrent opens sessions without closing them until a concurrency
// limit answers, when a rule counts open connections for this client. It
// returns the number of the session that was refused (or the last one
// opened) and its answer at connect; 0 when no rule counts open
// connections.
func (x *explainer) concurrentRun(most int) (int, smtp.Decision, int) {
	var slots int64
	f := policy.Facts{ClientIP: x.client.IP, ClientName: x.client.Name, Listener: x.client.Listener,
		Trusted: x.concurrency.eng.Limits().Trusted(x.client.IP)}
	for _, t := range x.concurrency.eng.Limits().Explain(smtp.Connect, &f) {
		if t.Applies && t.Why == "" && t.Count == "concurrent" {
			slots = max(slots, t.Burst)
		}
	}
	if slots == 0 {
		return 0, smtp.Decision{}, 0
	}
	n := int(min(slots+1, int64(most)))
	for i := 1; i <= n; i++ {
		steps := x.session(x.concurrency, true).steps
		if d := steps[0].d; d.Refused() || i == n {
			return i, d, n
		}
	}
	return 0, smtp.Decision{}, n
}

func (x *explainer) concurrent(w io.Writer, most int) {
	i, d, n := x.concurrentRun(most)
	if i == 0 {
		return
	}
	fmt.Fprintf(w, "\nSessions open at the same time (up to %d, none closed):\n", n)
	fmt.Fprintf(w, "  session %d, connect: %s\n", i, describe(d, true))
}

// describe says what a decision does; full adds the reply text, delays
// and the rules behind it.
func describe(d smtp.Decision, full bool) string {
	var parts []string
	switch {
	case d.Refused():
		s := d.Action.String()
		if full {
			// As the client reads it: the MTA undoes the %% escaping.
			s += fmt.Sprintf(" %q", strings.ReplaceAll(d.Reply, "%%", "%"))
		}
		parts = append(parts, s)
	case d.Kind == smtp.Accept:
		parts = append(parts, "accept (nothing later can change the answer: the MTA leaves sluice out of the rest of the message)")
	default:
		parts = append(parts, "continue")
	}
	if d.Pause > 0 {
		parts = append(parts, "after a pause of "+d.Pause.String())
	}
	if d.Escalation != smtp.ActionNone {
		parts = append(parts, "escalated ("+d.Escalation.String()+")")
	}
	held := false
	for _, o := range d.Outcomes {
		if o.Action == smtp.ActionHold && !held {
			parts = append(parts, "held by "+o.Source)
			held = true
		}
	}
	for _, o := range d.Outcomes {
		if o.Action == smtp.ActionTag {
			parts = append(parts, "tagged by "+o.Source)
		}
	}
	for _, o := range d.Outcomes {
		if o.Mode == smtp.ModeDryRun {
			parts = append(parts, fmt.Sprintf("would %s (%s, dry-run)", o.Asked, o.Source))
		} else if full && o.Action.Refuses() {
			parts = append(parts, "by "+o.Source)
		}
	}
	return strings.Join(parts, ", ")
}

// defaultListener is the listener name Postfix sends when master.cf does
// not name the service: $myhostname, this host's name.
func defaultListener() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

func ipText(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func addrText(a string) string {
	if a == "" {
		return "<>"
	}
	return a
}

// The -json output: one session's stages as the engine decided them, for
// scripts and for tests that compare explain with a live sluice.
type (
	explainJSON struct {
		Config     string       `json:"config"`
		Mode       string       `json:"mode"`
		Checks     string       `json:"checks"` // "on", "off" (-no-dns: those that ask DNS left out) or "none"
		Trusted    bool         `json:"trusted"`
		Stages     []stageJSON  `json:"stages"`
		Edits      []editJSON   `json:"edits,omitempty"`
		Repeat     []changeJSON `json:"repeat,omitempty"`
		Concurrent *changeJSON  `json:"concurrent,omitempty"`
		Never      []string     `json:"never_crossed,omitempty"`
		Sessions   int          `json:"sessions"` // repetitions run
		Client     clientJSON   `json:"client"`
		Message    messageJSON  `json:"message"`
	}
	clientJSON struct {
		IP       string `json:"ip"`
		Name     string `json:"name"`
		Listener string `json:"listener"`
		Helo     string `json:"helo"`
		SASLUser string `json:"sasl_user,omitempty"`
	}
	messageJSON struct {
		Sender string   `json:"sender"`
		Rcpts  []string `json:"rcpts"`
		Size   int64    `json:"size"`
	}
	stageJSON struct {
		Label    string       `json:"label"`
		Stage    string       `json:"stage"`
		Rules    []traceJSON  `json:"rules"`
		Checks   []checkJSON  `json:"checks,omitempty"`
		Decision decisionJSON `json:"decision"`
	}
	traceJSON struct {
		Rule     string `json:"rule"`
		Applies  bool   `json:"applies"`
		Why      string `json:"why,omitempty"`
		Key      string `json:"key,omitempty"`
		Count    string `json:"count"`
		Limit    string `json:"limit"`
		What     string `json:"what"`
		Burst    int64  `json:"burst"`
		Action   string `json:"action"`
		Mode     string `json:"mode"`
		Final    bool   `json:"final,omitempty"`
		From     string `json:"limit_from,omitempty"`
		Restrict string `json:"restrict_for,omitempty"`
	}
	checkJSON struct {
		Check  string `json:"check"`
		Result string `json:"result"`
		Action string `json:"action"`
		Mode   string `json:"mode"`
		Detail string `json:"detail,omitempty"`
	}
	decisionJSON struct {
		Kind       string        `json:"kind"` // continue, accept, reply, disconnect
		Reply      string        `json:"reply,omitempty"`
		Action     string        `json:"action"`
		PauseMS    int64         `json:"pause_ms,omitempty"`
		Escalation string        `json:"escalation,omitempty"`
		Outcomes   []outcomeJSON `json:"outcomes,omitempty"`
	}
	outcomeJSON struct {
		Source     string  `json:"source"`
		Key        string  `json:"key"`
		Limit      string  `json:"limit,omitempty"`
		Detail     string  `json:"detail,omitempty"`
		Asked      string  `json:"asked"`
		Mode       string  `json:"mode"`
		Action     string  `json:"action"`
		RetryAfter float64 `json:"retry_after_seconds,omitempty"`
	}
	editJSON struct {
		Kind  string `json:"kind"` // remove, insert, add, quarantine
		Name  string `json:"name,omitempty"`
		Value string `json:"value,omitempty"`
		Index int    `json:"index"`
	}
	changeJSON struct {
		Session  int          `json:"session"`
		Label    string       `json:"label"`
		Decision decisionJSON `json:"decision"`
	}
)

func (x *explainer) json(w io.Writer, most int) int {
	out := explainJSON{
		Config: x.config, Mode: x.cfg.Mode.String(), Checks: "none",
		Trusted: x.main.eng.Limits().Trusted(x.client.IP),
		Client: clientJSON{IP: ipText(x.client.IP), Name: x.client.Name, Listener: x.client.Listener,
			Helo: x.helo, SASLUser: x.sasl},
		Message: messageJSON{Sender: x.sender, Rcpts: x.rcpts, Size: x.size},
	}
	switch {
	case x.noDNS:
		out.Checks = "off"
	case x.checksOn():
		out.Checks = "on"
	}
	if out.Message.Rcpts == nil {
		out.Message.Rcpts = []string{}
	}
	first := x.session(x.main, false)
	for _, s := range first.steps {
		sj := stageJSON{Label: s.label, Stage: s.st.String(), Rules: []traceJSON{}, Decision: decisionOf(s.d)}
		for _, t := range x.main.eng.Limits().Explain(s.st, &s.facts) {
			sj.Rules = append(sj.Rules, traceOf(t))
		}
		for _, c := range s.d.Checks {
			sj.Checks = append(sj.Checks, checkJSON{Check: c.Name, Result: c.Result, Action: c.Asked.String(), Mode: c.Mode.String(), Detail: c.Detail})
		}
		out.Stages = append(out.Stages, sj)
	}
	for _, e := range first.edits {
		out.Edits = append(out.Edits, editJSON{Kind: e.Kind.String(), Name: e.Name, Value: e.Value, Index: e.Index})
	}
	counted := x.session(x.counting, false)
	out.Sessions = x.repetitions(counted.steps, most)
	changes, never := x.repetition(counted, out.Sessions)
	for _, c := range changes {
		out.Repeat = append(out.Repeat, changeJSON{Session: c.session, Label: c.label, Decision: decisionOf(c.d)})
	}
	out.Never = never
	if i, d, _ := x.concurrentRun(most); i > 0 {
		out.Concurrent = &changeJSON{Session: i, Label: "connect", Decision: decisionOf(d)}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return 1
	}
	return 0
}

func decisionOf(d smtp.Decision) decisionJSON {
	j := decisionJSON{Kind: d.Kind.String(), Reply: d.Reply, Action: d.Action.String(), PauseMS: d.Pause.Milliseconds()}
	if d.Escalation != smtp.ActionNone {
		j.Escalation = d.Escalation.String()
	}
	for _, o := range d.Outcomes {
		j.Outcomes = append(j.Outcomes, outcomeJSON{Source: o.Source, Key: o.Key, Limit: o.Limit, Detail: o.Detail,
			Asked: o.Asked.String(), Mode: o.Mode.String(), Action: o.Action.String(), RetryAfter: o.RetryAfter.Seconds()})
	}
	return j
}

func traceOf(t limits.Trace) traceJSON {
	return traceJSON{Rule: t.Rule, Applies: t.Applies && t.Why == "", Why: t.Why, Key: t.Key, Count: t.Count,
		Limit: t.Limit, What: t.What, Burst: t.Burst, Action: t.Action.String(), Mode: t.Mode.String(), Final: t.Final,
		From: t.From, Restrict: t.Restrict}
}
