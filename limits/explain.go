package limits

import (
	"fmt"
	"strings"

	"sluice/lists"
	"sluice/policy"
	"sluice/smtp"
)

// Trace is what one rule makes of one event, for `sluice explain`: whether
// it applies and, when it does not, why.
type Trace struct {
	Rule  string
	Count string // what the rule counts: "messages"
	// What is the limit as people read it, with what is counted and the
	// burst: "messages 30/1m (burst 30)", "1000 recipients a message",
	// "concurrent 20 at once", "every connection".
	What    string
	Applies bool   // trusted, except and match let the rule see the event
	Why     string // why it does not apply, or why it counts nothing when it does
	Key     string // the key it counts the event under, when it has one
	Limit   string // as people read it: "10/1h", "20 at once"
	Action  policy.Action
	Mode    policy.Mode // the rule's own mode, before the global one
	Final   bool        // when it applies, later rules of the stage are not evaluated
	Tarpit  bool        // it delays every event it applies to, and counts nothing
	// Burst is what a fresh counter admits at once: events (bytes for a
	// bytes rule, open connections for a concurrent one, recipients of
	// one message for a per-message cap, different values for a distinct
	// one); the next one crosses the limit.
	Burst int64
	// From says where the key's limit comes from: "rule", "table
	// FILE:LINE", "runtime, set by WHO at WHEN". Limit and Burst are the
	// key's own.
	From string
	// Restrict is the rule's restrict_for ("24h", "today",
	// "until_released"), when it has one.
	Restrict string
}

// Explain traces, in file order, every rule that counts at st as Check
// would see the event. It counts nothing.
func (e *Engine) Explain(st policy.Stage, f *policy.Facts) []Trace {
	var out []Trace
	stoppedBy := ""
	for _, r := range e.byStage[st] {
		t := Trace{Rule: r.name, Count: countNames[r.count], What: r.what(r.windows, r.limit), Tarpit: r.tarpit, Limit: r.limit, Action: r.action, Mode: r.mode, Final: r.final, Burst: r.burst(r.windows), From: "rule"}
		if r.count == countDistinct {
			t.Count = "distinct " + r.of.String()
		}
		if r.restrict != nil {
			t.Restrict = r.restrict.text
		}
		switch {
		case stoppedBy != "":
			t.Why = fmt.Sprintf("not evaluated: %s, before it, is final", stoppedBy)
		default:
			t.Why = e.whyNot(r, f)
		}
		if t.Why == "" {
			t.Applies = true
			if key, ok := r.keyer.appendKey(nil, f); ok {
				if len(r.keyer.dims) > 0 {
					t.Key = string(key)
				}
				if r.over != nil {
					var w where
					sp := e.limitFor(r, f, nil, key, &w)
					t.Limit, t.From = sp.text, w.String()
					t.What = r.what(sp.windows, sp.text)
					switch {
					case sp.unlimited:
						t.Why, t.Burst = "counts nothing: the key's limit is unlimited ("+t.From+")", 0
					case sp.zero:
						t.Burst = 0
					default:
						t.Burst = r.burst(sp.windows)
					}
				}
				if _, ok := r.appendMember(nil, f); r.count == countDistinct && !ok {
					t.Why = "counts nothing: no " + r.of.String() + " to count different values of"
				}
			} else {
				t.Why = "counts nothing: " + r.keyer.missing(f)
			}
			if r.final {
				stoppedBy = r.name
			}
		}
		out = append(out, t)
	}
	return out
}

// what says a limit of r for people (its own, or a key's override with
// its windows): what it counts, the limit, and a rate's burst, which a
// fresh counter admits at once.
func (r *rule) what(windows []window, limit string) string {
	switch {
	case r.tarpit:
		return limit
	case r.count == countConcurrent:
		return "concurrent " + limit
	case r.count == countDistinct:
		return "distinct " + r.of.String() + " " + limit
	case len(windows) == 0:
		if r.maxRcpt > 0 {
			return r.rcptLimit
		}
		return countNames[r.count] + " " + limit
	}
	bursts := make([]string, len(windows))
	for i, w := range windows {
		bursts[i] = fmt.Sprint(w.burst)
	}
	s := fmt.Sprintf("%s %s (burst %s)", countNames[r.count], limit, strings.Join(bursts, ","))
	if r.maxRcpt > 0 {
		s += ", " + r.rcptLimit
	}
	return s
}

// burst is what a fresh counter of r with windows admits before r is
// crossed.
func (r *rule) burst(windows []window) int64 {
	switch {
	case r.count == countConcurrent:
		return r.max
	case len(windows) > 0:
		b := windows[0].burst
		for _, w := range windows[1:] {
			b = min(b, w.burst)
		}
		if r.maxRcpt > 0 {
			b = min(b, int64(r.maxRcpt))
		}
		return b
	}
	return int64(r.maxRcpt)
}

// whyNot says why r does not apply to the event, "" when it does.
func (e *Engine) whyNot(r *rule, f *policy.Facts) string {
	if f.Trusted && !r.trusted {
		return fmt.Sprintf("the client %s is trusted (the trusted list; apply_to_trusted = false)", ipText(f))
	}
	if r.hasExcept() && r.excepted(f) {
		return "on the rule's except list (client, sender or SASL user)"
	}
	return r.match.describe(r.match.failed(f), f)
}

// describe says why condition c failed for f; "" for condNone.
func (m *matcher) describe(c condition, f *policy.Facts) string {
	q := func(s string) string { return fmt.Sprintf("%q", smtp.Printable(s, 200)) }
	key := "match." + conditionKeys[c] + ": "
	switch c {
	case condNone:
		return ""
	case condListener:
		return key + fmt.Sprintf("listener %s is not one of %q", q(f.Listener), m.listeners)
	case condAuthenticated:
		if *m.authenticated {
			return key + "the client did not authenticate (authenticated = true)"
		}
		return key + fmt.Sprintf("the client authenticated as %s (authenticated = false)", q(f.SASLUser))
	case condClient:
		who := ipText(f)
		if f.ClientName != "" {
			who += " (" + smtp.Printable(f.ClientName, 200) + ")"
		}
		return key + fmt.Sprintf("client %s is in none of %s", who, listNames(m.client))
	case condSenderDomain:
		d := domainOf(trimPath(f.Sender))
		if d == "" {
			return key + fmt.Sprintf("sender %s has no domain", senderText(f.Sender))
		}
		return key + fmt.Sprintf("sender domain %s is in none of %s", q(d), listNames(m.senderDomain))
	case condRcptDomain:
		d := domainOf(trimPath(f.Rcpt))
		if d == "" {
			return key + fmt.Sprintf("recipient %s has no domain", q(f.Rcpt))
		}
		return key + fmt.Sprintf("recipient domain %s is in none of %s", q(d), listNames(m.rcptDomain))
	case condHelo:
		return key + fmt.Sprintf("HELO %s does not match /%s/", q(f.Helo), pattern(m.helo.String()))
	case condSender:
		return key + fmt.Sprintf("sender %s does not match /%s/", senderText(f.Sender), pattern(m.sender.String()))
	case condDMARC:
		if f.DMARC == "" {
			return key + "DMARC did not run for this message"
		}
		return key + fmt.Sprintf("DMARC result %s, not %s", f.DMARC, m.dmarc)
	}
	return key + "does not hold"
}

// missing says which dimension of the key the event has no value for.
func (k *keyer) missing(f *policy.Facts) string {
	for _, d := range k.dims {
		if _, ok := k.appendValue(nil, d, f); ok {
			continue
		}
		switch d {
		case dimClientIP:
			return "no client IP to count per (a unix-socket or unknown client)"
		case dimSender, dimSenderDomain:
			return "the null sender is not counted per " + d.String() + " (null_sender = \"skip\")"
		case dimSASLUser:
			return "the client did not authenticate: nothing to count per sasl_user"
		case dimHelo:
			return "no HELO to count per"
		case dimRcpt, dimRcptDomain:
			return "no recipient domain to count per " + d.String()
		case dimDKIMDomain:
			return "no DKIM signature passed: nothing to count per dkim_domain"
		case dimFromDomain:
			return "no From domain (DMARC did not run, or From names no single domain)"
		}
		return "no " + d.String() + " to count per"
	}
	return "no key"
}

func listNames(ls []*lists.List) string {
	names := make([]string, len(ls))
	for i, l := range ls {
		names[i] = l.Name
	}
	return strings.Join(names, ", ")
}

// pattern shows a match regexp as the admin wrote it.
func pattern(re string) string { return strings.TrimPrefix(re, "(?i)") }

func ipText(f *policy.Facts) string {
	if !f.ClientIP.IsValid() {
		return "(no address)"
	}
	return f.ClientIP.String()
}

func senderText(s string) string {
	if trimPath(s) == "" {
		return "<>"
	}
	return fmt.Sprintf("%q", smtp.Printable(s, 200))
}
