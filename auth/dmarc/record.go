package dmarc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	msgdmarc "github.com/emersion/go-msgauth/dmarc"
)

// Policy is what a domain asks of mail that fails DMARC.
type Policy = msgdmarc.Policy

const (
	PolicyNone       Policy = msgdmarc.PolicyNone
	PolicyQuarantine Policy = msgdmarc.PolicyQuarantine
	PolicyReject     Policy = msgdmarc.PolicyReject
)

// Record is a parsed DMARC record: go-msgauth's, which reads p, sp,
// adkim, aspf, pct and the reporting tags, and np, the policy for
// non-existent subdomains of the DMARCbis draft, which it does not.
type Record struct {
	msgdmarc.Record
	NP Policy // "" when the record has no np tag
}

// Percent is the pct tag, 100 when absent.
func (r *Record) Percent() int {
	if r.Record.Percent == nil {
		return 100
	}
	return *r.Record.Percent
}

// maxRecord bounds the record text parsed: real records are a few hundred
// bytes; the resolver bounds the answer, this the work on it.
const maxRecord = 4096

// ParseRecord parses one DMARC record. The text must start with
// "v=DMARC1" (RFC 7489 §6.4: v first, then p); unknown tags are ignored,
// as §6.3 asks.
func ParseRecord(txt string) (*Record, error) {
	if len(txt) > maxRecord {
		return nil, fmt.Errorf("record of %d bytes (at most %d)", len(txt), maxRecord)
	}
	if !isDMARC1(txt) {
		return nil, errors.New("record does not start with v=DMARC1")
	}
	rec, err := msgdmarc.Parse(txt)
	if err != nil {
		return nil, err
	}
	out := &Record{Record: *rec}
	for tag := range strings.SplitSeq(txt, ";") {
		k, v, ok := strings.Cut(tag, "=")
		if !ok || strings.TrimSpace(k) != "np" {
			continue
		}
		switch p := Policy(strings.TrimSpace(v)); p {
		case PolicyNone, PolicyQuarantine, PolicyReject:
			out.NP = p
		default:
			return nil, fmt.Errorf("invalid policy %q for np", v)
		}
	}
	return out, nil
}

// isDMARC1 reports whether a TXT record is a DMARC record at all: "v"
// first, with the value DMARC1, spaces allowed around the '='.
func isDMARC1(txt string) bool {
	k, rest, ok := strings.Cut(txt, "=")
	if !ok || strings.TrimSpace(k) != "v" {
		return false
	}
	v, _, _ := strings.Cut(rest, ";")
	return strings.TrimSpace(v) == "DMARC1"
}

// errNoRecord is a name without exactly one DMARC record.
var errNoRecord = errors.New("no DMARC record")

// lookupRecord fetches and parses the record at _dmarc.<domain>. TXT
// records that are not DMARC records are left out; none, or more than one
// (RFC 7489 §6.6.3: "policy discovery terminates"), is errNoRecord with
// many telling which. A DNS failure that may pass is returned as it is
// (a *net.DNSError, IsTemporary or IsTimeout).
func lookupRecord(ctx context.Context, res Resolver, domain string) (rec *Record, many bool, err error) {
	txts, err := res.LookupTXT(ctx, "_dmarc."+domain)
	if err != nil {
		if temporary(err) {
			return nil, false, err
		}
		return nil, false, errNoRecord
	}
	var found []string
	for _, t := range txts {
		if isDMARC1(t) {
			found = append(found, t)
		}
	}
	switch len(found) {
	case 0:
		return nil, false, errNoRecord
	case 1:
		rec, err := ParseRecord(found[0])
		return rec, false, err
	}
	return nil, true, errNoRecord
}

// temporary reports whether a lookup error may go away on a retry: a
// timeout, SERVFAIL, the rate cap. NXDOMAIN and the resolver's permanent
// refusals (an answer too large, the budget used up) are not.
func temporary(err error) bool {
	var de *net.DNSError
	if errors.As(err, &de) {
		return de.IsTimeout || de.IsTemporary
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}
