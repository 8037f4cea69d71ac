// Package dkim verifies the DKIM signatures of a message (RFC 6376, RFC
// 8463) as the MTA streams it, with keys fetched through sluice's resolver.
//
// The body is hashed as the chunks come, in the session's goroutine
// (memory: what one chunk needs, whatever the message's size); keys are
// looked up through the resolver while it comes (cache, rate cap, byte
// budget; a lookup that times out is temperror); key flags t=y and t=s
// are honoured, RFC 8301's minimums enforced; the message's outcome maps
// to the action the config asks.
package dkim

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-msgauth/authres"
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
// space after the colon, or, when Exact, as written after the colon;
// folded lines joined with "\n" or "\r\n".
type Field struct {
	Name, Value string
	Exact       bool
}

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
	sigs    []*signature
	heads   [][sha256.Size]byte // each signature's header hash
	simple  *bodyHasher         // nil when no signature needs that form
	relaxed *bodyHasher
	written int64
	cut     bool // the body went past max_bytes

	done   chan struct{} // closed when every key lookup has ended
	cancel context.CancelFunc
	mu     sync.Mutex
	keys   map[string]keyAnswer // by key record name
}

type keyAnswer struct {
	k   *key
	bad *problem
}

// Start begins verifying a message whose header fields are fields. The
// key lookups start at once, while the body comes.
func (v *Verifier) Start(fields []Field) *Message {
	m := &Message{v: v}
	now := time.Now()
	for _, f := range fields {
		if IsSignature(f.Name) && len(m.sigs) < v.maxSigs {
			m.sigs = append(m.sigs, parseSignature(f, now))
		}
	}
	if len(m.sigs) == 0 {
		return m
	}
	m.heads = make([][sha256.Size]byte, len(m.sigs))
	names := make(map[string]bool, len(m.sigs))
	for i, s := range m.sigs {
		if s.bad != nil {
			continue
		}
		m.heads[i] = headerHash(fields, s)
		names[strings.ToLower(s.keyName())] = true
		switch {
		case s.relaxedBody && m.relaxed == nil:
			m.relaxed = &bodyHasher{h: sha256.New(), relaxed: true}
		case !s.relaxedBody && m.simple == nil:
			m.simple = &bodyHasher{h: sha256.New()}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	ctx = resolver.WithBudget(ctx, v.budget)
	m.cancel, m.done, m.keys = cancel, make(chan struct{}), make(map[string]keyAnswer, len(names))
	if len(names) == 0 {
		close(m.done)
		return m
	}
	var left sync.WaitGroup
	for name := range names {
		left.Add(1)
		guard.Go(v.log, "dkim key lookup", func() {
			defer left.Done()
			k, bad := v.lookupKey(ctx, name)
			m.mu.Lock()
			m.keys[name] = keyAnswer{k, bad}
			m.mu.Unlock()
		})
	}
	guard.Go(v.log, "dkim key lookups", func() {
		left.Wait()
		close(m.done)
	})
	return m
}

// lookupKey fetches and parses a key record. A lookup that may succeed
// later (timeout, SERVFAIL, the message's time up) is temperror; a name
// that does not exist, or holds no single record, permerror.
func (v *Verifier) lookupKey(ctx context.Context, name string) (*key, *problem) {
	txts, err := v.res.LookupTXT(ctx, name)
	var de *net.DNSError
	switch {
	case err != nil && (ctx.Err() != nil || errors.As(err, &de) && (de.IsTimeout || de.IsTemporary)):
		return nil, &problem{TempError, "key unavailable: " + err.Error()}
	case err != nil:
		return nil, permErr("no key for signature: %v", err)
	case len(txts) == 0:
		return nil, permErr("no valid key found")
	case len(txts) > 1:
		// RFC 6376 §3.6.2.2 leaves several records undefined.
		return nil, permErr("multiple TXT records found for key")
	}
	return parseKey(txts[0])
}

// headerHash hashes what a signature signed of the header (RFC 6376
// §3.7): the fields h= names, each name taken from the bottom up, then
// the signature's own field with its b= emptied and no line end.
func headerHash(fields []Field, s *signature) [sha256.Size]byte {
	var w strings.Builder
	put := func(f Field, last bool) {
		if s.relaxedHeader {
			relaxedHeader(&w, f.Name, f.Value)
			if !last {
				w.WriteString("\r\n")
			}
			return
		}
		writeField(&w, f)
		if last {
			str := w.String()
			w.Reset()
			w.WriteString(strings.TrimSuffix(str, "\r\n"))
		}
	}
	taken := make(map[string]int, len(s.headers))
	for _, h := range s.headers {
		name := strings.ToLower(h)
		skip := taken[name]
		for j := len(fields) - 1; j >= 0; j-- {
			if !strings.EqualFold(fields[j].Name, h) {
				continue
			}
			if skip == 0 {
				put(fields[j], false)
				taken[name]++
				break
			}
			skip--
		}
	}
	own := s.field
	own.Value = withoutB(own.Value)
	put(own, true)
	return sha256.Sum256([]byte(w.String()))
}

// writeField writes a field as it was in the message. Unless the value
// is exact, the MTA dropped a space after the colon: one is put back,
// except before a value that starts with a tab or a line break, which
// had none to drop (simple canonicalisation sees the difference).
func writeField(b *strings.Builder, f Field) {
	b.WriteString(f.Name)
	b.WriteByte(':')
	if !f.Exact && f.Value != "" && f.Value[0] != '\t' && f.Value[0] != '\n' && f.Value[0] != '\r' {
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

// Write hashes a body chunk, as the MTA sent it (CRLF line ends). Past
// max_bytes the rest is only counted.
func (m *Message) Write(chunk []byte) {
	if m.cut || (m.simple == nil && m.relaxed == nil) {
		return
	}
	if left := m.v.maxBytes - m.written; int64(len(chunk)) > left {
		chunk, m.cut = chunk[:left], true
	}
	m.written += int64(len(chunk))
	if m.simple != nil {
		m.simple.Write(chunk)
	}
	if m.relaxed != nil {
		m.relaxed.Write(chunk)
	}
}

// Finish ends the body and returns each signature's result, from the top
// of the header, at most max_signatures; nil for a message without one.
// ctx bounds the wait for the key lookups still under way.
func (m *Message) Finish(ctx context.Context) (out []Result) {
	if len(m.sigs) == 0 {
		return nil
	}
	select {
	case <-m.done:
	case <-ctx.Done():
		m.cancel() // the lookups give up
		<-m.done
	}
	m.cancel()
	var simpleSum, relaxedSum []byte
	if m.simple != nil {
		simpleSum = m.simple.Sum()
	}
	if m.relaxed != nil {
		relaxedSum = m.relaxed.Sum()
	}
	out = make([]Result, len(m.sigs))
	for i, s := range m.sigs {
		r := Result{Domain: s.d, Identifier: s.i, Selector: s.s, Algorithm: s.a, B: s.b}
		if r.Identifier == "" && r.Domain != "" {
			r.Identifier = "@" + r.Domain
		}
		body := simpleSum
		if s.relaxedBody {
			body = relaxedSum
		}
		m.mu.Lock()
		ka := m.keys[strings.ToLower(s.keyName())]
		m.mu.Unlock()
		var err error
		func() {
			defer guard.RecoverErr(m.v.log, "dkim verify", &err)
			r.Value, r.Reason = judge(s, m.heads[i], body, ka)
		}()
		if err != nil {
			r.Value, r.Reason = TempError, "internal error"
		}
		if ka.k != nil {
			applyKeyFlags(&r, ka.k)
		}
		if m.cut && r.Value == Fail {
			r.Value, r.Reason = Neutral, "message over max_bytes: its body was verified up to the cap only"
		}
		out[i] = r
	}
	return out
}

// judge verifies one signature.
func judge(s *signature, head [sha256.Size]byte, body []byte, ka keyAnswer) (value, reason string) {
	switch {
	case s.bad != nil:
		return s.bad.value, s.bad.reason
	case ka.bad != nil:
		return ka.bad.value, ka.bad.reason
	case ka.k == nil:
		return TempError, "key unavailable: the lookup did not finish"
	case ka.k.algo != s.keyAlgo:
		return PermError, "inappropriate key algorithm"
	case ka.k.hashAlgs != nil && !containsFold(ka.k.hashAlgs, "sha256"):
		return PermError, "inappropriate hash algorithm"
	case subtle.ConstantTimeCompare(body, s.bodyHash) != 1:
		return Fail, "body hash did not verify"
	}
	var err error
	if ka.k.algo == "rsa" {
		err = rsa.VerifyPKCS1v15(ka.k.rsa, crypto.SHA256, head[:], s.sig)
	} else if !ed25519.Verify(ka.k.ed25519, head[:], s.sig) {
		err = errors.New("ed25519 verification error")
	}
	if err != nil {
		return Fail, "signature did not verify: " + err.Error()
	}
	return Pass, ""
}

// Close drops a message not finished (aborted, refused, or ended with its
// session): its key lookups stop.
func (m *Message) Close() {
	if m.cancel != nil {
		m.cancel()
	}
}

// applyKeyFlags honours the t= flags of the key record (RFC 6376
// §3.6.1): s, the key signs for d= itself only, so an i= in a subdomain
// is refused; y, the domain is testing DKIM, and its signatures must
// count as if the message were unsigned.
func applyKeyFlags(r *Result, k *key) {
	if r.Value != Pass && r.Value != Fail {
		return
	}
	if k.strict {
		_, idom, _ := strings.Cut(r.Identifier, "@")
		if !strings.EqualFold(strings.TrimSuffix(idom, "."), strings.TrimSuffix(r.Domain, ".")) {
			r.Value, r.Reason = PermError, "key flag t=s: i= must be in d= itself, not a subdomain"
			return
		}
	}
	if k.testing {
		r.Reason = "key in testing mode (t=y): the signature " + map[bool]string{true: "verified", false: "did not verify"}[r.Value == Pass] + " and counts as none"
		r.Value = Neutral
	}
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
