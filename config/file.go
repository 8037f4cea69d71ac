package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"sluice/conf"
)

// decodeFile decodes a TOML file strictly into v: a key that nothing reads
// is an error, and every error names the file and line. The shape of the
// file is checked first (checkShape), so that what reaches the decoder
// decodes as the docs say; the decoder's own errors are a last resort.
func decodeFile(path string, data []byte, v any) error {
	if errs := checkShape(data, reflect.TypeOf(v).Elem()); len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = fmt.Sprintf("%s:%d: %s", path, lineAt(data, e.off), e.msg)
		}
		return errors.New(strings.Join(msgs, "\n"))
	}
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
			msgs = append(msgs, fmt.Sprintf("%s:%d: unknown key %s", path, row, conf.Clip(strings.Join(e.Key(), "."))))
		}
		return errors.New(strings.Join(msgs, "\n"))
	case errors.As(err, &de):
		row, _ := de.Position()
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		if k := de.Key(); len(k) > 0 {
			msg = keyAt(data, k, row) + ": " + msg
		}
		return fmt.Errorf("%s:%d: %s", path, row, conf.ClipMessage(msg))
	}
	return fmt.Errorf("%s: %s", path, conf.ClipMessage(err.Error()))
}

// keyAt names the key written on line row as people count: the decoder
// says "limit.action" for the action of any [[limit]]; the file says
// which, limit[2].action.
func keyAt(data []byte, key []string, row int) string {
	want := strings.Join(key, ".")
	found := want
	_ = walkDoc(data, func(it docItem) bool {
		if lineAt(data, it.off) != row {
			return true
		}
		var named []string
		for _, p := range it.path {
			if _, err := strconv.Atoi(p); err != nil {
				named = append(named, p)
			}
		}
		if strings.Join(named, ".") == want {
			found = display(it.path)
			return false
		}
		return true
	})
	return conf.Clip(found)
}

// locate turns a validation error about a key path into "file:line: ...".
func locate(path string, data []byte, err error) error {
	var ke *conf.Error
	if !errors.As(err, &ke) {
		return &located{msg: path + ": " + conf.ClipMessage(err.Error()), err: err}
	}
	name := conf.Clip(display(ke.Path))
	msg := conf.ClipMessage(ke.Err.Error())
	// The key itself, or when it is not in the file (a required key is
	// missing) the nearest enclosing table that is.
	if line := lineOf(data, ke.Path); line > 0 {
		return &located{msg: fmt.Sprintf("%s:%d: %s: %s", path, line, name, msg), err: err}
	}
	return &located{msg: fmt.Sprintf("%s: %s: %s", path, name, msg), err: err}
}

// located is an error with its place in the file, its message bounded;
// the error it says stays underneath for errors.Is and errors.As.
type located struct {
	msg string
	err error
}

func (e *located) Error() string { return e.msg }
func (e *located) Unwrap() error { return e.err }

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
