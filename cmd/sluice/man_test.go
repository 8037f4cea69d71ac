package main

import (
	"bufio"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"sluice/conf"
	"sluice/config"
)

// The man pages' sources: packaging/build-deb renders them with go-md2man.
const (
	confPage = "../../docs/man/sluice.toml.5.md"
	cmdPage  = "../../docs/man/sluice.8.md"
)

// docKey is one key as sluice.toml(5) documents it.
type docKey struct {
	path string // "store.backend"
	def  string // the default as TOML, "" when the page gives none
	line int
}

var (
	tableRE  = regexp.MustCompile(`\[\[?([A-Za-z0-9_.]+)\]\]?`)
	bulletRE = regexp.MustCompile("^- ((?:`[^`]+`(?:, )?)+)(?: \\(([^)]*)\\))?")
	nameRE   = regexp.MustCompile("`([^`]+)`")
	defRE    = regexp.MustCompile("default `([^`]+)`")
)

// bullets reads a page's level-2 sections under the level-1 section
// named top and calls fn with each section's heading and each bullet
// (continuation lines joined) with its line number.
func bullets(t *testing.T, page, top string, fn func(heading, bullet string, line int)) {
	t.Helper()
	f, err := os.Open(page)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var in bool
	var heading, bullet string
	var start int
	flush := func() {
		if bullet != "" {
			fn(heading, bullet, start)
		}
		bullet = ""
	}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "# "):
			flush()
			in, heading = line == "# "+top, ""
		case strings.HasPrefix(line, "## "):
			flush()
			heading = strings.TrimPrefix(line, "## ")
		case in && heading != "" && strings.HasPrefix(line, "- "):
			flush()
			bullet, start = line, n
		case bullet != "" && strings.HasPrefix(line, "  "):
			bullet += " " + strings.TrimSpace(line)
		default:
			flush()
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}

// documentedKeys parses the KEYS section of sluice.toml(5): a "## [table]"
// heading (several tables when they share keys, "Top level" for none),
// then one bullet per key: "- `key` (type, default `TOML`): meaning".
func documentedKeys(t *testing.T) []docKey {
	var keys []docKey
	bullets(t, confPage, "KEYS", func(heading, bullet string, line int) {
		var tables []string
		for _, m := range tableRE.FindAllStringSubmatch(heading, -1) {
			tables = append(tables, m[1]+".")
		}
		if len(tables) == 0 {
			tables = []string{""}
		}
		m := bulletRE.FindStringSubmatch(bullet)
		if m == nil {
			t.Errorf("%s:%d: a bullet of KEYS must start with the key: - `key` (type, default `value`): ...", confPage, line)
			return
		}
		var def string
		if d := defRE.FindStringSubmatch(m[2]); d != nil {
			def = d[1]
		}
		for _, name := range nameRE.FindAllStringSubmatch(m[1], -1) {
			for _, table := range tables {
				keys = append(keys, docKey{path: table + name[1], def: def, line: line})
			}
		}
	})
	return keys
}

func TestManPageDocumentsEveryConfigKey(t *testing.T) {
	known := configKeys()
	documented := make(map[string]int)
	for _, k := range documentedKeys(t) {
		documented[k.path] = k.line
	}
	if len(known) < 100 || len(documented) < 100 {
		t.Fatalf("%d keys known, %d documented: the walk or the page's parsing broke", len(known), len(documented))
	}
	for _, k := range known {
		if _, ok := documented[k]; !ok {
			t.Errorf("config key %s is not in %s: add a bullet under its table's heading (key, type, default, meaning)", k, confPage)
		}
	}
	for k, line := range documented {
		if !slices.Contains(known, k) {
			t.Errorf("%s:%d: documents %s, which the config decoder does not know", confPage, line, k)
		}
	}
}

// The configs whose defaults the page's defaults are checked against: a
// key's default is read from the first of them that has the key (a
// [[limit]], a check, the Redis keys need to be there).
var defaultBases = []string{
	``,
	"[store]\nbackend = \"redis\"\n",
	`trusted = []
[[limit]]
name = "x"
count = "messages"
per = "sender"
rate = "1/1h"
[checks]
require_fqdn_sender = "reject"
require_fqdn_helo = "reject"
helo_syntax = "reject"
sender_domain_exists = "reject"
helo_not_ours = "reject"
client_rdns = "exists"
dnsbl = ["dnsbl.example.test"]
`,
}

func TestManPageDefaultsAreTheDecodersDefaults(t *testing.T) {
	var bases []reflect.Value
	for i, b := range defaultBases {
		c, err := config.Parse("base"+strconv.Itoa(i), []byte(b))
		if err != nil {
			t.Fatal(err)
		}
		bases = append(bases, reflect.ValueOf(c).Elem())
	}
	checked := 0
	for _, k := range documentedKeys(t) {
		if k.def == "" {
			continue
		}
		var seen []reflect.Value
		for _, b := range bases {
			if v, ok := valueAt(b, strings.Split(k.path, ".")); ok {
				seen = append(seen, v)
			}
		}
		if len(seen) == 0 {
			t.Errorf("%s:%d: %s has a documented default, but no config in defaultBases has it: add one", confPage, k.line, k.path)
			continue
		}
		// The page writes the default as TOML: decode it as the file's
		// value would be, and compare with what the decoder filled in
		// where the file leaves the key out.
		want := reflect.New(reflect.StructOf([]reflect.StructField{{Name: "V", Type: seen[0].Type(), Tag: `toml:"v"`}}))
		if err := toml.Unmarshal([]byte("v = "+k.def), want.Interface()); err != nil {
			t.Errorf("%s:%d: the default of %s, %s, does not decode: %v", confPage, k.line, k.path, k.def, err)
			continue
		}
		w := want.Elem().Field(0).Interface()
		if !slices.ContainsFunc(seen, func(v reflect.Value) bool { return reflect.DeepEqual(w, v.Interface()) }) {
			var got []any
			for _, v := range seen {
				got = append(got, shown(v))
			}
			t.Errorf("%s:%d: %s: documented default %s, the decoder's is %v", confPage, k.line, k.path, k.def, got)
			continue
		}
		checked++
	}
	if checked < 50 {
		t.Errorf("only %d defaults checked", checked)
	}
	t.Logf("%d documented defaults match the decoder's", checked)
}

// valueAt finds a key path in a decoded config: through embedded
// sections, into the first element of an array of tables; false when a
// table on the way is absent.
func valueAt(v reflect.Value, path []string) (reflect.Value, bool) {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return reflect.Value{}, false
		}
		v = v.Elem()
	}
	if len(path) == 0 {
		return v, true
	}
	switch v.Kind() {
	case reflect.Slice:
		if v.Len() == 0 {
			return reflect.Value{}, false
		}
		return valueAt(v.Index(0), path)
	case reflect.Struct:
	default:
		return reflect.Value{}, false
	}
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if f.Anonymous && name == "" {
			if got, ok := valueAt(v.Field(i), path); ok {
				return got, true
			}
			continue
		}
		if name == path[0] {
			if len(path) == 1 {
				return v.Field(i), true
			}
			return valueAt(v.Field(i), path[1:])
		}
	}
	return reflect.Value{}, false
}

// shown is a value as an error message shows it: what a pointer points to.
func shown(v reflect.Value) any {
	for v.Kind() == reflect.Pointer && !v.IsNil() {
		v = v.Elem()
	}
	if d, ok := v.Interface().(conf.Duration); ok {
		return d.D()
	}
	return v.Interface()
}
