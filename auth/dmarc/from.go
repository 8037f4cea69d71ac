package dmarc

import (
	"fmt"
	"net/mail"
	"strings"
)

// maxFromField bounds the From value parsed: an address list of a few
// hundred bytes is normal; the MTA's header limits bound the rest.
const maxFromField = 16 << 10

// FromDomain reads the RFC5322.From domain DMARC is about from the values
// of every From field of the message. RFC 7489 §6.6.1: a message with
// no From, several From fields, or one From with several addresses has
// no single author domain, and the result is permerror — never the
// domain of one of them, which is what a forger would choose
// (CVE-2019-16378). An address that does not parse is permerror too.
func FromDomain(fields []string) (string, error) {
	switch len(fields) {
	case 0:
		return "", fmt.Errorf("no From field")
	case 1:
	default:
		return "", fmt.Errorf("%d From fields", len(fields))
	}
	v := fields[0]
	if len(v) > maxFromField {
		return "", fmt.Errorf("From field of %d bytes", len(v))
	}
	// The MTA passes a folded value with "\n" (Postfix) or "\r\n" line
	// breaks; unfold it.
	v = strings.NewReplacer("\r\n", "", "\n", "").Replace(v)
	addrs, err := mail.ParseAddressList(v)
	if err != nil {
		return "", fmt.Errorf("From does not parse: %v", err)
	}
	if len(addrs) != 1 {
		return "", fmt.Errorf("From has %d addresses", len(addrs))
	}
	at := strings.LastIndexByte(addrs[0].Address, '@')
	if at < 0 {
		return "", fmt.Errorf("From address has no domain")
	}
	d := NormalizeDomain(addrs[0].Address[at+1:])
	if d == "" || !strings.Contains(d, ".") {
		return "", fmt.Errorf("From domain %q is not a domain name", addrs[0].Address[at+1:])
	}
	return d, nil
}
