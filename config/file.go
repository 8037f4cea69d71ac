package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"sluice/conf"
)

// decodeFile decodes a TOML file strictly into v: a key that nothing reads
// is an error, and every error names the file and line.
func decodeFile(path string, data []byte, v any) error {
	d := toml.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	err := d.Decode(v)
	if err == nil {
		return nil
	}
	var de *toml.DecodeError
	var se *toml.StrictMissingError
	switch {
	case errors.As(err, &se):
		var msgs []string
		for _, e := range se.Errors {
			row, _ := e.Position()
			msgs = append(msgs, fmt.Sprintf("%s:%d: unknown key %s", path, row, strings.Join(e.Key(), ".")))
		}
		return errors.New(strings.Join(msgs, "\n"))
	case errors.As(err, &de):
		row, _ := de.Position()
		msg := de.Error()
		if k := de.Key(); len(k) > 0 {
			msg = keyAt(data, k, row) + ": " + strings.TrimPrefix(msg, "toml: ")
		}
		return fmt.Errorf("%s:%d: %s", path, row, msg)
	}
	return fmt.Errorf("%s: %w", path, err)
}

// keyAt names the key written on line row as people count: the decoder
// says "limit.action" for the action of any [[limit]]; the file says
// which, limit[2].action.
func keyAt(data []byte, key []string, row int) string {
	want := strings.Join(key, ".")
	for path, line := range keyLines(data) {
		if line != row {
			continue
		}
		parts := strings.Split(path, ".")
		var named []string
		for _, p := range parts {
			if _, err := strconv.Atoi(p); err != nil {
				named = append(named, p)
			}
		}
		if strings.Join(named, ".") == want {
			return strings.Join(displayPath(parts), ".")
		}
	}
	return want
}

// locate turns a validation error about a key path into "file:line: ...".
func locate(path string, data []byte, err error) error {
	var ke *conf.Error
	if !errors.As(err, &ke) {
		return fmt.Errorf("%s: %w", path, err)
	}
	name := strings.Join(displayPath(ke.Path), ".")
	if line := keyLines(data)[strings.Join(ke.Path, ".")]; line > 0 {
		return fmt.Errorf("%s:%d: %s: %v", path, line, name, ke.Err)
	}
	// The key is not in the file (a required key is missing): point at the
	// nearest enclosing table that is.
	lines := keyLines(data)
	for n := len(ke.Path) - 1; n > 0; n-- {
		if line := lines[strings.Join(ke.Path[:n], ".")]; line > 0 {
			return fmt.Errorf("%s:%d: %s: %v", path, line, name, ke.Err)
		}
	}
	return fmt.Errorf("%s: %s: %v", path, name, ke.Err)
}

// displayPath writes array indexes the way people count: limit[1] is the
// first [[limit]].
func displayPath(p []string) []string {
	out := make([]string, 0, len(p))
	for _, e := range p {
		if n, err := strconv.Atoi(e); err == nil && len(out) > 0 {
			out[len(out)-1] += "[" + strconv.Itoa(n+1) + "]"
			continue
		}
		out = append(out, e)
	}
	return out
}

// keyLines maps every key path in the document ("limit.1.rate",
// "store.backend", "limit.1") to the line it is written on.
func keyLines(data []byte) map[string]int {
	lines := make(map[string]int)
	var p unstable.Parser
	p.Reset(data)
	var table []string
	arrays := make(map[string]int)
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table = table[:0]
			for it := e.Key(); it.Next(); {
				table = append(table, string(it.Node().Data))
			}
			if e.Kind == unstable.ArrayTable {
				k := strings.Join(table, ".")
				table = append(table, strconv.Itoa(arrays[k]))
				arrays[k]++
			}
			lines[strings.Join(table, ".")] = lineOf(&p, e)
		case unstable.KeyValue:
			key := append([]string(nil), table...)
			for it := e.Key(); it.Next(); {
				key = append(key, string(it.Node().Data))
			}
			lines[strings.Join(key, ".")] = lineOf(&p, e)
		}
	}
	return lines
}

// lineOf is the line of the node's first key: tables have no range of
// their own, their keys do.
func lineOf(p *unstable.Parser, n *unstable.Node) int {
	it := n.Key()
	if !it.Next() {
		return 0
	}
	return p.Shape(it.Node().Raw).Start.Line
}

func readFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return data, nil
}

// Locate turns a validation error about a key path (a *conf.Error, as
// every section's Validate returns) into "FILE:LINE: path: message",
// reading the lines from c's own text.
func (c *Config) Locate(err error) error { return locate(c.name, c.data, err) }
