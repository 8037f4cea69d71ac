package engine

import (
	"context"
	"slices"
	"strings"

	"github.com/emersion/go-msgauth/authres"

	"sluice/auth"
	"sluice/auth/dkim"
	"sluice/auth/dmarc"
	"sluice/policy"
	"sluice/smtp"
)

// messageAuth is one transaction's DKIM and DMARC: what they read of the
// header, the verification streaming as the body comes, and at the end
// their results and verdicts.
type messageAuth struct {
	fields []dkim.Field // every header field, when DKIM runs
	from   []string     // every From value, when DMARC runs
	dk     *dkim.Message

	dkim     []dkim.Result
	dmarc    *dmarc.Result
	results  []auth.Result // for the decision's Checks
	verdicts []policy.Verdict
}

// reset drops the transaction's state; a verification still running is
// stopped.
func (m *messageAuth) reset() {
	if m.dk != nil {
		m.dk.Close()
	}
	*m = messageAuth{fields: m.fields[:0], from: m.from[:0]}
}

// dkimOn and dmarcOn say whether the checks run for this transaction:
// never for a trusted client, and for an authenticated one only when the
// check's skip_authenticated is off.
func (s *Session) dkimOn() bool {
	return s.e.dkim != nil && !s.f.Trusted && !(s.f.Authenticated() && s.e.dkim.SkipAuthenticated())
}

func (s *Session) dmarcOn() bool {
	return s.e.dmarc != nil && !s.f.Trusted && !(s.f.Authenticated() && s.e.dmarc.SkipAuthenticated())
}

// messageHeader keeps what DKIM and DMARC read of a header field.
func (s *Session) messageHeader(f dkim.Field) {
	if s.dkimOn() {
		s.ma.fields = append(s.ma.fields, f)
	}
	if s.dmarcOn() && strings.EqualFold(f.Name, "From") {
		s.ma.from = append(s.ma.from, strings.TrimPrefix(f.Value, " "))
	}
}

// messageBody streams a body chunk into the DKIM verifier, started at
// the first chunk: the header is complete by then, and the key lookups
// run while the rest of the body comes.
func (s *Session) messageBody(chunk []byte) {
	if !s.dkimOn() {
		return
	}
	if s.ma.dk == nil {
		s.ma.dk = s.e.dkim.Start(s.ma.fields)
	}
	s.ma.dk.Write(chunk)
}

// checkMessage runs DKIM and DMARC at end of message: the facts rules
// count per (the passing d=, the From domain, the DMARC result), the
// verdicts for the decision, and the Authentication-Results entries.
func (s *Session) checkMessage(ctx context.Context) {
	m := &s.ma
	if s.dkimOn() {
		start := s.e.now()
		if m.dk == nil {
			m.dk = s.e.dkim.Start(m.fields) // a message without a body
		}
		m.dkim = m.dk.Finish(ctx)
		m.dk = nil
		ars := []authres.Result{dkim.NoSignature()}
		if len(m.dkim) > 0 {
			ars = ars[:0]
		}
		details := make([]string, 0, len(m.dkim))
		for i := range m.dkim {
			r := &m.dkim[i]
			ars = append(ars, r.AuthResult())
			details = append(details, r.Detail())
			if d := strings.ToLower(strings.TrimSuffix(r.Domain, ".")); r.Value == dkim.Pass && d != "" && !slices.Contains(s.f.DKIMDomains, d) {
				s.f.DKIMDomains = append(s.f.DKIMDomains, d)
			}
		}
		v, value := s.e.dkim.Outcome(m.dkim)
		detail := "dkim=none: no signature"
		if len(details) > 0 {
			detail = smtp.ASCII(strings.Join(details, "; "), 400)
		}
		s.addResult("dkim", value, detail, v, ars...)
		s.e.obs.Check("dkim", value, s.e.now().Sub(start))
	}
	if s.dmarcOn() {
		start := s.e.now()
		spf, spfDomain := s.msg.SPFMailFrom()
		r := s.e.dmarc.Evaluate(ctx, &dmarc.Input{From: m.from, SPF: spf, SPFDomain: spfDomain, DKIM: s.f.DKIMDomains})
		m.dmarc = &r
		s.f.FromDomain, s.f.DMARC = r.FromDomain, r.Value
		v, _ := s.e.dmarc.Outcome(&r)
		s.addResult("dmarc", r.Value, r.Detail(), v, r.AuthResult())
		s.e.obs.Check("dmarc", r.Value, s.e.now().Sub(start))
	}
}

// addResult records a check's result for the headers and the decision,
// and its verdict when it asks for something.
func (s *Session) addResult(check, value, detail string, v *policy.Verdict, ars ...authres.Result) {
	r := auth.Result{Check: check, Value: value, Detail: detail}
	if v != nil {
		r.Action, r.Mode = v.Action, v.Mode
		s.ma.verdicts = append(s.ma.verdicts, *v)
	}
	s.msg.Add(r, ars...)
	s.ma.results = append(s.ma.results, r)
}
