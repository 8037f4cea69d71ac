package dkim

import (
	"strings"
	"testing"
	"time"
)

// recorder is a hash.Hash that keeps what it was given, to see the
// canonical form itself.
type recorder struct{ b []byte }

func (r *recorder) Write(p []byte) (int, error) { r.b = append(r.b, p...); return len(p), nil }
func (r *recorder) Sum(b []byte) []byte         { return append(b, r.b...) }
func (r *recorder) Reset()                      { r.b = nil }
func (r *recorder) Size() int                   { return 0 }
func (r *recorder) BlockSize() int              { return 1 }

func canonicalBody(relaxed bool, chunk int, body string) string {
	b := &bodyHasher{h: new(recorder), relaxed: relaxed}
	for len(body) > 0 {
		n := min(chunk, len(body))
		b.Write([]byte(body[:n]))
		body = body[n:]
	}
	return string(b.Sum())
}

// The body's canonical forms are RFC 6376's, §3.4.5's example among
// them, whatever the chunks it comes in: trailing empty lines dropped, a
// bare LF taken as a line end, relaxed whitespace made one space and
// removed at line ends, an empty body one CRLF when simple and nothing
// when relaxed, and a lone CR kept as content.
func TestBodyCanonicalForms(t *testing.T) {
	for _, tc := range []struct{ body, simple, relaxed string }{
		{" C \r\nD \t E\r\n\r\n\r\n", " C \r\nD \t E\r\n", " C\r\nD E\r\n"},
		{"", "\r\n", ""},
		{"\r\n\r\n", "\r\n", ""},
		{"no line end", "no line end\r\n", "no line end\r\n"},
		{"a\n\nb\n", "a\r\n\r\nb\r\n", "a\r\n\r\nb\r\n"},
		{"a  \t b \r\n \r\n\t\r\nc\r\n \r\n", "a  \t b \r\n \r\n\t\r\nc\r\n \r\n", "a b\r\n\r\n\r\nc\r\n"},
		{"x\ry\r\n", "x\ry\r\n", "x\ry\r\n"},
		{"end with CR\r", "end with CR\r\r\n", "end with CR\r\r\n"},
		{"  lead\r\n", "  lead\r\n", " lead\r\n"},
		{strings.Repeat("\r\n", 100) + "late\r\n", strings.Repeat("\r\n", 100) + "late\r\n", strings.Repeat("\r\n", 100) + "late\r\n"},
	} {
		for _, chunk := range []int{1, 2, 3, 5, 1 << 16} {
			if got := canonicalBody(false, chunk, tc.body); got != tc.simple {
				t.Errorf("simple %q in chunks of %d: %q, want %q", tc.body, chunk, got, tc.simple)
			}
			if got := canonicalBody(true, chunk, tc.body); got != tc.relaxed {
				t.Errorf("relaxed %q in chunks of %d: %q, want %q", tc.body, chunk, got, tc.relaxed)
			}
		}
	}
}

// Relaxed header fields are RFC 6376 §3.4.5's example: name in lower
// case, the value unfolded, whitespace runs one space, none at the ends.
func TestRelaxedHeader(t *testing.T) {
	for _, tc := range []struct{ name, value, want string }{
		{"A", "X", "a:X"},
		{"B ", "Y\t\r\n\tZ  ", "b:Y Z"},
		{"Subject", " a:  b ", "subject:a: b"},
		{"X", "", "x:"},
	} {
		var w strings.Builder
		relaxedHeader(&w, tc.name, tc.value)
		if w.String() != tc.want {
			t.Errorf("%q: %q, want %q", tc.name+":"+tc.value, w.String(), tc.want)
		}
	}
}

// withoutB empties the b= tag only, not bh=, wherever it stands.
func TestWithoutB(t *testing.T) {
	for in, want := range map[string]string{
		"v=1; bh=abc; b=sig\r\n\tnature; d=x": "v=1; bh=abc; b=; d=x",
		"v=1; b = sig":                        "v=1; b =",
		"b=sig;bh=x":                          "b=;bh=x",
		"v=1; bh=abc":                         "v=1; bh=abc",
	} {
		if got := withoutB(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

// However a body is cut into chunks, its canonical forms are the same:
// the state carried between chunks (a CR, whitespace, held-back empty
// lines) loses and adds nothing.
func FuzzBodyChunks(f *testing.F) {
	f.Add([]byte(" C \r\nD \t E\r\n\r\n\r\n"), uint16(3))
	f.Add([]byte("a\r\r\n \t\n\r"), uint16(1))
	f.Add([]byte("x\r\n\r\n\r\ny  \r\n"), uint16(5))
	f.Fuzz(func(t *testing.T, body []byte, cut uint16) {
		for _, relaxed := range []bool{false, true} {
			whole := canonicalBody(relaxed, len(body)+1, string(body))
			if got := canonicalBody(relaxed, 1, string(body)); got != whole {
				t.Fatalf("relaxed=%v byte by byte %q, whole %q", relaxed, got, whole)
			}
			n := int(cut)%(len(body)+1) + 1
			if got := canonicalBody(relaxed, n, string(body)); got != whole {
				t.Fatalf("relaxed=%v in chunks of %d %q, whole %q", relaxed, n, got, whole)
			}
			if whole != "" && !strings.HasSuffix(whole, "\r\n") {
				t.Fatalf("relaxed=%v: %q does not end in CRLF", relaxed, whole)
			}
		}
	})
}

// A DKIM-Signature or a key record of any content parses to a signature
// or a reason, never a panic, and a signature found good has what
// verifying needs.
func FuzzParseSignature(f *testing.F) {
	f.Add("v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=s1; h=from:to; bh=YWJj; b=ZGVm", "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
	f.Add("v=1; a=ed25519-sha256; d=x; s=y; h=From; bh=; b=; l=10; x=1", "p=; t=y:s")
	f.Fuzz(func(t *testing.T, sig, rec string) {
		s := parseSignature(Field{Name: "DKIM-Signature", Value: sig}, time.Unix(1700000000, 0))
		if s.bad == nil && (s.keyAlgo == "" || len(s.headers) == 0 || s.bodyHash == nil && s.sig == nil) {
			t.Fatalf("%q parsed good without what verifying needs: %+v", sig, s)
		}
		if s.bad == nil {
			headerHash([]Field{{Name: "From", Value: "a@b"}, {Name: "DKIM-Signature", Value: sig}}, s)
		}
		if k, p := parseKey(rec); (k == nil) == (p == nil) {
			t.Fatalf("%q: key %v and problem %v", rec, k, p)
		}
	})
}
