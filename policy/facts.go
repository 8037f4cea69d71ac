package policy

import "net/netip"

// Facts are what the session has learnt of the SMTP session so far; limits
// and auth read them to answer. Addresses are as the client gave them,
// without angle brackets; Sender is "" for the null sender <>.
type Facts struct {
	ClientIP   netip.Addr // invalid for a unix-socket or unknown client
	ClientName string     // the MTA's verified PTR name, or "unknown"
	Listener   string     // {daemon_name}: which smtpd service, e.g. "smtpd" or "submission"
	Helo       string
	SASLUser   string // {auth_authen}; "" when not authenticated
	Sender     string
	Rcpt       string // the recipient of the RCPT being asked about
	RcptCount  int    // recipients accepted so far in this transaction
	Size       int64  // message size in bytes, known at end of message
	QueueID    string // {i}, when the MTA has sent it
	Trusted    bool   // the client is on the global trusted list

	// Known at end of message, when DKIM and DMARC run: the d= of each
	// signature that passed (lower case, each once), the domain of the
	// From field, and the DMARC result (pass, fail, none, temperror,
	// permerror; "" when DMARC did not run).
	DKIMDomains []string
	FromDomain  string
	DMARC       string
}

// Authenticated reports whether the client logged in with SMTP AUTH.
func (f *Facts) Authenticated() bool { return f.SASLUser != "" }
