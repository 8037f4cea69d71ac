package access

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const senders = `
# partners whose mail always goes through
partner.example        OK
.partner.example       OK
boss@corp.example      OK

corp.example           REJECT Spoofed sender
.spam.example          REJECT
noreply@               TEMPFAIL  try later please
newsletter.example     TAG	bulk mail
exempt@spam.example    DUNNO
<>                     TAG null sender
`

func TestSenderLookup(t *testing.T) {
	tab, err := Parse(strings.NewReader(senders), "senders", Senders)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr   string
		action Action // 0: no entry
		text   string
	}{
		{"a@partner.example", OK, ""},
		{"a@mx.partner.example", OK, ""},
		{"a@deep.mx.PARTNER.example", OK, ""},
		{"boss@corp.example", OK, ""},
		{"Boss@Corp.Example", OK, ""},
		{"other@corp.example", Reject, "Spoofed sender"},
		{"other@sub.corp.example", 0, ""}, // corp.example does not match subdomains
		{"x@spam.example", 0, ""},         // .spam.example matches only subdomains
		{"x@a.spam.example", Reject, ""},
		{"exempt@spam.example", 0, ""}, // DUNNO
		{"noreply@anything.example", Tempfail, "try later please"},
		{"noreply@corp.example", Reject, "Spoofed sender"}, // domain before user@
		{"x@newsletter.example", Tag, "bulk mail"},
		{"", Tag, "null sender"},
		{"x@partner.example.evil", 0, ""},
		{"x@evilpartner.example", 0, ""},
		{"partner.example", OK, ""}, // no @: matched as a name
		{"x@corp.example.", Reject, "Spoofed sender"},
	} {
		e, ok := tab.Lookup(tc.addr)
		if ok != (tc.action != 0) || ok && (e.Action != tc.action || e.Text != tc.text) {
			t.Errorf("Lookup(%q) = %+v, %v; want %v %q", tc.addr, e, ok, tc.action, tc.text)
		}
	}
}

func TestHeloLookup(t *testing.T) {
	tab, err := Parse(strings.NewReader("mx.example OK\n.dyn.example REJECT dynamic host\n[192.0.2.1] REJECT that is me\n[IPv6:2001:db8::1] TAG\n"), "helo", HELONames)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		helo   string
		action Action
	}{
		{"mx.example", OK},
		{"MX.example.", OK},
		{"a.mx.example", 0},
		{"host1.dyn.example", Reject},
		{"[192.0.2.1]", Reject},
		{"[ipv6:2001:db8::1]", Tag},
		{"[192.0.2.2]", 0},
		{"", 0},
	} {
		e, ok := tab.Lookup(tc.helo)
		if ok != (tc.action != 0) || ok && e.Action != tc.action {
			t.Errorf("Lookup(%q) = %+v, %v; want %v", tc.helo, e, ok, tc.action)
		}
	}
}

func TestErrorsNameLine(t *testing.T) {
	for _, tc := range []struct {
		text, kind, want string
	}{
		{"a.example OK\nb.example\n", "s", "t:2: \"b.example\" has no action"},
		{"a.example ALLOW\n", "s", "t:1: unknown action \"ALLOW\""},
		{"a.example OK\n\n# c\nA.example. REJECT\n", "s", "t:4: a.example is already listed on line 1"},
		{"@a.example OK\n", "s", "t:1: \"@a.example\": write a domain without the @"},
		{"a..example OK\n", "s", "t:1: \"a..example\" is not a domain"},
		{"x@.a.example OK\n", "s", "t:1: \"x@.a.example\": .domain patterns stand alone"},
		{"a.example OK but why\n", "s", "t:1: OK takes no text"},
		{"x@a.example REJECT\n", "h", "t:1: \"x@a.example\": a HELO table holds names"},
		{"[300.1.1.1] REJECT\n", "h", "t:1: \"[300.1.1.1]\": bad address literal"},
	} {
		kind := Senders
		if tc.kind == "h" {
			kind = HELONames
		}
		_, err := Parse(strings.NewReader(tc.text), "t", kind)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.text, err, tc.want)
		}
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "senders")
	os.WriteFile(path, []byte(senders), 0o644)
	tab, err := Load(path, Senders)
	if err != nil {
		t.Fatal(err)
	}
	if tab.Len() != 9 || tab.Path() != path {
		t.Errorf("len %d path %s", tab.Len(), tab.Path())
	}
	if _, err := Load(path+".missing", Senders); err == nil || !strings.Contains(err.Error(), path+".missing") {
		t.Errorf("missing file: %v", err)
	}
	os.WriteFile(path, []byte("ok.example OK\nbad.example NOPE\n"), 0o644)
	if _, err := Load(path, Senders); err == nil || !strings.HasPrefix(err.Error(), path+":2:") {
		t.Errorf("bad file: %v, want it to start with %s:2:", err, path)
	}
}
