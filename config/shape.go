package config

import (
	"encoding"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pelletier/go-toml/v2/unstable"

	"sluice/conf"
)

// maxValueBytes bounds one value or key of the file: a reply, a pattern, a
// path or a list entry is a line long, and nothing sluice reads from the
// file needs more. A value past it is refused before it is decoded, so
// that a runaway value costs no more than the file itself.
const maxValueBytes = 64 << 10

// maxUnknown bounds the unknown keys one error lists.
const maxUnknown = 10

// docError is a mistake in the shape of the file, at a byte offset.
type docError struct {
	off int
	msg string
}

// checkShape walks the document beside the type it is decoded into (the
// type of *Config), before the decoder does, and refuses what the decoder
// would get wrong or say in Go's words: a number where a word belongs (a
// mode decoded straight into the integer behind it), a string where a
// list belongs, a key nothing reads, a table where a value belongs. Each
// error names the key as people count (limit[2].match.listener), says
// what is wanted in the words of the docs, and quotes at most
// conf.MaxQuoted bytes of the value. Values of a type with UnmarshalText
// are parsed by it here, so that their errors carry their line too.
//
// It returns the unknown keys, or the first other error, in the order of
// the file; none when the document can be decoded as it is.
func checkShape(data []byte, root reflect.Type) []docError {
	c := &shapeChecker{root: root, bad: make(map[string]bool)}
	err := walkDoc(data, func(it docItem) bool {
		if c.under(it.path) {
			return true
		}
		c.item(it)
		return c.fatal == nil && c.unknown <= maxUnknown
	})
	switch {
	case c.fatal != nil:
		return append(c.errs, *c.fatal)
	case err != nil:
		return append(c.errs, docError{off: syntaxOffset(data, err), msg: conf.ClipMessage(err.Error())})
	case c.unknown > maxUnknown:
		c.errs[maxUnknown].msg = "and more unknown keys from here on"
	}
	return c.errs
}

type shapeChecker struct {
	root    reflect.Type
	errs    []docError      // unknown keys so far
	unknown int             // how many
	fatal   *docError       // the first other error
	bad     map[string]bool // paths already reported: what is below them is not
}

// under reports whether path is at or below one already reported.
func (c *shapeChecker) under(path []string) bool {
	for n := 1; n <= len(path); n++ {
		if c.bad[strings.Join(path[:n], "\x00")] {
			return true
		}
	}
	return false
}

func (c *shapeChecker) fail(off int, path []string, format string, args ...any) {
	c.bad[strings.Join(path, "\x00")] = true
	if c.fatal == nil {
		c.fatal = &docError{off: off, msg: display(path) + ": " + fmt.Sprintf(format, args...)}
	}
}

func (c *shapeChecker) unknownKey(off int, path []string, hint string) {
	c.bad[strings.Join(path, "\x00")] = true
	c.unknown++
	msg := "unknown key " + conf.Clip(display(path))
	if hint != "" {
		msg += " (keys are written in lower case: " + hint + ")"
	}
	c.errs = append(c.errs, docError{off: off, msg: msg})
}

// item checks one header or key = value.
func (c *shapeChecker) item(it docItem) {
	if it.value == nil {
		// A header: what it names must be a table, or an array of tables
		// for [[...]], whose last part is the new element's index.
		names := it.path
		if it.array {
			names = it.path[:len(it.path)-1]
		}
		t, ok := c.resolve(c.root, nil, names, it.off)
		if !ok || isAny(t) {
			return
		}
		switch {
		case it.array && !isTableList(t):
			c.fail(it.off, names, "want %s, not an array of tables ([[%s]])", want(t, nil, names), strings.Join(names, "."))
		case !it.array && !isTable(t):
			c.fail(it.off, names, "want %s, not a table ([%s])", want(t, nil, names), strings.Join(names, "."))
		}
		return
	}
	parent, ok := c.resolve(c.root, nil, it.path[:len(it.path)-1], it.off)
	if !ok {
		return
	}
	t, words, ok := c.field(parent, it.path, it.off)
	if !ok {
		return
	}
	c.value(it.value, t, words, it.path, it.off)
}

// resolve follows names (key parts and array indexes) from t, whose path
// is at, and returns the type they lead to. A name nothing reads, or a
// value where a table would have to be, is reported, and ok is false.
func (c *shapeChecker) resolve(t reflect.Type, at, names []string, off int) (_ reflect.Type, ok bool) {
	path := append([]string(nil), at...)
	for i := range names {
		path = append(path, names[i])
		if isAny(t) {
			return t, true
		}
		d := deref(t)
		if d.Kind() == reflect.Slice || d.Kind() == reflect.Array {
			if _, err := strconv.Atoi(names[i]); err != nil || !isTableList(d) {
				c.fail(off, path[:len(path)-1], "want %s, not a table", want(t, nil, path[:len(path)-1]))
				return nil, false
			}
			t = d.Elem()
			continue
		}
		if !isTable(d) {
			c.fail(off, path[:len(path)-1], "want %s, not a table", want(t, nil, path[:len(path)-1]))
			return nil, false
		}
		if t, _, ok = c.field(d, path, off); !ok {
			return nil, false
		}
	}
	return t, true
}

// field is the type of the key at the end of path in table t, and the
// words the key takes when it is a string with a words tag.
func (c *shapeChecker) field(t reflect.Type, path []string, off int) (reflect.Type, []string, bool) {
	t = deref(t)
	key := path[len(path)-1]
	switch {
	case isAny(t):
		return t, nil, true
	case t.Kind() == reflect.Map:
		return t.Elem(), nil, true
	case t.Kind() != reflect.Struct:
		c.fail(off, path[:len(path)-1], "want %s, not a table", want(t, nil, path[:len(path)-1]))
		return nil, nil, false
	}
	fs := fieldsOf(t)
	if f, ok := fs.byKey[key]; ok {
		return f.typ, f.words, true
	}
	var hint string
	if len(key) <= 64 {
		hint = fs.folded[strings.ToLower(key)]
	}
	c.unknownKey(off, path, hint)
	return nil, nil, false
}

// value checks a value of type t at path.
func (c *shapeChecker) value(v *unstable.Node, t reflect.Type, words []string, path []string, off int) {
	if o := nodeOffset(v); o >= 0 {
		off = o
	}
	if len(v.Data) > maxValueBytes {
		c.fail(off, path, "a value of %d bytes; sluice takes at most %d KiB in one value", len(v.Data), maxValueBytes>>10)
		return
	}
	if isAny(t) {
		c.anything(v, path, off)
		return
	}
	t = deref(t)
	if len(words) == 0 {
		words = wordsOf(t)
	}
	mismatch := func() {
		c.fail(off, path, "want %s, not %s", want(t, words, path), what(v))
	}
	switch v.Kind {
	case unstable.String:
		switch {
		case isText(t):
			if err := reflect.New(t).Interface().(encoding.TextUnmarshaler).UnmarshalText(v.Data); err != nil {
				c.fail(off, path, "%s", conf.ClipMessage(err.Error()))
			}
		case t.Kind() == reflect.String:
			if s := string(v.Data); s != "" && words != nil && !slices.Contains(words, s) {
				c.fail(off, path, "unknown %s %s (want %s)", path[len(path)-1], conf.Quote(s), orList(words))
			}
		case isList(t) || isTableList(t) && isText(deref(t).Elem()):
			c.fail(off, path, "want a list, e.g. [%s], not a string", conf.Quote(string(v.Data)))
		default:
			mismatch()
		}
	case unstable.Integer:
		switch {
		case isInt(t):
			if why := fitsInt(string(v.Data), t); why != "" {
				c.fail(off, path, "%s %s", conf.Clip(string(v.Data)), why)
			}
		case isFloat(t):
		default:
			mismatch()
		}
	case unstable.Float:
		if !isFloat(t) {
			mismatch()
			return
		}
		if f, err := strconv.ParseFloat(strings.ReplaceAll(string(v.Data), "_", ""), 64); err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			c.fail(off, path, "want a finite number, not %s", conf.Clip(string(v.Data)))
		}
	case unstable.Bool:
		if t.Kind() != reflect.Bool {
			mismatch()
		}
	case unstable.DateTime, unstable.LocalDateTime, unstable.LocalDate, unstable.LocalTime:
		if t != timeType {
			mismatch()
		}
	case unstable.Array:
		if !isListType(t) {
			mismatch()
			return
		}
		i := 0
		for it := v.Children(); it.Next() && c.fatal == nil; i++ {
			c.value(it.Node(), t.Elem(), nil, with(path, strconv.Itoa(i)), off)
		}
	case unstable.InlineTable:
		if !isTable(t) {
			mismatch()
			return
		}
		for it := v.Children(); it.Next() && c.fatal == nil; {
			kv := it.Node()
			if kv.Kind != unstable.KeyValue {
				continue
			}
			keys := keyParts(kv)
			at := nodeOffset(kv)
			sub := with(path, keys...)
			if c.under(sub) {
				continue
			}
			parent, ok := c.resolve(t, path, keys[:len(keys)-1], at)
			if !ok {
				continue
			}
			ft, fw, ok := c.field(parent, sub, at)
			if !ok {
				continue
			}
			c.value(kv.Value(), ft, fw, sub, at)
		}
	}
}

// anything checks a value that may be of any kind (a rate, a list of
// [lists]): only that its strings are within bounds; the section that
// reads it says what it must be.
func (c *shapeChecker) anything(v *unstable.Node, path []string, off int) {
	if len(v.Data) > maxValueBytes {
		c.fail(off, path, "a value of %d bytes; sluice takes at most %d KiB in one value", len(v.Data), maxValueBytes>>10)
		return
	}
	switch v.Kind {
	case unstable.Array:
		i := 0
		for it := v.Children(); it.Next() && c.fatal == nil; i++ {
			e := it.Node()
			at := off
			if o := nodeOffset(e); o >= 0 {
				at = o
			}
			c.anything(e, with(path, strconv.Itoa(i)), at)
		}
	case unstable.InlineTable:
		for it := v.Children(); it.Next() && c.fatal == nil; {
			if kv := it.Node(); kv.Kind == unstable.KeyValue {
				c.anything(kv.Value(), with(path, keyParts(kv)...), nodeOffset(kv))
			}
		}
	}
}

// fields is what the shape check knows of a struct type's keys.
type fields struct {
	byKey  map[string]fieldInfo
	folded map[string]string // lower-cased key -> key, for a hint
}

type fieldInfo struct {
	typ   reflect.Type
	words []string // from a `words:"a b c"` tag: the only values the key takes
}

var fieldCache sync.Map // reflect.Type -> *fields

// fieldsOf lists the keys of a struct type as the decoder reads them:
// by their toml tag, with the fields of embedded structs promoted.
func fieldsOf(t reflect.Type) *fields {
	if f, ok := fieldCache.Load(t); ok {
		return f.(*fields)
	}
	fs := &fields{byKey: make(map[string]fieldInfo), folded: make(map[string]string)}
	var add func(t reflect.Type)
	add = func(t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if f.Anonymous && tag == "" && deref(f.Type).Kind() == reflect.Struct {
				add(deref(f.Type))
				continue
			}
			if !f.IsExported() || tag == "-" {
				continue
			}
			if tag == "" {
				tag = f.Name
			}
			info := fieldInfo{typ: f.Type}
			if w := strings.Fields(f.Tag.Get("words")); len(w) > 0 {
				info.words = w
			}
			fs.byKey[tag] = info
			fs.folded[strings.ToLower(tag)] = tag
		}
	}
	add(t)
	f, _ := fieldCache.LoadOrStore(t, fs)
	return f.(*fields)
}

var (
	textType     = reflect.TypeFor[encoding.TextUnmarshaler]()
	timeType     = reflect.TypeFor[time.Time]()
	durationType = reflect.TypeFor[conf.Duration]()
)

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

func isAny(t reflect.Type) bool { return deref(t).Kind() == reflect.Interface }

// isText reports whether values of t are read from a string by t's own
// UnmarshalText, as the decoder does.
func isText(t reflect.Type) bool { return reflect.PointerTo(deref(t)).Implements(textType) }

// isTextOrList reports whether t is a list read from a string too, by
// its own UnmarshalText (one access table, or a list of them): it takes
// both forms. A byte slice is only ever a string.
func isTextOrList(t reflect.Type) bool {
	t = deref(t)
	return isText(t) && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) && t.Elem().Kind() != reflect.Uint8
}

// isListType reports whether t is written as a list.
func isListType(t reflect.Type) bool {
	t = deref(t)
	return (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) && (!isText(t) || isTextOrList(t))
}

// isTable reports whether t is written as a table: a struct (one read
// from a string too, like a check's short form, when it has keys of its
// own), a map, or anything.
func isTable(t reflect.Type) bool {
	t = deref(t)
	switch t.Kind() {
	case reflect.Map, reflect.Interface:
		return true
	case reflect.Struct:
		return !isText(t) || len(fieldsOf(t).byKey) > 0
	}
	return false
}

// isTableList reports whether t is an array of tables ([[limit]]).
func isTableList(t reflect.Type) bool {
	t = deref(t)
	return isListType(t) && isTable(t.Elem()) && !isAny(t.Elem())
}

// isList reports whether t is a list of values (not of tables).
func isList(t reflect.Type) bool {
	t = deref(t)
	return isListType(t) && !isTableList(t)
}

func isInt(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return !isText(t)
	}
	return false
}

func isFloat(t reflect.Type) bool {
	return (t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64) && !isText(t)
}

// fitsInt says why a TOML integer does not fit in t; "" when it does.
func fitsInt(s string, t reflect.Type) string {
	n, err := strconv.ParseInt(strings.ReplaceAll(s, "_", ""), 0, 64)
	switch {
	case errors.Is(err, strconv.ErrRange):
		return "is out of range"
	case err != nil:
		return "is not a whole number"
	}
	v := reflect.New(t).Elem()
	switch t.Kind() {
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n < 0 || v.OverflowUint(uint64(n)) {
			return "is out of range"
		}
	default:
		if v.OverflowInt(n) {
			return "is out of range"
		}
	}
	return ""
}

// wordsOf are the words a type is written with, when it says (an action,
// a mode).
func wordsOf(t reflect.Type) []string {
	if w, ok := reflect.Zero(t).Interface().(interface{ Words() []string }); ok {
		return w.Words()
	}
	return nil
}

// want says what a key of type t takes, in the words of the docs.
func want(t reflect.Type, words []string, path []string) string {
	t = deref(t)
	switch {
	case len(words) > 0:
		return "a word in quotes (" + orList(words) + ")"
	case t == durationType:
		return `a duration in quotes (e.g. "30s", "5m", "1d")`
	case isText(t) && isTable(t):
		return "a string in quotes or a table"
	case isTextOrList(t):
		return "a string in quotes or a list"
	case isText(t), t.Kind() == reflect.String:
		return "a string in quotes"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case isInt(t):
		return "a whole number"
	case isFloat(t):
		return "a number"
	case isTableList(t) && isText(t.Elem()):
		return `a list (e.g. ["…"]) or an array of tables ([[` + lastName(path) + "]])"
	case isTableList(t):
		return "an array of tables ([[" + lastName(path) + "]])"
	case isList(t):
		return `a list in brackets (e.g. ["…"])`
	}
	return "a table"
}

// what names a value as the file wrote it.
func what(v *unstable.Node) string {
	switch v.Kind {
	case unstable.String:
		return "the string " + conf.Quote(string(v.Data))
	case unstable.Integer:
		return "the integer " + conf.Clip(string(v.Data))
	case unstable.Float:
		return "the number " + conf.Clip(string(v.Data))
	case unstable.Bool:
		return string(v.Data)
	case unstable.DateTime, unstable.LocalDateTime, unstable.LocalDate, unstable.LocalTime:
		return "the date " + conf.Clip(string(v.Data))
	case unstable.Array:
		return "a list"
	case unstable.InlineTable:
		return "a table"
	}
	return "this value"
}

// orList writes words as "a, b or c".
func orList(words []string) string {
	if len(words) < 2 {
		return strings.Join(words, "")
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// with is path and more, in a slice of its own.
func with(path []string, more ...string) []string {
	return append(append(make([]string, 0, len(path)+len(more)), path...), more...)
}

// lastName is the last key of path that is not an index.
func lastName(path []string) string {
	for i := len(path) - 1; i >= 0; i-- {
		if _, err := strconv.Atoi(path[i]); err != nil {
			return path[i]
		}
	}
	return ""
}

// display writes a path as people count: limit[2].match.listener.
func display(path []string) string { return strings.Join(displayPath(path), ".") }
