package engine_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"sluice/engine"
	"sluice/limits"
	"sluice/policy"
	"sluice/smtp"
)

// parseTag splits a tag header value into its fields, undoing the
// quoted-strings; it fails on anything that is not well-formed.
func parseTag(v string) (rule string, params map[string]string, err error) {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c >= 0x7f {
			return "", nil, fmt.Errorf("byte %#x at %d", c, i)
		}
	}
	var fields []string
	var cur []byte
	keep := 0 // cur[:keep] ends with quoted text, which trailing blanks must not eat
	quoted := false
	end := func() {
		f := strings.TrimRight(string(cur[keep:]), " ")
		fields = append(fields, string(cur[:keep])+f)
		cur, keep = cur[:0], 0
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case quoted && c == '\\':
			i++
			if i == len(v) {
				return "", nil, fmt.Errorf("dangling backslash")
			}
			cur = append(cur, v[i])
			keep = len(cur)
		case c == '"':
			quoted = !quoted
			keep = len(cur)
		case quoted:
			cur = append(cur, c)
			keep = len(cur)
		case c == ';':
			end()
		case c == '(' || c == ')':
			return "", nil, fmt.Errorf("unquoted %c", c)
		case c == ' ' && len(cur) == 0:
			// a blank between fields
		default:
			cur = append(cur, c)
		}
	}
	if quoted {
		return "", nil, fmt.Errorf("unclosed quote")
	}
	end()
	params = map[string]string{}
	for _, f := range fields[1:] {
		k, val, ok := strings.Cut(f, "=")
		if !ok {
			return "", nil, fmt.Errorf("field %q is not key=value", f)
		}
		if _, dup := params[k]; dup {
			return "", nil, fmt.Errorf("field %s twice", k)
		}
		params[k] = val
	}
	return fields[0], params, nil
}

// Hostile senders produce one well-formed tag whose key says, escaped,
// what the client sent.
func TestTagHeaderWellFormed(t *testing.T) {
	v := newEnv(t, setup{Mode: smtp.ModeTag, Rules: []limits.Rule{senderRule("1/1h", "")}})
	for _, sender := range []string{
		"alice@example.org",
		`"john\"doe"@example.org`,
		`"john doe"@example.org`,
		"a\r\nX-Injected: yes@example.org",
		"semi;colon=1; would=accept@example.org",
		"caf\u00e9@example.org",
		"nul\x00byte@example.org",
		"(comment)@example.org",
		strings.Repeat("x", 2000) + "@example.org",
	} {
		s, _ := v.open("192.0.2.29")
		v.send(s, sender, "", []string{"b@example.net"})
		m := v.send(s, sender, "", []string{"b@example.net"})
		tags := editsOf(m.edits, smtp.Add)
		if !m.delivered || len(tags) != 1 {
			t.Errorf("sender %q: delivered %v, %d tags", sender, m.delivered, len(tags))
			continue
		}
		val := tags[0].Value
		rule, params, err := parseTag(val)
		if err != nil {
			t.Errorf("sender %q: tag %q is not well-formed: %v", sender, val, err)
			continue
		}
		if rule != "per-sender" || params["count"] != "1+1" || params["limit"] != "1/1h" || params["would"] != "tempfail" || params["retry_after"] == "" {
			t.Errorf("sender %q: fields %q %v", sender, rule, params)
		}
		if !strings.HasPrefix(params["key"], "sender:") || len(val) > 900 {
			t.Errorf("sender %q: key %q, value %d bytes", sender, params["key"], len(val))
		}
	}
}

// FuzzTagValue: whatever the key holds, a tag header value is one line of
// printable ASCII that parses back into its fields, with the key intact
// up to the escaping.
func FuzzTagValue(f *testing.F) {
	f.Add("sender:alice@example.org", "10/1h", int64(90))
	f.Add("sender:\"john\\\"doe\"@example.org", "1/1h", int64(0))
	f.Add("sender:a\r\nX-Injected: 1; would=accept", "x;y", int64(5))
	f.Add("caf\u00e9 (comment)", "\"", int64(-1))
	f.Fuzz(func(t *testing.T, key, limit string, retry int64) {
		v := policy.Verdict{Source: "per-sender", Action: policy.ActionTempfail, Key: key, Limit: limit,
			Detail: "count=2", RetryAfter: time.Duration(retry) * time.Second}
		for _, held := range []bool{false, true} {
			out := engine.TagValue(&v, held)
			rule, params, err := parseTag(out)
			if err != nil {
				t.Fatalf("key %q limit %q: %q is not well-formed: %v", key, limit, out, err)
			}
			if rule != "per-sender" || params["count"] != "2" || params["key"] != smtp.ASCII(key, 300) || len(out) > 900 {
				t.Fatalf("key %q limit %q: %q parsed as %q %v", key, limit, out, rule, params)
			}
		}
	})
}
