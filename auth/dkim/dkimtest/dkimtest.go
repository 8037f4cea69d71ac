// Package dkimtest signs messages for tests with go-msgauth's signer and
// gives the DNS records of the keys: RSA 2048, ed25519, and the example
// key and signed message of RFC 8463's appendix.
package dkimtest

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// Key is a signing key and the selector and domain it is published at.
type Key struct {
	Domain, Selector string
	Signer           crypto.Signer
	// Flags is the record's t= tag ("y", "s"); empty: none.
	Flags string
}

// Name is where the key's record lives.
func (k *Key) Name() string { return k.Selector + "._domainkey." + k.Domain }

// Record is the key's TXT record (v=DKIM1; k=...; p=...).
func (k *Key) Record() string {
	var kind string
	var pub []byte
	switch p := k.Signer.Public().(type) {
	case *rsa.PublicKey:
		kind = "rsa"
		pub, _ = x509.MarshalPKIXPublicKey(p)
	case ed25519.PublicKey:
		kind, pub = "ed25519", p
	default:
		panic(fmt.Sprintf("dkimtest: key type %T", p))
	}
	rec := "v=DKIM1; k=" + kind + "; p=" + base64.StdEncoding.EncodeToString(pub)
	if k.Flags != "" {
		rec += "; t=" + k.Flags
	}
	return rec
}

// ZoneLine is the record in zone-file syntax, strings of 255 bytes at most.
func (k *Key) ZoneLine() string {
	rec := k.Record()
	var parts []string
	for len(rec) > 200 {
		parts = append(parts, `"`+rec[:200]+`"`)
		rec = rec[200:]
	}
	parts = append(parts, `"`+rec+`"`)
	return k.Name() + ". 300 IN TXT " + strings.Join(parts, " ")
}

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

// RSA2048 is an RSA key of 2048 bits, made once per process.
func RSA2048(domain, selector string) *Key {
	rsaOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
	return &Key{Domain: domain, Selector: selector, Signer: rsaKey}
}

// RSA makes an RSA key of bits. A short one, to see it refused, needs
// //go:debug rsa1024min=0 in the test that makes it.
func RSA(domain, selector string, bits int) *Key {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		panic(err)
	}
	return &Key{Domain: domain, Selector: selector, Signer: k}
}

// Ed25519 is an ed25519 key made from a fixed seed, so the same in every
// run.
func Ed25519(domain, selector string) *Key {
	seed := bytes.Repeat([]byte{7}, ed25519.SeedSize)
	return &Key{Domain: domain, Selector: selector, Signer: ed25519.NewKeyFromSeed(seed)}
}

// Options choose how a message is signed.
type Options struct {
	Relaxed    bool     // relaxed/relaxed; default simple/simple
	Headers    []string // the h= list; default From, To, Subject, Date, Message-ID
	Identifier string   // i=
}

// Sign returns msg (CRLF line ends) with a DKIM-Signature by k on top.
func Sign(msg []byte, k *Key, o Options) []byte {
	opts := &msgdkim.SignOptions{Domain: k.Domain, Selector: k.Selector, Signer: k.Signer, Identifier: o.Identifier,
		HeaderKeys: o.Headers}
	if opts.HeaderKeys == nil {
		opts.HeaderKeys = []string{"From", "To", "Subject", "Date", "Message-ID"}
	}
	if o.Relaxed {
		opts.HeaderCanonicalization, opts.BodyCanonicalization = msgdkim.CanonicalizationRelaxed, msgdkim.CanonicalizationRelaxed
	}
	var out bytes.Buffer
	if err := msgdkim.Sign(&out, bytes.NewReader(msg), opts); err != nil {
		panic(err)
	}
	return out.Bytes()
}

// Message is a plain message from an address, with a body of about size
// bytes (CRLF line ends).
func Message(from, to, subject string, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Sender <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: Mon, 2 Jun 2025 10:00:00 +0000\r\nMessage-ID: <%s.%d@dkimtest.example>\r\n\r\n",
		from, to, subject, strings.NewReplacer(" ", "-", "@", ".").Replace(subject), size)
	line := "The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	if size == 0 {
		b.WriteString("Hello.\r\n")
	}
	return b.Bytes()
}

// RFC 8463 appendix A: the ed25519 key (A.1), the records of its two keys
// (A.2: brisbane, ed25519; test, RSA 1024) and the message signed with
// both (A.3).
const (
	RFC8463Domain     = "football.example.com"
	RFC8463Ed25519TXT = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
	RFC8463RSATXT     = "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB"
	RFC8463Seed       = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
)

// RFC8463Message is the signed message of RFC 8463 A.3, with CRLF line
// ends.
func RFC8463Message() []byte {
	return []byte(strings.ReplaceAll(`DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;
 d=football.example.com; i=@football.example.com;
 q=dns/txt; s=brisbane; t=1528637909; h=from : to :
 subject : date : message-id : from : subject : date;
 bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
 b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus
 Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==
DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;
 d=football.example.com; i=@football.example.com;
 q=dns/txt; s=test; t=1528637909; h=from : to : subject :
 date : message-id : from : subject : date;
 bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
 b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3
 DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz
 dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=
From: Joe SixPack <joe@football.example.com>
To: Suzie Q <suzie@shopping.example.net>
Subject: Is dinner ready?
Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)
Message-ID: <20030712040037.46341.5F8J@football.example.com>

Hi.

We lost the game.  Are you hungry yet?

Joe.
`, "\n", "\r\n"))
}

// RFC8463Key is the appendix's ed25519 key, to sign more with it.
func RFC8463Key() *Key {
	seed, err := base64.StdEncoding.DecodeString(RFC8463Seed)
	if err != nil {
		panic(err)
	}
	return &Key{Domain: RFC8463Domain, Selector: "brisbane", Signer: ed25519.NewKeyFromSeed(seed)}
}

// Field is one header field as a milter receives it: the value without
// the space after the colon, folded lines joined with "\r\n".
type Field struct {
	Name, Value string
	Exact       bool
}

// Split cuts a message into the header fields a milter receives and its
// body.
func Split(msg []byte) ([]Field, []byte) {
	head, body, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	var fs []Field
	for _, line := range strings.Split(string(head), "\r\n") {
		if len(fs) > 0 && (strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t")) {
			fs[len(fs)-1].Value += "\r\n" + line
			continue
		}
		name, value, _ := strings.Cut(line, ":")
		fs = append(fs, Field{Name: name, Value: strings.TrimPrefix(value, " ")})
	}
	return fs, body
}
