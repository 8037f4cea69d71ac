package main

import (
	"encoding"
	"reflect"
	"slices"
	"strings"

	"sluice/config"
)

// configKeys walks the config type the way the TOML decoder does and
// returns every key a file may write, as dotted paths: "listen",
// "store.backend", "limit.match.client" (a [[limit]]'s [limit.match]),
// "lists.NAME" (a table whose keys the file chooses).
func configKeys() []string {
	var keys []string
	walkKeys(reflect.TypeFor[config.Config](), "", &keys)
	slices.Sort(keys)
	return slices.Compact(keys)
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

func walkKeys(t reflect.Type, prefix string, keys *[]string) {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" {
			walkKeys(deref(f.Type), prefix, keys)
			continue
		}
		if name == "" {
			name = f.Name // the decoder matches it case-insensitively
		}
		walkValue(f.Type, prefix+name, keys)
	}
}

// walkValue adds the key path and, for a table (or an array of tables),
// the keys inside it. A type that reads itself from a string is a key of
// its own, and may still be written as a table too (a check's short form).
func walkValue(t reflect.Type, path string, keys *[]string) {
	t = deref(t)
	if t.Kind() == reflect.Slice {
		t = deref(t.Elem())
	}
	table := t.Kind() == reflect.Struct && hasKeys(t)
	if t.Kind() != reflect.Map && (!table || reflect.PointerTo(t).Implements(textUnmarshaler)) {
		*keys = append(*keys, path)
	}
	switch {
	case table:
		walkKeys(t, path+".", keys)
	case t.Kind() == reflect.Map:
		walkValue(t.Elem(), path+".NAME", keys)
	}
}

func hasKeys(t reflect.Type) bool {
	for i := range t.NumField() {
		if t.Field(i).IsExported() {
			return true
		}
	}
	return false
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}
