// Package dkim verifies the DKIM signatures of a message (RFC 6376, RFC
// 8463) as the MTA streams it, with keys fetched through sluice's resolver.
//
// go-msgauth verifies; this package feeds it the header fields and body
// chunks as they come (memory: one chunk, whatever the message's size),
// asks for keys through the resolver (cache, rate cap, byte budget; a
// lookup that times out is temperror), enforces the key flags go-msgauth
// parses but ignores (t=y testing, t=s no subdomains), reads what its
// result lacks (selector, algorithm, b=) from the signature itself, and
// maps the message's outcome to the action the config asks.
package dkim

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-msgauth/authres"
	msgdkim "github.com/emersion/go-msgauth/dkim"
	"go.uber.org/zap"

	"sluice/auth/resolver"
	"sluice/guard"
	"sluice/policy"
	"sluice/smtp"
)

// Resolver is what keys are looked up through: *resolver.Resolver. Its
// errors are *net.DNSError, temporary (Temporary() true) for what a retry
// may change.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// Result values, as RFC 8601 names them.
const (
	Pass      = "pass"
	Fail      = "fail"
	Neutral   = "neutral"
	TempError = "temperror"
	PermError = "permerror"
	None      = "none"
)

// lookupTimeout bounds the key lookups of one message, whatever the
// resolver's own timeout: the end of the message must be answered well
// inside the MTA's milter timeout.
const lookupTimeout = 15 * time.Second

// Verifier verifies the messages of every session. It is safe for
// concurrent use.
type Verifier struct {
	res      Resolver
	log      *zap.Logger
	maxSigs  int
	maxBytes int64
	budget   int
	skipAuth bool
	actions  map[string]policy.ResultAction
}

// New makes a verifier from a config that passed Validate; keys are
// looked up through res, and one message's lookups may read budget bytes
// of answers ([dns] check_bytes).
func New(cfg *Config, res Resolver, budget int, log *zap.Logger) (*Verifier, error) {
	acts, err := cfg.actions()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &Verifier{res: res, log: log, maxSigs: cfg.MaxSignatures, maxBytes: cfg.MaxBytes, budget: budget,
		skipAuth: cfg.SkipAuthenticated == nil || *cfg.SkipAuthenticated, actions: acts}, nil
}

// SkipAuthenticated reports whether SMTP AUTH clients are left out.
func (v *Verifier) SkipAuthenticated() bool { return v.skipAuth }

// Field is one header field as the MTA passed it: the value without the
// space after the colon, folded lines joined with "\n" or "\r\n".
type Field struct{ Name, Value string }

// IsSignature reports whether a field is a DKIM-Signature.
func IsSignature(name string) bool { return strings.EqualFold(name, "DKIM-Signature") }

// Result is one signature's verification.
type Result struct {
	Value      string // pass, fail, neutral, temperror, permerror
	Domain     string // d=
	Identifier string // i=, or "@" and d= when absent
	Selector   string // s=
	Algorithm  string // a=
	B          string // the start of b=, to tell signatures apart (RFC 6008)
	Reason     string // why it did not pass
}

// Message is the verification of one message in flight: Start it with the
// header fields, Write each body chunk, then Finish (or Close to drop it).
// Its methods are called from one goroutine.
type Message struct {
	v       *Verifier
	sigs    []signature
	pw      *io.PipeWriter // nil when nothing verifies or the verifier stopped reading
	done    chan struct{}
	cancel  context.CancelFunc
	written int64
	cut     bool // the body went past max_bytes

	// Set by the verifying goroutine before done closes.
	verifs []*msgdkim.Verification
	err    error

	mu   sync.Mutex
	keys map[string]string // key records fetched, by name, for their flags
}

// Start begins verifying a message whose header fields are fields. The
// key lookups start at once, while the body comes.
func (v *Verifier) Start(fields []Field) *Message {
	m := &Message{v: v}
	for _, f := range fields {
		if IsSignature(f.Name) && len(m.sigs) < v.maxSigs {
			m.sigs = append(m.sigs, parseSignature(f.Value))
		}
	}
	if len(m.sigs) == 0 {
		return m
	}
	var hdr strings.Builder
	for _, f := range fields {
		writeField(&hdr, f)
	}
	hdr.WriteString("\r\n")
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	ctx = resolver.WithBudget(ctx, v.budget)
	pr, pw := io.Pipe()
	m.pw, m.cancel, m.done = pw, cancel, make(chan struct{})
	opts := &msgdkim.VerifyOptions{MaxVerifications: v.maxSigs, LookupTXT: func(name string) ([]string, error) {
		txts, err := v.res.LookupTXT(ctx, name)
		if err == nil && len(txts) == 1 {
			m.mu.Lock()
			if m.keys == nil {
				m.keys = make(map[string]string)
			}
			m.keys[strings.ToLower(name)] = txts[0]
			m.mu.Unlock()
		}
		return txts, err
	}}
	guard.Go(v.log, "dkim verify", func() {
		defer close(m.done)
		defer func() {
			// Whatever happened, the writer must not block on a reader
			// that has gone.
			pr.CloseWithError(errStopped)
		}()
		defer guard.RecoverErr(v.log, "dkim verify", &m.err)
		m.verifs, m.err = msgdkim.VerifyWithOptions(io.MultiReader(strings.NewReader(hdr.String()), pr), opts)
	})
	return m
}

var errStopped = errors.New("dkim: verifier stopped")

// writeField writes a field as it was in the message. The MTA dropped
// the space after the colon; a value that starts with a tab or a line
// break had none to drop (simple canonicalisation sees the difference).
func writeField(b *strings.Builder, f Field) {
	b.WriteString(f.Name)
	b.WriteByte(':')
	if f.Value != "" && f.Value[0] != '\t' && f.Value[0] != '\n' && f.Value[0] != '\r' {
		b.WriteByte(' ')
	}
	for i := 0; i < len(f.Value); i++ {
		if c := f.Value[i]; c == '\n' && (i == 0 || f.Value[i-1] != '\r') {
			b.WriteByte('\r')
		}
		b.WriteByte(f.Value[i])
	}
	b.WriteString("\r\n")
}

// Write feeds a body chunk, as the MTA sent it (CRLF line ends), to the
// verifier; it returns once the verifier has read it. Past max_bytes the
// rest is only counted.
func (m *Message) Write(chunk []byte) {
	if m.pw == nil || m.cut {
		return
	}
	if left := m.v.maxBytes - m.written; int64(len(chunk)) > left {
		chunk, m.cut = chunk[:left], true
	}
	m.written += int64(len(chunk))
	if _, err := m.pw.Write(chunk); err != nil {
		m.pw = nil // the verifier is done reading: a failure found early
	}
}

// Finish ends the body and returns each signature's result, from the top
// of the header, at most max_signatures; nil for a message without one.
// ctx bounds the wait for the key lookups still under way.
func (m *Message) Finish(ctx context.Context) []Result {
	if len(m.sigs) == 0 {
		return nil
	}
	if m.pw != nil {
		m.pw.Close()
		m.pw = nil
	}
	select {
	case <-m.done:
	case <-ctx.Done():
		m.cancel() // the lookups give up, and the verifier with them
		<-m.done
	}
	m.cancel()
	return m.results()
}

// Close drops a message not finished (aborted, refused, or ended with its
// session).
func (m *Message) Close() {
	if m.pw != nil {
		m.pw.CloseWithError(errStopped)
		m.pw = nil
	}
	if m.cancel != nil {
		m.cancel()
	}
}

func (m *Message) results() []Result {
	out := make([]Result, len(m.sigs))
	for i, s := range m.sigs {
		r := Result{Domain: s.d, Identifier: s.i, Selector: s.s, Algorithm: s.a, B: s.b}
		if r.Identifier == "" && r.Domain != "" {
			r.Identifier = "@" + r.Domain
		}
		var err error
		switch {
		case i < len(m.verifs) && m.verifs[i] != nil:
			err = m.verifs[i].Err
		case m.err != nil:
			err = m.err
		default:
			err = errors.New("not verified")
		}
		r.Value, r.Reason = judge(err)
		m.applyKeyFlags(&r)
		if m.cut && r.Value == Fail {
			r.Value, r.Reason = Neutral, "message over max_bytes: its body was verified up to the cap only"
		}
		out[i] = r
	}
	return out
}

// judge maps go-msgauth's error for one signature to a result.
func judge(err error) (string, string) {
	switch {
	case err == nil:
		return Pass, ""
	case msgdkim.IsTempFail(err):
		return TempError, err.Error()
	case msgdkim.IsPermFail(err):
		return PermError, err.Error()
	}
	var pe *guard.PanicError
	if errors.As(err, &pe) {
		return TempError, "internal error"
	}
	return Fail, err.Error()
}

// applyKeyFlags honours the t= flags of the key record (RFC 6376
// §3.6.1): y, the domain is testing DKIM, and its signatures must count
// as if the message were unsigned; s, the key signs for d= itself only,
// so an i= in a subdomain is refused.
func (m *Message) applyKeyFlags(r *Result) {
	if r.Value != Pass && r.Value != Fail {
		return
	}
	m.mu.Lock()
	rec, ok := m.keys[strings.ToLower(r.Selector+"._domainkey."+r.Domain)]
	m.mu.Unlock()
	if !ok {
		return
	}
	flags := tagValue(rec, "t")
	for f := range strings.SplitSeq(flags, ":") {
		if strings.TrimSpace(f) == "s" {
			_, idom, _ := strings.Cut(r.Identifier, "@")
			if !strings.EqualFold(strings.TrimSuffix(idom, "."), strings.TrimSuffix(r.Domain, ".")) {
				r.Value, r.Reason = PermError, "key flag t=s: i= must be in d= itself, not a subdomain"
				return
			}
		}
	}
	for f := range strings.SplitSeq(flags, ":") {
		if strings.TrimSpace(f) == "y" {
			r.Reason = "key in testing mode (t=y): the signature " + map[bool]string{true: "verified", false: "did not verify"}[r.Value == Pass] + " and counts as none"
			r.Value = Neutral
			return
		}
	}
}

// signature is what the result needs of a DKIM-Signature and go-msgauth
// does not return: the tags as the signer wrote them, whitespace removed.
type signature struct{ d, i, s, a, b string }

func parseSignature(v string) signature {
	return signature{
		d: tagValue(v, "d"), i: tagValue(v, "i"), s: tagValue(v, "s"), a: tagValue(v, "a"),
		b: prefix(tagValue(v, "b"), 12),
	}
}

// tagValue finds tag name in a tag=value list, folding whitespace
// removed; "" when absent.
func tagValue(list, name string) string {
	for t := range strings.SplitSeq(list, ";") {
		k, v, ok := strings.Cut(t, "=")
		if ok && strings.TrimSpace(k) == name {
			return strings.Map(func(r rune) rune {
				if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
					return -1
				}
				return r
			}, v)
		}
	}
	return ""
}

func prefix(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// Outcome is what the message's signatures add up to, for the action:
// pass when one passed (no action), else temperror, fail, permerror in
// that order, else none (unsigned, or only neutral). The verdict is nil
// when the config asks for nothing; key names the signature concerned.
func (v *Verifier) Outcome(rs []Result) (*policy.Verdict, string) {
	worst, at := None, -1
	rank := map[string]int{TempError: 3, Fail: 2, PermError: 1}
	for i, r := range rs {
		if r.Value == Pass {
			return nil, Pass
		}
		if rank[r.Value] > rank[worst] {
			worst, at = r.Value, i
		}
	}
	ra, ok := v.actions[worst]
	if !ok || at < 0 {
		return nil, worst
	}
	r := rs[at]
	key := smtp.ASCII(r.Domain, 200)
	if key == "" {
		key = "(no d=)"
	}
	return ra.Verdict("dkim", key, r.Detail()), worst
}

// Detail is the result for logs and X-Sluice-Check.
func (r *Result) Detail() string {
	s := "dkim=" + r.Value + " d=" + r.Domain + " s=" + r.Selector + " a=" + r.Algorithm
	if r.Reason != "" {
		s += ": " + r.Reason
	}
	return smtp.ASCII(s, 300)
}

// AuthResult is the signature's entry in Authentication-Results, with
// header.d, header.i, header.s, header.a and header.b (RFC 8601 §2.7.1,
// RFC 6008). Tag values are the signer's: escaped, so that no reader
// splitting at ';' or spaces takes one apart.
func (r *Result) AuthResult() authres.Result {
	p := map[string]string{
		"header.d": pvalue(r.Domain), "header.i": pvalue(r.Identifier), "header.s": pvalue(r.Selector),
		"header.a": pvalue(r.Algorithm), "header.b": pvalue(r.B),
	}
	if r.Reason != "" {
		p["reason"] = reasonEscaper.Replace(smtp.ASCII(r.Reason, 120))
	}
	return &authres.GenericResult{Method: "dkim", Value: authres.ResultValue(r.Value), Params: p}
}

// NoSignature is the Authentication-Results entry of an unsigned message.
func NoSignature() authres.Result {
	return &authres.GenericResult{Method: "dkim", Value: authres.ResultNone, Params: map[string]string{}}
}

var (
	pvalueEscaper = strings.NewReplacer(`"`, `\x22`, ";", `\x3b`, " ", `\x20`, "(", `\x28`, ")", `\x29`)
	reasonEscaper = strings.NewReplacer(";", ",", `"`, "'", `\`, "/")
)

func pvalue(s string) string { return pvalueEscaper.Replace(smtp.ASCII(s, 200)) }
