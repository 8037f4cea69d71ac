//go:debug rsa1024min=0

package dkim_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/authres"
	msgdkim "github.com/emersion/go-msgauth/dkim"

	"sluice/auth/dkim"
	"sluice/auth/dkim/dkimtest"
	"sluice/policy"
)

// keys is a resolver serving key records; names in slow time out after
// a while, as the real resolver's lookups do, the rest are NXDOMAIN.
type keys struct {
	mu   sync.Mutex
	txt  map[string]string
	slow map[string]bool
}

func (k *keys) add(key *dkimtest.Key) *keys {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.txt == nil {
		k.txt = map[string]string{}
	}
	k.txt[key.Name()] = key.Record()
	return k
}

func (k *keys) LookupTXT(ctx context.Context, name string) ([]string, error) {
	k.mu.Lock()
	rec, ok := k.txt[name]
	slow := k.slow[name]
	k.mu.Unlock()
	if slow {
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
		}
		return nil, &net.DNSError{Err: "i/o timeout", Name: name, IsTimeout: true}
	}
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	return []string{rec}, nil
}

func verifier(t testing.TB, res dkim.Resolver, cfg dkim.Config) *dkim.Verifier {
	t.Helper()
	cfg.Enabled = true
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	v, err := dkim.New(&cfg, res, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// verify streams msg through a verifier as a milter receives it: the
// header fields, then the body in chunks of chunk bytes.
func verify(ctx context.Context, v *dkim.Verifier, msg []byte, chunk int) []dkim.Result {
	fs, body := dkimtest.Split(msg)
	var fields []dkim.Field
	for _, f := range fs {
		fields = append(fields, dkim.Field(f))
	}
	m := v.Start(fields)
	for len(body) > 0 {
		n := min(chunk, len(body))
		m.Write(body[:n])
		body = body[n:]
	}
	return m.Finish(ctx)
}

func one(t *testing.T, rs []dkim.Result) dkim.Result {
	t.Helper()
	if len(rs) != 1 {
		t.Fatalf("%d results %+v, want 1", len(rs), rs)
	}
	return rs[0]
}

// Messages signed with RSA 2048 and ed25519, simple and relaxed, pass
// whether the body comes in one chunk or byte by byte; a changed body or
// a changed signed header fails.
func TestSignedMessages(t *testing.T) {
	rsaKey := dkimtest.RSA2048("rsa.example", "s2048")
	edKey := dkimtest.Ed25519("ed.example", "ed")
	v := verifier(t, new(keys).add(rsaKey).add(edKey), dkim.Config{})
	ctx := context.Background()
	for _, k := range []*dkimtest.Key{rsaKey, edKey} {
		for _, relaxed := range []bool{false, true} {
			msg := dkimtest.Sign(dkimtest.Message("a@"+k.Domain, "b@example.net", "signed", 3000), k, dkimtest.Options{Relaxed: relaxed})
			for _, chunk := range []int{1 << 16, 1, 7} {
				r := one(t, verify(ctx, v, msg, chunk))
				if r.Value != dkim.Pass || r.Domain != k.Domain || r.Selector != k.Selector || r.Identifier != "@"+k.Domain {
					t.Errorf("%s relaxed=%v chunk %d: %+v, want pass", k.Domain, relaxed, chunk, r)
				}
			}
			body := bytes.Replace(msg, []byte("lazy dog"), []byte("lazy cat"), 1)
			if r := one(t, verify(ctx, v, body, 4096)); r.Value != dkim.Fail || !strings.Contains(r.Reason, "body hash") {
				t.Errorf("%s relaxed=%v, body changed: %+v, want fail", k.Domain, relaxed, r)
			}
			hdr := bytes.Replace(msg, []byte("Subject: signed"), []byte("Subject: changed"), 1)
			if r := one(t, verify(ctx, v, hdr, 4096)); r.Value != dkim.Fail || !strings.Contains(r.Reason, "signature did not verify") {
				t.Errorf("%s relaxed=%v, signed header changed: %+v, want fail", k.Domain, relaxed, r)
			}
		}
	}
}

// The signed message of RFC 8463's appendix verifies with both of its
// keys, the ed25519 one and the RSA one, whose algorithm and selector the
// results name.
func TestRFC8463Example(t *testing.T) {
	res := &keys{txt: map[string]string{
		"brisbane._domainkey." + dkimtest.RFC8463Domain: dkimtest.RFC8463Ed25519TXT,
		"test._domainkey." + dkimtest.RFC8463Domain:     dkimtest.RFC8463RSATXT,
	}}
	if got := (&dkimtest.Key{Signer: dkimtest.RFC8463Key().Signer}).Record(); got != dkimtest.RFC8463Ed25519TXT {
		t.Fatalf("the appendix's seed gives %q, not its record %q", got, dkimtest.RFC8463Ed25519TXT)
	}
	v := verifier(t, res, dkim.Config{})
	rs := verify(context.Background(), v, dkimtest.RFC8463Message(), 10)
	if len(rs) != 2 {
		t.Fatalf("%+v", rs)
	}
	for i, want := range [][2]string{{"ed25519-sha256", "brisbane"}, {"rsa-sha256", "test"}} {
		if r := rs[i]; r.Value != dkim.Pass || r.Algorithm != want[0] || r.Selector != want[1] || r.Domain != dkimtest.RFC8463Domain || r.Identifier != "@"+dkimtest.RFC8463Domain {
			t.Errorf("signature %d: %+v, want pass by %s", i, r, want)
		}
	}
	if !strings.HasPrefix(rs[0].B, "/gCrinpcQOoI") {
		t.Errorf("b= %q", rs[0].B)
	}
}

// What go-msgauth leaves out or gets wrong on its own: an unknown
// selector is permerror, a key lookup that times out temperror, a key
// under 1024 bits or a sha1 signature permerror (RFC 8301), key flags t=y
// (testing: counts as unsigned) and t=s (no i= in a subdomain) honoured.
func TestKeyProblems(t *testing.T) {
	good := dkimtest.RSA2048("keys.example", "good")
	testing1 := dkimtest.Ed25519("testing.example", "t")
	testing1.Flags = "y"
	strict := dkimtest.Ed25519("strict.example", "s")
	strict.Flags = "s"
	short := dkimtest.RSA("short.example", "k512", 512)
	res := new(keys).add(good).add(testing1).add(strict).add(short)
	res.slow = map[string]bool{"slow._domainkey.keys.example": true}
	v := verifier(t, res, dkim.Config{TempError: policy.MustAction("tempfail")})
	msg := func(k *dkimtest.Key, o dkimtest.Options) []byte {
		return dkimtest.Sign(dkimtest.Message("a@"+k.Domain, "b@example.net", "keys", 500), k, o)
	}
	unknown := *good
	unknown.Selector = "nosuch"
	slow := *good
	slow.Selector = "slow"
	sha1 := bytes.Replace(msg(good, dkimtest.Options{}), []byte("a=rsa-sha256"), []byte("a=rsa-sha1"), 1)
	for _, tc := range []struct {
		name   string
		msg    []byte
		value  string
		reason string
	}{
		{"unknown selector", msg(&unknown, dkimtest.Options{}), dkim.PermError, "no key"},
		{"key lookup timeout", msg(&slow, dkimtest.Options{}), dkim.TempError, "key unavailable"},
		{"512-bit key", msg(short, dkimtest.Options{}), dkim.PermError, "too short"},
		{"sha1", sha1, dkim.PermError, "too weak"},
		{"t=y, verified", msg(testing1, dkimtest.Options{}), dkim.Neutral, "testing mode"},
		{"t=y, failed", bytes.Replace(msg(testing1, dkimtest.Options{}), []byte("lazy dog"), []byte("lazy cat"), 1), dkim.Neutral, "did not verify"},
		{"t=s, i= in d=", msg(strict, dkimtest.Options{Identifier: "a@strict.example"}), dkim.Pass, ""},
		{"t=s, i= in a subdomain", msg(strict, dkimtest.Options{Identifier: "a@mail.strict.example"}), dkim.PermError, "t=s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			r := one(t, verify(ctx, v, tc.msg, 100))
			if r.Value != tc.value || !strings.Contains(r.Reason, tc.reason) {
				t.Errorf("%+v, want %s (%s)", r, tc.value, tc.reason)
			}
			verdict, outcome := v.Outcome([]dkim.Result{r})
			if tc.value == dkim.TempError && (verdict == nil || verdict.Action != policy.ActionTempfail || outcome != dkim.TempError) {
				t.Errorf("temperror: verdict %+v %q, want the configured tempfail", verdict, outcome)
			}
		})
	}
}

// A message over max_bytes is verified up to the cap: its signature is
// neutral and says why, not fail; one under the cap passes.
func TestMaxBytes(t *testing.T) {
	k := dkimtest.Ed25519("cap.example", "c")
	v := verifier(t, new(keys).add(k), dkim.Config{MaxBytes: 4096})
	small := dkimtest.Sign(dkimtest.Message("a@cap.example", "b@example.net", "small", 2000), k, dkimtest.Options{})
	big := dkimtest.Sign(dkimtest.Message("a@cap.example", "b@example.net", "big", 100000), k, dkimtest.Options{})
	if r := one(t, verify(context.Background(), v, small, 1000)); r.Value != dkim.Pass {
		t.Errorf("under the cap: %+v", r)
	}
	if r := one(t, verify(context.Background(), v, big, 1000)); r.Value != dkim.Neutral || !strings.Contains(r.Reason, "max_bytes") {
		t.Errorf("over the cap: %+v, want neutral naming max_bytes", r)
	}
}

// At most max_signatures are verified, from the top; the rest are left
// out, and a message with none gives no result.
func TestMaxSignatures(t *testing.T) {
	k := dkimtest.Ed25519("many.example", "m")
	v := verifier(t, new(keys).add(k), dkim.Config{MaxSignatures: 3})
	msg := dkimtest.Message("a@many.example", "b@example.net", "many", 100)
	for range 5 {
		msg = dkimtest.Sign(msg, k, dkimtest.Options{})
	}
	rs := verify(context.Background(), v, msg, 50)
	if len(rs) != 3 {
		t.Fatalf("%d results, want 3", len(rs))
	}
	for _, r := range rs {
		if r.Value != dkim.Pass {
			t.Errorf("%+v", r)
		}
	}
	if rs := verify(context.Background(), v, dkimtest.Message("a@many.example", "b@example.net", "none", 100), 50); rs != nil {
		t.Errorf("unsigned: %+v", rs)
	}
}

// A verifier that stopped reading early (no key: nothing to hash the body
// for) does not hold up the body, and a message dropped unfinished leaves
// no goroutine behind.
func TestNoBlockingNoLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	v := verifier(t, new(keys), dkim.Config{})
	k := dkimtest.Ed25519("nokey.example", "n")
	msg := dkimtest.Sign(dkimtest.Message("a@nokey.example", "b@example.net", "big", 1<<20), k, dkimtest.Options{})
	done := make(chan []dkim.Result)
	go func() { done <- verify(context.Background(), v, msg, 1000) }()
	select {
	case rs := <-done:
		if len(rs) != 1 || rs[0].Value != dkim.PermError {
			t.Errorf("%+v", rs)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the body blocked on a verifier that had stopped reading")
	}
	fs, body := dkimtest.Split(msg)
	var fields []dkim.Field
	for _, f := range fs {
		fields = append(fields, dkim.Field(f))
	}
	for range 20 {
		m := v.Start(fields)
		m.Write(body[:100])
		m.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines left, %d before", n, before)
	}
}

// Each result's Authentication-Results entry parses back with go-msgauth
// with its d= and i=, and keeps s=, a= and b= whole, whatever the signer
// wrote in them.
func TestAuthResultParses(t *testing.T) {
	for _, r := range []dkim.Result{
		{Value: dkim.Pass, Domain: "example.org", Identifier: "@example.org", Selector: "s1", Algorithm: "rsa-sha256", B: "abc+/def"},
		{Value: dkim.Fail, Domain: "x;y.example", Identifier: "a b@x", Selector: "s (1)", Algorithm: `a"b`, B: "b", Reason: `bad; "really"`},
	} {
		s := authres.Format("mx.example", []authres.Result{r.AuthResult()})
		id, rs, err := authres.Parse(s)
		if err != nil || id != "mx.example" || len(rs) != 1 {
			t.Fatalf("%q: %v %v %v", s, id, rs, err)
		}
		d := rs[0].(*authres.DKIMResult)
		if string(d.Value) != r.Value || strings.ContainsAny(d.Domain, "; ") {
			t.Errorf("%q parsed as %+v", s, d)
		}
		if r.Value == dkim.Pass && (d.Domain != r.Domain || d.Identifier != r.Identifier || !strings.Contains(s, "header.s=s1") ||
			!strings.Contains(s, "header.a=rsa-sha256") || !strings.Contains(s, "header.b=abc+/def")) {
			t.Errorf("%q: %+v", s, d)
		}
	}
}

// randomBody is a body with what canonicalisation has to handle: runs of
// spaces and tabs inside and at the end of lines, empty lines inside and
// at the end, bare LF line ends, and no line end at all at the end.
func randomBody(r *rand.Rand) []byte {
	var b bytes.Buffer
	words := []string{"alpha", "beta", "gamma", ",", "x", "=20", "🙂"}
	spaces := []string{" ", "  ", "\t", " \t ", "   "}
	for range r.IntN(40) {
		if r.IntN(5) == 0 {
			b.WriteString(spaces[r.IntN(len(spaces))])
		}
		for w := range r.IntN(12) {
			if w > 0 {
				b.WriteString(spaces[r.IntN(2)*r.IntN(len(spaces))])
			}
			b.WriteString(words[r.IntN(len(words))])
		}
		if r.IntN(4) == 0 {
			b.WriteString(spaces[r.IntN(len(spaces))])
		}
		if r.IntN(6) == 0 {
			b.WriteString("\n")
		} else {
			b.WriteString("\r\n")
		}
	}
	for range r.IntN(3) {
		b.WriteString("\r\n")
	}
	if r.IntN(4) == 0 {
		b.WriteString("last line without an end")
	}
	return b.Bytes()
}

// On random messages signed by go-msgauth, simple and relaxed, RSA and
// ed25519, sluice's verifier agrees with go-msgauth's, in whatever chunks
// the body comes: both pass the message as signed, with whitespace added
// (relaxed) and with empty lines appended, and both fail it with a letter
// of the body changed.
func TestAgreesWithGoMsgauth(t *testing.T) {
	rsaKey := dkimtest.RSA2048("rsa.example", "r")
	edKey := dkimtest.Ed25519("ed.example", "e")
	res := new(keys).add(rsaKey).add(edKey)
	v := verifier(t, res, dkim.Config{})
	oracle := func(msg []byte) bool {
		vs, err := msgdkim.VerifyWithOptions(bytes.NewReader(msg), &msgdkim.VerifyOptions{
			LookupTXT: func(name string) ([]string, error) { return res.LookupTXT(context.Background(), name) }})
		return err == nil && len(vs) == 1 && vs[0].Err == nil
	}
	r := rand.New(rand.NewPCG(7, 7))
	subjects := []string{"plain", "tabs\tand  spaces ", "folded\r\n\tover lines"}
	passes, fails := 0, 0
	for i := range 300 {
		k := []*dkimtest.Key{rsaKey, edKey}[i%2]
		relaxed := i%4 < 2
		head := fmt.Sprintf("From: <a@%s>\r\nTo: <b@example.net>\r\nSubject: %s\r\nDate: Mon, 2 Jun 2025 10:00:00 +0000\r\nMessage-ID: <%d@example>\r\n\r\n",
			k.Domain, subjects[r.IntN(len(subjects))], i)
		body := randomBody(r)
		msg := dkimtest.Sign(append([]byte(head), body...), k, dkimtest.Options{Relaxed: relaxed})
		variants := map[string][]byte{"as signed": msg, "empty lines appended": append(bytes.Clone(msg), "\r\n\r\n"...)}
		if relaxed && bytes.Contains(body, []byte("a ")) {
			variants["whitespace added"] = bytes.Replace(msg, []byte("a "), []byte("a \t "), 1)
		}
		if at := bytes.Index(body, []byte("alpha")); at >= 0 {
			variants["a letter changed"] = bytes.Replace(msg, []byte("alpha"), []byte("alphb"), 1)
		}
		for name, m := range variants {
			want := oracle(m)
			got := one(t, verify(context.Background(), v, m, 1+r.IntN(200)))
			if (got.Value == dkim.Pass) != want {
				t.Fatalf("message %d (relaxed=%v, %s): sluice %+v, go-msgauth pass=%v\n%q", i, relaxed, name, got, want, m)
			}
			if want {
				passes++
			} else {
				fails++
			}
			if name == "a letter changed" && got.Value != dkim.Fail {
				t.Errorf("message %d: a changed letter gave %+v", i, got)
			}
		}
	}
	if passes < 500 || fails < 100 {
		t.Errorf("%d passes and %d failures: the messages do not exercise both", passes, fails)
	}
}
