package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"sluice/conf"
	"sluice/limits"
	"sluice/limits/memstore"
	"sluice/lists"
	"sluice/policy"
)

// explainCmd shows how a policy treats one SMTP session before the policy
// is loaded: which rules apply at each stage and why the others do not,
// what each stage would answer on fresh counters, and when repeating the
// session would cross each limit. It counts in a private memory store
// with a stopped clock; a running sluice's counters are never read or
// touched.
func explainCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	path := fs.String("config", "", "config file (default: the built-in config)")
	client := fs.String("client", "", "client IP address (empty: a client without one, as on a unix socket)")
	name := fs.String("name", "unknown", "client host name as the MTA verified it")
	helo := fs.String("helo", "", "HELO/EHLO name")
	sender := fs.String("sender", "", "envelope sender (empty or <> for the null sender)")
	var rcpts []string
	fs.Func("rcpt", "envelope recipient (repeat for several)", func(s string) error { rcpts = append(rcpts, s); return nil })
	listener := fs.String("listener", "smtpd", "listener, as Postfix's {daemon_name} (milter_macro_daemon_name)")
	auth := fs.String("auth", "", "SASL user name, when the client authenticated")
	size := fs.Int64("size", 10240, "message size in bytes, for bytes rules")
	most := fs.Int("n", 100000, "repeat the session at most this many times")
	if code := flags(fs, args, stderr); code >= 0 {
		return code
	}
	f := policy.Facts{ClientName: *name, Listener: *listener, Helo: *helo, SASLUser: *auth, Sender: strings.Trim(*sender, "<>")}
	if *client != "" {
		ip, err := netip.ParseAddr(*client)
		if err != nil {
			fmt.Fprintf(stderr, "sluice explain: -client: %v\n", err)
			return 2
		}
		f.ClientIP = ip.Unmap()
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
	set, err := buildLists(c, *path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	x, err := newExplainer(c, set)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer x.store.Close()
	f.Trusted = x.eng.Trusted(f.ClientIP)
	x.f, x.rcpts, x.size = f, rcpts, *size
	x.run(stdout, configName(*path), *most)
	return 0
}

// buildLists reads the [lists] files, as serve does at start: a file that
// cannot be read is an error naming it.
func buildLists(c *Config, path string) (*lists.Set, error) {
	set, _, err := c.Lists.Build(nil)
	if err != nil {
		return nil, locate(configName(path), configData(path), conf.In(err, "lists"))
	}
	return set, nil
}

// explainer runs sessions of one client against the policy on private
// counters.
type explainer struct {
	cfg   *Config
	eng   *limits.Engine
	store *memstore.Store

	f     policy.Facts // the session as given: client, HELO, sender, SASL user
	rcpts []string
	size  int64
}

// explainEpoch is the stopped clock of the private counters: every
// repetition happens at the same instant, the worst case for a burst.
var explainEpoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()

func newExplainer(c *Config, set *lists.Set) (*explainer, error) {
	store, err := memstore.New(memstore.Config{MaxKeys: 1 << 20}, nil, memstore.WithClock(func() int64 { return explainEpoch }))
	if err != nil {
		return nil, err
	}
	eng, err := limits.New(&c.LimitsConfig, set, limits.Options{Store: store, Mode: c.Mode})
	if err != nil {
		store.Close()
		return nil, err
	}
	return &explainer{cfg: c, eng: eng, store: store}, nil
}

// step is one stage of a simulated session and what it was answered.
type step struct {
	label string // "mail", "rcpt bob@example.net"
	st    policy.Stage
	facts policy.Facts // as the stage saw them
	d     policy.Decision
}

// session runs one SMTP session through every stage on the private
// counters. A refusal ends what it ends for a real client: at connect or
// HELO the session, at MAIL or DATA the message, at RCPT that recipient.
// With keepOpen the session is not closed (its concurrency slots stay).
func (x *explainer) session(keepOpen bool) []step {
	ctx := context.Background()
	ls := x.eng.NewSession()
	if !keepOpen {
		defer x.eng.Close(ctx, ls)
	}
	f := x.f
	sasl := f.SASLUser
	f.SASLUser, f.Sender = "", "" // not known before MAIL FROM
	sender := x.f.Sender
	refusals := 0
	var steps []step
	// ask runs one stage and reports whether it was refused.
	ask := func(label string, st policy.Stage) bool {
		vs, _ := x.eng.Check(ctx, st, &f, ls)
		var d policy.Decision
		if vs != nil {
			env := policy.Env{ClientIP: ipText(f.ClientIP), Sender: f.Sender, SASLUser: f.SASLUser, Rcpt: f.Rcpt}
			d = x.cfg.PolicyConfig.Decide(st, vs, &env)
			d.Hold = copyVerdict(d.Hold)
			d.Tags = copyVerdicts(d.Tags)
			for i := range d.Outcomes {
				d.Outcomes[i].Verdict = copyVerdict(d.Outcomes[i].Verdict)
			}
		}
		x.cfg.PolicyConfig.Escalate(refusals, &d)
		if d.Refused() {
			refusals++
		}
		x.eng.Settle(ctx, ls, d.Refused())
		steps = append(steps, step{label: label, st: st, facts: f, d: d})
		return d.Refused()
	}
	if ask("connect", policy.StageConnect) || ask("helo", policy.StageHelo) {
		return steps
	}
	f.SASLUser, f.Sender = sasl, sender
	if ask("mail", policy.StageMail) {
		x.eng.EndMessage(ctx, ls, false)
		return steps
	}
	for _, r := range x.rcpts {
		f.Rcpt = r
		if !ask("rcpt "+r, policy.StageRcpt) {
			f.RcptCount++
		}
	}
	if len(x.rcpts) > 0 && f.RcptCount == 0 {
		x.eng.EndMessage(ctx, ls, false)
		return steps
	}
	f.Size = x.size
	x.eng.EndMessage(ctx, ls, !ask("data", policy.StageData))
	return steps
}

func copyVerdict(v *policy.Verdict) *policy.Verdict {
	if v == nil {
		return nil
	}
	c := *v
	return &c
}

func copyVerdicts(vs []*policy.Verdict) []*policy.Verdict {
	out := make([]*policy.Verdict, len(vs))
	for i, v := range vs {
		out[i] = copyVerdict(v)
	}
	return out
}

func (x *explainer) run(w io.Writer, config string, most int) {
	f := x.f
	fmt.Fprintf(w, "sluice explain: %s, mode %s\n", config, x.cfg.Mode)
	who := ipText(f.ClientIP)
	if who == "" {
		who = "(no address)"
	}
	fmt.Fprintf(w, "client %s [%s] on listener %q, HELO %q", who, f.ClientName, f.Listener, f.Helo)
	if f.Trusted {
		fmt.Fprint(w, " — on the trusted list")
	}
	if f.SASLUser != "" {
		fmt.Fprintf(w, ", authenticated as %q", f.SASLUser)
	} else {
		fmt.Fprint(w, ", not authenticated")
	}
	fmt.Fprintf(w, "\nsender %s, recipients %s, message size %d bytes\n", addrText(f.Sender), strings.Join(x.rcpts, ", "), x.size)
	fmt.Fprintln(w, "counters: a private, fresh memory store (a running sluice's counters are not read)")

	first := x.session(false)
	for _, s := range first {
		fmt.Fprintf(w, "\n%s\n", s.label)
		x.printTraces(w, s)
		fmt.Fprintf(w, "  => %s\n", describe(s.d, true))
	}
	if len(x.rcpts) == 0 {
		fmt.Fprintln(w, "\n(no -rcpt given: rules that count recipients were not asked)")
	}
	x.repeat(w, first, most)
	x.concurrent(w, most)
}

func (x *explainer) printTraces(w io.Writer, s step) {
	traces := x.eng.Explain(s.st, &s.facts)
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
		what := fmt.Sprintf("%s %s, %s", t.Count, t.Limit, t.Action)
		if t.Mode != policy.ModeEnforce {
			what += " (mode " + t.Mode.String() + ")"
		}
		if t.Final {
			what += ", final"
		}
		key := t.Key
		if key == "" {
			key = "(per message)"
		}
		fmt.Fprintf(tw, "  %s\tapplies\t%s\t%s\n", t.Rule, key, what)
	}
	tw.Flush()
}

// repeat runs the session again and again, each closed before the next,
// and prints each stage's answer when it changes from the first session's.
func (x *explainer) repeat(w io.Writer, first []step, most int) {
	n := x.repetitions(first, most)
	fmt.Fprintf(w, "\nOn a fresh counter, the same session again and again, each closed before the next (up to %d):\n", n)
	last := map[string]string{}
	crossed := map[string]bool{}
	note := func(d *policy.Decision) {
		for _, o := range d.Outcomes {
			crossed[o.Verdict.Source] = true
		}
	}
	for _, s := range first {
		last[s.label] = describe(s.d, false)
		note(&s.d)
	}
	changed := false
	for i := 2; i <= n; i++ {
		for _, s := range x.session(false) {
			note(&s.d)
			got := describe(s.d, false)
			if got == last[s.label] {
				continue
			}
			last[s.label] = got
			changed = true
			fmt.Fprintf(w, "  from session %d, %s: %s\n", i, s.label, describe(s.d, true))
		}
	}
	if !changed {
		fmt.Fprintf(w, "  no answer changes within %d sessions\n", n)
	}
	var never []string
	for _, s := range first {
		for _, t := range x.eng.Explain(s.st, &s.facts) {
			if t.Applies && t.Why == "" && t.Count != "concurrent" && !crossed[t.Rule] && !slices.Contains(never, t.Rule) {
				never = append(never, t.Rule)
			}
		}
	}
	if len(never) > 0 {
		fmt.Fprintf(w, "  never crossed: %s (a refusal at another rule stops the session first, or the limit is beyond %d sessions)\n", strings.Join(never, ", "), n)
	}
}

// repetitions is how many sessions it takes for every rule that applies
// to cross, plus one, within most.
func (x *explainer) repetitions(first []step, most int) int {
	need := int64(2)
	for _, s := range first {
		for _, t := range x.eng.Explain(s.st, &s.facts) {
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
// limit answers, when a rule counts open connections for this client.
func (x *explainer) concurrent(w io.Writer, most int) {
	var slots int64
	f := x.f
	for _, t := range x.eng.Explain(policy.StageConnect, &f) {
		if t.Applies && t.Why == "" && t.Count == "concurrent" {
			slots = max(slots, t.Burst)
		}
	}
	if slots == 0 {
		return
	}
	n := int(min(slots+1, int64(most)))
	fmt.Fprintf(w, "\nSessions open at the same time (up to %d, none closed):\n", n)
	for i := 1; i <= n; i++ {
		steps := x.session(true)
		if d := &steps[0].d; d.Refused() || i == n {
			fmt.Fprintf(w, "  session %d, connect: %s\n", i, describe(*d, true))
			if d.Refused() {
				return
			}
		}
	}
}

// describe says what a decision does; full adds the reply text, delays
// and the rules behind it.
func describe(d policy.Decision, full bool) string {
	var parts []string
	if d.Refused() {
		s := d.Action.String()
		if full {
			// As the client reads it: the MTA undoes the %% escaping.
			s += fmt.Sprintf(" %q", strings.ReplaceAll(d.Reply, "%%", "%"))
		}
		parts = append(parts, s)
	} else {
		parts = append(parts, "continue")
	}
	if d.Delay > 0 {
		parts = append(parts, "after a pause of "+d.Delay.String())
	}
	if d.Escalation != policy.ActionNone {
		parts = append(parts, "escalated ("+d.Escalation.String()+")")
	}
	if d.Hold != nil {
		parts = append(parts, "held by "+d.Hold.Source)
	}
	for _, v := range d.Tags {
		parts = append(parts, "tagged by "+v.Source)
	}
	for _, o := range d.Outcomes {
		if o.Mode == policy.ModeDryRun {
			parts = append(parts, fmt.Sprintf("would %s (%s, dry-run)", o.Verdict.Action, o.Verdict.Source))
		} else if full && o.Action.Refuses() {
			parts = append(parts, "by "+o.Verdict.Source)
		}
	}
	return strings.Join(parts, ", ")
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
