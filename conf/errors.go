// Package conf holds what every config section shares: errors tied to the
// key they are about (so the loader can name the line) and value types.
package conf

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Error is a validation error at a key path such as ["limit", "2", "rate"].
// Array elements appear as their 0-based index.
type Error struct {
	Path []string
	Err  error
}

func (e *Error) Error() string { return strings.Join(e.Path, ".") + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Errorf makes an error about key. String arguments longer than
// MaxQuoted are clipped: a message quotes a value, it does not repeat it.
func Errorf(key, format string, args ...any) error {
	return &Error{Path: []string{key}, Err: fmt.Errorf(format, clipArgs(args)...)}
}

// In places err under the given path prefix. A nil err stays nil.
func In(err error, prefix ...string) error {
	if err == nil {
		return nil
	}
	var ke *Error
	if errors.As(err, &ke) {
		return &Error{Path: append(append([]string{}, prefix...), ke.Path...), Err: ke.Err}
	}
	return &Error{Path: append([]string{}, prefix...), Err: err}
}

// Index names the i-th element of an array of tables.
func Index(i int) string { return strconv.Itoa(i) }
