// Package engine decides what one SMTP session gets, stage by stage;
// front ends translate to and from it.
//
// A front end (the milter, `sluice explain`) opens a Session from what it
// knows at CONNECT, gives it each fact as the MTA tells it (HELO, sender,
// recipient, header fields, body size, queue id) and asks for each
// stage's decision. The engine asks limits, auth and policy, applies the
// global mode, escalates after repeated refusals, logs what it refused,
// tagged or held, and at end of message says which header fields to
// remove, insert and add. It knows nothing of the protocol that carried
// the session.
package engine

import (
	"fmt"
	"time"

	"go.uber.org/zap"

	"sluice/alert"
	"sluice/auth"
	"sluice/auth/dkim"
	"sluice/auth/dmarc"
	"sluice/conf"
	"sluice/limits"
	"sluice/lists"
	"sluice/policy"
	"sluice/smtp"
)

// Config is the engine's part of the file: top-level keys.
type Config struct {
	TagHeader string `toml:"tag_header"` // header for crossed limits
}

// Defaults fills what the file left out.
func (c *Config) Defaults() {
	if c.TagHeader == "" {
		c.TagHeader = "X-Sluice-Limit"
	}
}

// Validate checks the engine's keys.
func (c *Config) Validate() error {
	if !validHeaderName(c.TagHeader) {
		return conf.Errorf("tag_header", "%q is not a header field name", c.TagHeader)
	}
	if !hasPrefixFold(c.TagHeader, "X-Sluice-") {
		return conf.Errorf("tag_header", "%q must start with X-Sluice- so that sluice can remove forged copies", c.TagHeader)
	}
	return nil
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

// Observer hears what the engine decides, for metrics. Its methods are
// called from every session's goroutine at once: they must be cheap, safe
// for concurrent use, and must not block.
type Observer interface {
	// Stage reports a stage's decision and the time the engine took to
	// reach it (counting, checks, decision; not the pause it asks for).
	Stage(st smtp.Stage, took time.Duration, d *smtp.Decision)
	// Check reports one sender check's result ("spf", "fail") and the
	// time the MAIL FROM checks it came with took.
	Check(check, result string, took time.Duration)
}

type nopObserver struct{}

func (nopObserver) Stage(smtp.Stage, time.Duration, *smtp.Decision) {}
func (nopObserver) Check(string, string, time.Duration)             {}

// Options are what an engine is built from: each part's own config,
// checked by its package, and what outlives a reload (the stores).
type Options struct {
	Config Config
	Policy policy.Config // the global keys: mode, pauses, escalation
	Rules  *limits.Config
	Lists  *lists.Set
	// Counting holds the stores and where store failures are reported;
	// the engine sets its mode and log.
	Counting limits.Options
	Auth     *auth.Checker // nil when no sender check is configured
	// DKIM and DMARC verify and evaluate at end of message; nil when off.
	// With either, Auth must be given (it writes Authentication-Results
	// and removes forged ones), even with no sender check on.
	DKIM     *dkim.Verifier
	DMARC    *dmarc.Evaluator
	Log      *zap.Logger
	Observer Observer
	// AcceptAtMail lets a MAIL FROM decision be Accept when nothing later
	// can change the answer, so that the front end skips the rest of the
	// message. Without it every message runs to its end.
	AcceptAtMail bool
	// Now is the clock stage latencies are read from, restrictions are
	// set by and alerts stamped with; nil: time.Now.
	Now func() time.Time
	// Alerts hears what limits restricted, refused and held; nil: no
	// [[alert]].
	Alerts alert.Notifier
}

// Engine decides for every session opened on it. It is built once per
// config load and is safe for concurrent use; a reload builds a new one
// and the sessions in flight keep theirs.
type Engine struct {
	cfg    Config
	pol    policy.Config
	lim    *limits.Engine
	auth   *auth.Checker // nil when no check, DKIM or DMARC is on
	checks bool          // the sender checks run at MAIL FROM
	dkim   *dkim.Verifier
	dmarc  *dmarc.Evaluator
	log    *zap.Logger
	obs    Observer
	now    func() time.Time
	needs  smtp.Needs
	accept bool // a MAIL FROM may be answered Accept

	listeners *listenerWatch // nil when no rule names or counts per a listener

	alerts alert.Notifier
}

// New builds an engine. The global mode is applied here and only here:
// every part that must know what it makes of a rule or a check (the
// store's all-or-nothing counting, the headers a check writes, the
// decision) is given the engine's policy.Config.Effective.
func New(o Options) (*Engine, error) {
	e := &Engine{cfg: o.Config, pol: o.Policy, log: o.Log, obs: o.Observer, now: o.Now, alerts: o.Alerts}
	if e.log == nil {
		e.log = zap.NewNop()
	}
	if e.obs == nil {
		e.obs = nopObserver{}
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.cfg.TagHeader == "" {
		e.cfg.Defaults()
	}
	rules := o.Rules
	if rules == nil {
		rules = &limits.Config{}
	}
	co := o.Counting
	co.Mode = e.pol.Effective
	if co.Now == nil {
		co.Now = e.now
	}
	if co.Log == nil {
		co.Log = e.log
	}
	var err error
	if e.lim, err = limits.New(rules, o.Lists, co); err != nil {
		return nil, err
	}
	e.dkim, e.dmarc = o.DKIM, o.DMARC
	if o.Auth != nil && (o.Auth.Enabled() || e.dkim != nil || e.dmarc != nil) {
		e.auth, e.checks = o.Auth, o.Auth.Enabled()
	} else if e.dkim != nil || e.dmarc != nil {
		return nil, fmt.Errorf("engine: DKIM and DMARC need an auth checker for their headers")
	}
	e.listeners = newListenerWatch(e.lim, e.log)
	e.needs = e.computeNeeds()
	e.accept = o.AcceptAtMail && e.needs.AcceptAtMail
	e.needs.AcceptAtMail = e.accept
	e.needs.Answers = e.answers(e.accept)
	return e, nil
}

// Limits is the limits engine behind this engine, for those who ask it
// directly: the admin endpoint, `sluice explain`.
func (e *Engine) Limits() *limits.Engine { return e.lim }

// Checks reports whether sender checks run (SPF, [checks]).
func (e *Engine) Checks() bool { return e.checks }

// MessageChecks reports whether DKIM and DMARC run at end of message.
func (e *Engine) MessageChecks() (dkim, dmarc bool) { return e.dkim != nil, e.dmarc != nil }

// Needs says which events and facts the policy reads.
func (e *Engine) Needs() smtp.Needs { return e.needs }

func (e *Engine) computeNeeds() smtp.Needs {
	checks := e.checks
	// DKIM reads the header and the body; DMARC the From field. Without
	// them neither is asked for on their account: a policy without them
	// negotiates what it did before they existed.
	message := e.dkim != nil || e.dmarc != nil
	// Checks write Authentication-Results: forged ones must be seen to
	// be removed.
	edits := e.auth != nil || e.mayTag()
	// A message's size is its header and body as the client sent them
	// (Postfix has no {msg_size}): bytes rules need the header lines too.
	size := e.lim.Needs(smtp.Data)
	n := smtp.Needs{
		Helo:         checks || e.lim.UsesHelo() || e.alerts != nil, // alerts name the HELO
		Rcpt:         e.lim.Needs(smtp.Rcpt),
		Header:       edits || size || message,
		Body:         size || e.dkim != nil,
		ExactHeaders: e.dkim != nil,
		Edits:        edits,
		SASLUser:     checks || message || e.lim.UsesSASLUser(),
		QueueID:      true, // every refusal's log line names it
	}
	// Nothing after MAIL FROM can change the answer or the message: no
	// rule counts recipients or bytes, and no header is ever written. The
	// MTA then leaves sluice out of the rest of the message — for Postfix
	// the end-of-message round trip its cleanup server would make.
	n.AcceptAtMail = !n.Rcpt && !n.Edits && !size
	return n
}

// answers says which stages may be answered other than continue, with
// accept the answer at MAIL FROM may be Accept. A stage is answered when
// a rule counting at it may refuse or pause it, when checks run at it
// (client checks at connect, sender checks at MAIL FROM), and, once
// anything in a session may be refused, when escalation may pause or end
// the replies that follow (not at connect: nothing came before it).
func (e *Engine) answers(accept bool) smtp.Answers {
	refuses := e.checks || e.dkim != nil || e.dmarc != nil
	for st := smtp.Connect; st <= smtp.Data && !refuses; st++ {
		refuses = e.lim.Answers(st)
	}
	escalates := e.pol.Escalates() && refuses
	return smtp.Answers{
		Connect: e.lim.Answers(smtp.Connect) || e.checks,
		Helo:    e.lim.Answers(smtp.Helo) || escalates,
		Mail:    e.lim.Answers(smtp.Mail) || e.checks || accept || escalates,
		Rcpt:    e.lim.Answers(smtp.Rcpt) || escalates,
	}
}

// mayTag reports whether any rule can end in a header under the global
// mode: an enforced tag or hold (a held message says why in a header), a
// rule applied in tag mode. A rule in dry-run never shows.
func (e *Engine) mayTag() bool {
	for a, m := range e.lim.Actions() {
		switch e.pol.Effective(m) {
		case smtp.ModeTag:
			return true
		case smtp.ModeEnforce:
			if a == smtp.ActionTag || a == smtp.ActionHold {
				return true
			}
		}
	}
	return false
}

// Open starts a session for a client that has just connected.
func (e *Engine) Open(c smtp.Client) smtp.Session {
	s := &Session{e: e, lim: e.lim.NewSession(), local: c.Local}
	s.f.ClientIP = c.IP.Unmap()
	s.f.ClientName = c.Name
	s.f.Listener = c.Listener
	s.f.Trusted = e.lim.Trusted(s.f.ClientIP)
	e.listeners.see(c.Listener)
	return s
}

var _ smtp.Engine = (*Engine)(nil)
