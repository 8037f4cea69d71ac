package dkim

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// problem is why a signature did not verify, and what that makes it.
type problem struct{ value, reason string }

func (p *problem) Error() string { return p.reason }

func permErr(format string, a ...any) *problem {
	return &problem{PermError, fmt.Sprintf(format, a...)}
}

// signature is one DKIM-Signature field (RFC 6376 §3.5), its tags
// checked. A field that fails the checks keeps what could be read of it
// for the result, and bad says why.
type signature struct {
	field         Field
	d, i, s, a, b string // as the signer wrote them, whitespace removed

	keyAlgo       string // rsa or ed25519
	relaxedHeader bool
	relaxedBody   bool
	headers       []string // h=
	bodyHash      []byte   // bh=
	sig           []byte   // b=
	bad           *problem
}

// keyName is where the signature's key record is.
func (s *signature) keyName() string { return s.s + "._domainkey." + s.d }

// parseTags splits a tag list (RFC 6376 §3.2). A tag given twice or a
// part without "=" is an error.
func parseTags(list string) (map[string]string, error) {
	tags := make(map[string]string, 12)
	for part := range strings.SplitSeq(list, ";") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			if strings.TrimSpace(part) == "" {
				continue
			}
			return tags, errors.New("a tag without '='")
		}
		k = strings.TrimSpace(k)
		if _, dup := tags[k]; dup {
			return tags, fmt.Errorf("tag %q given twice", k)
		}
		tags[k] = strings.TrimSpace(v)
	}
	return tags, nil
}

func stripSpace(s string) string {
	if !strings.ContainsAny(s, " \t\r\n") {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, s)
}

func splitColons(s string) []string {
	parts := strings.Split(s, ":")
	for i, p := range parts {
		parts[i] = stripSpace(p)
	}
	return parts
}

// parseSignature reads and checks a DKIM-Signature field; now is the
// time its x= expiry is judged against.
func parseSignature(f Field, now time.Time) *signature {
	s := &signature{field: f}
	tags, err := parseTags(f.Value)
	s.d, s.i, s.s, s.a = stripSpace(tags["d"]), stripSpace(tags["i"]), stripSpace(tags["s"]), stripSpace(tags["a"])
	s.b = prefix(stripSpace(tags["b"]), 12)
	if err != nil {
		s.bad = permErr("malformed signature tags: %v", err)
		return s
	}
	s.bad = s.check(tags, now)
	return s
}

func (s *signature) check(tags map[string]string, now time.Time) *problem {
	if tags["v"] != "1" {
		return permErr("incompatible signature version")
	}
	for _, t := range []string{"a", "b", "bh", "d", "h", "s"} {
		if _, ok := tags[t]; !ok {
			return permErr("signature missing required tag %s=", t)
		}
	}
	if s.i != "" && !strings.HasSuffix(strings.ToLower(s.i), "@"+strings.ToLower(s.d)) &&
		!strings.HasSuffix(strings.ToLower(s.i), "."+strings.ToLower(s.d)) {
		return permErr("domain mismatch: i= is not in d=")
	}
	s.headers = splitColons(tags["h"])
	from := false
	for _, h := range s.headers {
		from = from || strings.EqualFold(h, "from")
	}
	if !from {
		return permErr("From field not signed")
	}
	if x, ok := tags["x"]; ok {
		sec, err := strconv.ParseInt(stripSpace(x), 10, 64)
		if err != nil {
			return permErr("malformed expiration time x=")
		}
		if now.After(time.Unix(sec, 0)) {
			return permErr("signature has expired")
		}
	}
	if t, ok := tags["t"]; ok {
		if _, err := strconv.ParseInt(stripSpace(t), 10, 64); err != nil {
			return permErr("malformed time t=")
		}
	}
	if q, ok := tags["q"]; ok && !containsFold(splitColons(q), "dns/txt") {
		return permErr("unsupported public key query method")
	}
	keyAlgo, hashAlgo, ok := strings.Cut(s.a, "-")
	if !ok {
		return permErr("malformed algorithm name")
	}
	switch hashAlgo {
	case "sha256":
	case "sha1":
		// RFC 8301 §3.1: rsa-sha1 must not be used to verify.
		return permErr("hash algorithm too weak: sha1")
	default:
		return permErr("unsupported hash algorithm")
	}
	if keyAlgo != "rsa" && keyAlgo != "ed25519" {
		return permErr("unsupported key algorithm")
	}
	s.keyAlgo = keyAlgo
	hc, bc, _ := strings.Cut(stripSpace(tags["c"]), "/")
	switch hc {
	case "", "simple":
	case "relaxed":
		s.relaxedHeader = true
	default:
		return permErr("unsupported header canonicalization")
	}
	switch bc {
	case "", "simple":
	case "relaxed":
		s.relaxedBody = true
	default:
		return permErr("unsupported body canonicalization")
	}
	if _, ok := tags["l"]; ok {
		// l= leaves whatever follows it unsigned: anyone can append to a
		// message signed so. Counted as a failure, as go-msgauth does.
		return &problem{Fail, "message contains an insecure body length tag l="}
	}
	var err error
	if s.bodyHash, err = base64.StdEncoding.DecodeString(stripSpace(tags["bh"])); err != nil {
		return permErr("malformed body hash bh=")
	}
	if s.sig, err = base64.StdEncoding.DecodeString(stripSpace(tags["b"])); err != nil {
		return permErr("malformed signature b=")
	}
	return nil
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

// withoutB is a DKIM-Signature value with the value of its b= tag
// removed, whitespace around it included (RFC 6376 §3.7): what the
// signature was computed over.
func withoutB(v string) string {
	for off := 0; off < len(v); {
		end := strings.IndexByte(v[off:], ';')
		if end < 0 {
			end = len(v)
		} else {
			end += off
		}
		if k, _, ok := strings.Cut(v[off:end], "="); ok && strings.TrimSpace(k) == "b" {
			eq := off + len(k) + 1
			return v[:eq] + v[end:]
		}
		off = end + 1
	}
	return v
}

// key is a parsed key record (RFC 6376 §3.6.1).
type key struct {
	algo     string // rsa or ed25519
	rsa      *rsa.PublicKey
	ed25519  ed25519.PublicKey
	testing  bool // t=y
	strict   bool // t=s
	hashAlgs []string
}

func parseKey(rec string) (*key, *problem) {
	tags, err := parseTags(rec)
	if err != nil {
		return nil, permErr("key record error: %v", err)
	}
	if v, ok := tags["v"]; ok && v != "DKIM1" {
		return nil, permErr("incompatible public key version")
	}
	p, ok := tags["p"]
	if !ok {
		return nil, permErr("key syntax error: missing public key data")
	}
	if p = stripSpace(p); p == "" {
		return nil, permErr("key revoked")
	}
	der, err := base64.StdEncoding.DecodeString(p)
	if err != nil {
		return nil, permErr("key syntax error: p= is not base64")
	}
	k := &key{}
	switch stripSpace(tags["k"]) {
	case "rsa", "":
		pub, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			// RFC 6376 erratum 3017: an RSAPublicKey as well as a
			// SubjectPublicKeyInfo.
			if pub, err = x509.ParsePKCS1PublicKey(der); err != nil {
				return nil, permErr("key syntax error: %v", err)
			}
		}
		rk, ok := pub.(*rsa.PublicKey)
		if !ok {
			return nil, permErr("key syntax error: not an RSA public key")
		}
		// RFC 8301 §3.2: keys under 1024 bits must not verify.
		if bits := rk.N.BitLen(); bits < 1024 {
			return nil, permErr("key is too short: want 1024 bits, has %d bits", bits)
		}
		k.algo, k.rsa = "rsa", rk
	case "ed25519":
		if len(der) != ed25519.PublicKeySize {
			return nil, permErr("invalid Ed25519 public key size: %d bytes", len(der))
		}
		k.algo, k.ed25519 = "ed25519", ed25519.PublicKey(der)
	default:
		return nil, permErr("unsupported key algorithm")
	}
	if h, ok := tags["h"]; ok {
		k.hashAlgs = splitColons(h)
	}
	if s, ok := tags["s"]; ok {
		services := splitColons(s)
		if !containsFold(services, "*") && !containsFold(services, "email") {
			return nil, permErr("inappropriate service")
		}
	}
	for f := range strings.SplitSeq(tags["t"], ":") {
		switch strings.TrimSpace(f) {
		case "y":
			k.testing = true
		case "s":
			k.strict = true
		}
	}
	return k, nil
}
