package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// leaf is one key of the file as the config types define it.
type leaf struct {
	path  []string // table names and keys; "0" for the first element of an array of tables
	typ   reflect.Type
	words []string
}

// leaves walks the config types by reflection and returns every key a
// file may set: what is written as a value, and for a check's short
// form both the value and the keys of its table.
func leaves() []leaf {
	var out []leaf
	var walk func(t reflect.Type, path []string)
	walk = func(t reflect.Type, path []string) {
		fs := fieldsOf(deref(t))
		keys := make([]string, 0, len(fs.byKey))
		for k := range fs.byKey {
			keys = append(keys, k)
		}
		for _, k := range keys {
			f := fs.byKey[k]
			p := with(path, k)
			ft := deref(f.typ)
			switch {
			case isTableList(ft):
				if isText(ft.Elem()) {
					out = append(out, leaf{path: p, typ: f.typ})
				}
				walk(ft.Elem(), with(p, "0"))
			case ft.Kind() == reflect.Map:
				out = append(out, leaf{path: with(p, "x"), typ: ft.Elem()})
			case ft.Kind() == reflect.Struct && isTable(ft):
				if isText(ft) {
					out = append(out, leaf{path: p, typ: f.typ})
				}
				walk(ft, p)
			default:
				out = append(out, leaf{path: p, typ: f.typ, words: f.words})
			}
		}
	}
	walk(reflect.TypeFor[Config](), nil)
	return out
}

// baseOf is what an element of an array of tables needs besides the key
// under test, so that a value the shape check lets through (a rate, a
// key name) reaches the validation of its own key.
var baseOf = map[string][]string{
	"limit":        {`name = "r"`, `count = "messages"`, `per = "sender"`, `rate = "10/1h"`},
	"checks.dnsbl": {`zone = "zen.example"`},
}

// place writes a file that sets l to value on its last line, after a few
// lines of preamble, and returns the file and that line.
func place(l leaf, value string) (string, int) {
	var b strings.Builder
	b.WriteString("# a config with one wrong value\n\n")
	key := l.path
	if n := lastIndex(key); n >= 0 {
		table := strings.Join(key[:n], ".")
		fmt.Fprintf(&b, "[[%s]]\n", table)
		for _, line := range baseOf[table] {
			if !strings.HasPrefix(line, key[len(key)-1]+" ") {
				b.WriteString(line + "\n")
			}
		}
		key = key[n+1:]
	}
	fmt.Fprintf(&b, "%s = %s\n", strings.Join(key, "."), value)
	return b.String(), strings.Count(b.String(), "\n")
}

func lastIndex(path []string) int {
	for i := len(path) - 1; i >= 0; i-- {
		if _, err := strconv.Atoi(path[i]); err == nil {
			return i
		}
	}
	return -1
}

// goWords are what a message in Go's words would hold: a Go type, the
// decoder's phrasing, a Go function quoted with its call. (Qualified
// names alone are not looked for: limits.A is a key a file may write.)
var goWords = regexp.MustCompile(`struct field|\bGo\b|\b(u?int(8|16|32|64)|float(32|64))\b|interface \{\}|\[\]string|map\[string\]|\bof type\b|cannot decode|TOML (string|integer|float|boolean|array|table)|\b[a-z]+\.[A-Z][A-Za-z]*\(`)

// kinds are one value of every TOML kind.
var kinds = map[string]string{
	"integer": "7",
	"float":   "7.5",
	"bool":    "true",
	"date":    "1979-05-27",
	"string":  `"submission"`,
	"list":    `["tag"]`,
	"table":   `{ a = 1 }`,
}

// takes reports whether a key of type t takes a value of the kind.
func takes(t reflect.Type, kind string) bool {
	t = deref(t)
	switch {
	case isAny(t):
		return false // what the section reads from it decides; tried anyway
	case kind == "string":
		return isText(t) || t.Kind() == reflect.String
	case kind == "table":
		return isTable(t)
	case kind == "list":
		return isList(t) || isTableList(t)
	case kind == "integer":
		return isInt(t) || isFloat(t)
	case kind == "float":
		return isFloat(t)
	case kind == "bool":
		return t.Kind() == reflect.Bool
	}
	return false
}

// Every key of the file, found by walking the config types (so a key
// added later is covered too), refuses a value of every kind it does not
// take: the error names the file, the line the value is on and the key
// as people count it, and says nothing in Go's words. A key whose type is
// a word with a number underneath (a mode, an action) refuses a number
// instead of storing it, and lists its words.
func TestNoKeyTakesAValueOfTheWrongKind(t *testing.T) {
	ls := leaves()
	if len(ls) < 100 {
		t.Fatalf("found %d keys; the walk is broken", len(ls))
	}
	enums := 0
	for _, l := range ls {
		words := l.words
		if len(words) == 0 {
			words = wordsOf(deref(l.typ))
		}
		if len(words) > 0 {
			enums++
		}
		name := display(l.path)
		for kind, v := range kinds {
			if takes(l.typ, kind) || (isAny(l.typ) && (kind == "string" || kind == "list")) {
				continue
			}
			doc, line := place(l, v)
			_, err := Parse("f.toml", []byte(doc))
			if err == nil {
				t.Errorf("%s = %s (%s) accepted:\n%s", name, v, kind, doc)
				continue
			}
			msg := err.Error()
			if want := fmt.Sprintf("f.toml:%d: ", line); !strings.HasPrefix(msg, want) || !strings.Contains(msg, name) {
				t.Errorf("%s = %s: %q, want %q and the key", name, v, msg, want)
			}
			if m := goWords.FindString(msg); m != "" {
				t.Errorf("%s = %s: %q speaks Go (%q)", name, v, msg, m)
			}
			if len(words) > 0 {
				for _, w := range words {
					if !strings.Contains(msg, w) {
						t.Errorf("%s = %s: %q does not list %q", name, v, msg, w)
					}
				}
			}
		}
		if typ := deref(l.typ); isText(typ) && typ.Kind() >= reflect.Int && typ.Kind() <= reflect.Uint64 && len(words) == 0 && typ != durationType {
			// A type read from a word with a number underneath must say
			// its words, or its errors cannot list them.
			t.Errorf("%s: its type has no Words()", name)
		}
	}
	if enums < 20 {
		t.Errorf("found %d keys that take words; the walk or the tags are broken", enums)
	}
}

// Each error names the line of what it is about — a key below a dotted
// key, an element of an array, a key of an inline table, an element of
// an array of inline tables — and not the line the key started on or the
// file's first line.
func TestErrorsNameTheirLine(t *testing.T) {
	rule := "name = \"r\"\ncount = \"messages\"\nper = \"sender\"\nrate = \"10/1h\"\n"
	for _, tc := range []struct{ doc, want string }{
		{"mode = \"tag\"\n[lists]\na.b = 1\n", "f.toml:3: lists.a: "},
		{"\n\n\ntrusted = [[\"a\"]]\n", "f.toml:4: trusted[1]: want a string in quotes, not a list"},
		{"trusted = [\n  \"127.0.0.1\",\n  5,\n]\n", "f.toml:3: trusted[2]: "},
		{"limit = [\n  {" + strings.ReplaceAll(strings.TrimSpace(rule), "\n", ", ") + "},\n  {name = \"s\", count = \"messages\",\n   per = \"sender\", mode = 9},\n]\n", "f.toml:4: limit[2].mode: want a word in quotes (enforce, tag or dry-run), not the integer 9"},
		{"[[limit]]\n" + rule + "match = { client = [\"192.0.2.0/24\",\n \"nolist\"] }\n", "f.toml:7: limit[1].match.client[2]: no list named \"nolist\""},
		{"[[limit]]\n" + rule + "[[limit]]\n" + rule + "match.listener = \"submission\"\n", "f.toml:11: limit[2].match.listener: want a list, e.g. [\"submission\"], not a string"},
		{"[spf]\nenabled = true\nfail = \"reject\"\n[spf.reply]\nfail = \"451 4.7.1 no\"\n", "f.toml:5: spf.reply.fail: reply code 451 is temporary"},
		{"[checks]\ndnsbl = [\"zen.example\", { zone = \"b.example\", action = 5 }]\n", "f.toml:2: checks.dnsbl[2].action: want a word in quotes"},
		{"[store]\nbackend = \"memory\"\n[[store]]\n", "f.toml:3: store: want a table, not an array of tables ([[store]])"},
		{"[limit]\nname = \"x\"\n", "f.toml:1: limit: want an array of tables ([[limit]]), not a table ([limit])"},
		{"MODE = \"tag\"\n", "f.toml:1: unknown key MODE (keys are written in lower case: mode)"},
		{"[log]\nlevel = \"loud\"\n", "f.toml:2: log.level: unknown level \"loud\" (want debug, info, warn or error)"},
		{"[dns]\nrate = nan\n", "f.toml:2: dns.rate: want a finite number, not nan"},
		{"max_connections = 99999999999999999999\n", "f.toml:1: max_connections: 99999999999999999999 is out of range"},
		{"[[limit]]\n" + rule + "delay = \"99999d\"\naction = \"delay\"\n", "f.toml:6: limit[1].delay: duration \"99999d\" is longer than 3650d (10 years)"},
		{"mode = \"tag\"\nmode = \"enforce\"\n", "f.toml:2: mode: "},
		{"a = \n", "f.toml:1: "},
	} {
		_, err := Parse("f.toml", []byte(tc.doc))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q:\n got %v\nwant %s...", tc.doc, err, tc.want)
		}
	}
}

// No error quotes more than about 80 bytes of a value, wherever the
// value is and whichever part of sluice refuses it; a value past 64 KiB
// is refused before anything decodes it.
func TestErrorsQuoteLittleOfAHugeValue(t *testing.T) {
	for _, n := range []int{200, 60 << 10, 1 << 20} {
		v := strings.Repeat("a", n)
		for _, doc := range []string{
			`mode = "` + v + `"`,
			`tag_header = "` + v + `"`,
			`listen = "` + v + `"`,
			`trusted = ["` + v + `"]`,
			`trusted = "` + v + `"`,
			v + ` = 1`,
			`"` + v + `" = 1`,
			"[lists]\nx = [\"" + v + "/\"]",
			"[lists]\nx = \"" + v + "\"",
			"[lists]\n\"" + v + "!\" = [\"a.example\"]",
			"[[limit]]\nname = \"" + v + "\"",
			"[[limit]]\nname = \"r\"\ncount = \"" + v + "\"",
			"[[limit]]\nname = \"r\"\ncount = \"messages\"\nper = \"" + v + "\"\nrate = \"1/1h\"",
			"[[limit]]\nname = \"r\"\ncount = \"messages\"\nper = \"sender\"\nrate = \"" + v + "\"",
			"[[limit]]\nname = \"r\"\ncount = \"messages\"\nper = \"sender\"\nrate = \"1/1h\"\nreply = \"45 " + v + "\"",
			"[[limit]]\nname = \"r\"\ncount = \"messages\"\nper = \"sender\"\nrate = \"1/1h\"\nmatch.helo = \"(" + v + "\"",
			"[[limit]]\nname = \"r\"\ncount = \"messages\"\nper = \"sender\"\nrate = \"1/1h\"\nexcept = [\"/" + v + "\"]",
			"[dns]\nservers = [\"" + v + "\"]",
			"[store]\nbackend = \"redis\"\naddrs = [\"" + v + "\"]",
			"[metrics]\nlisten = \"" + v + "\"",
			"[admin]\nsocket = \"" + v + "\"",
			"[checks]\nhelo_not_ours = { names = [\"" + v + "\"] }",
			"[checks]\ndnsbl = [\"" + v + "\"]",
			"max_connections = " + strings.Repeat("9", n),
		} {
			_, err := Parse("f.toml", []byte(doc+"\n"))
			if err == nil {
				t.Errorf("%.60q… (%d bytes) accepted", doc, n)
				continue
			}
			if msg := err.Error(); len(msg) > 400 || !strings.HasPrefix(msg, "f.toml:") {
				t.Errorf("%.60q… (%d bytes): %d bytes of error: %.300s", doc, n, len(msg), msg)
			}
		}
	}
}

// A metrics listener that other hosts can reach is allowed but said, with
// its line; one on loopback is not.
func TestWarnsOfListenersBeyondLoopback(t *testing.T) {
	for listen, warn := range map[string]bool{
		":9465": true, "0.0.0.0:9465": true, "[::]:9465": true, "192.0.2.1:9465": true,
		"127.0.0.1:9465": false, "[::1]:9465": false, "localhost:9465": false, "127.0.0.2:9465": false,
	} {
		c, err := Parse("f.toml", []byte("mode = \"tag\"\n[metrics]\nlisten = \""+listen+"\"\n"))
		if err != nil {
			t.Fatal(err)
		}
		ws := c.Warnings()
		if got := len(ws) > 0; got != warn {
			t.Errorf("listen %s: warnings %v", listen, ws)
			continue
		}
		if warn && !strings.HasPrefix(ws[0].Error(), "f.toml:3: metrics.listen: ") {
			t.Errorf("listen %s: %v", listen, ws[0])
		}
	}
}

// A key that takes one value or a list of them (an access table's file
// name, a list of names, a list of tables) passes in each form, and its
// tables' keys are still checked.
func TestKeysOfOneOrManyTakeEachForm(t *testing.T) {
	dir := t.TempDir()
	cidr := filepath.Join(dir, "clients.cidr")
	if err := os.WriteFile(cidr, []byte("192.0.2.0/24 REJECT\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, doc := range []string{
		fmt.Sprintf("[checks]\nclient_access = %q\n", "cidr:"+cidr),
		fmt.Sprintf("[checks]\nclient_access = [%q, %q]\n", "cidr:"+cidr, cidr),
		fmt.Sprintf("[checks]\nclient_access = [{ file = %q, mode = \"tag\" }]\n", "cidr:"+cidr),
		fmt.Sprintf("[[checks.client_access]]\nfile = %q\nmode = \"tag\"\n", "cidr:"+cidr),
	} {
		if _, err := Parse("f.toml", []byte(doc)); err != nil {
			t.Errorf("%q: %v", doc, err)
		}
	}
	for doc, want := range map[string]string{
		"[checks]\nclient_access = [{ file = \"x\", mode = \"loud\" }]\n": "f.toml:2: checks.client_access[1].mode: ",
		"[[checks.client_access]]\nfiel = \"x\"\n":                        "f.toml:2: unknown key checks.client_access[1].fiel",
		"[checks]\nclient_access = 5\n":                                   "f.toml:2: checks.client_access: want ",
	} {
		if _, err := Parse("f.toml", []byte(doc)); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%q: %v, want %q...", doc, err, want)
		}
	}
}
