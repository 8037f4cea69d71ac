package config

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// docItem is one table header or one key = value of a TOML document.
type docItem struct {
	// path is the key path the item defines, as conf.Error paths are
	// written: an [[array]] table or an array element by its 0-based
	// index ("limit", "1", "match", "client"). It is the item's own.
	path  []string
	off   int            // where its first key starts in the document
	value *unstable.Node // nil for a table header
	array bool           // an [[array]] table header
}

// walkDoc calls f with each table header and each key = value of data, in
// the order they are written, until f returns false. It returns the
// document's syntax error, if any; items before it have been visited.
func walkDoc(data []byte, f func(docItem) bool) error {
	var p unstable.Parser
	p.Reset(data)
	var table []string
	// The [[array]] tables defined so far, by path: a later [a.b] is
	// about the last element of a, as TOML has it.
	arrays := make(map[string]int)
	for p.NextExpression() {
		e := p.Expression()
		if e.Kind == unstable.KeyValue || e.Kind == unstable.Table || e.Kind == unstable.ArrayTable {
			for it := e.Key(); it.Next(); {
				if k := it.Node(); len(k.Data) > maxValueBytes {
					return &offsetError{off: int(k.Raw.Offset), msg: fmt.Sprintf("a key of %d bytes; sluice takes at most %d KiB in one key", len(k.Data), maxValueBytes>>10)}
				}
			}
		}
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			keys := keyParts(e)
			var path []string
			for i, k := range keys {
				path = append(path, k)
				at := strings.Join(path, "\x00")
				n, seen := arrays[at]
				switch {
				case i == len(keys)-1 && e.Kind == unstable.ArrayTable:
					arrays[at] = n + 1
					path = append(path, strconv.Itoa(n))
				case seen:
					path = append(path, strconv.Itoa(n-1))
				}
			}
			table = path
			if !f(docItem{path: path, off: nodeOffset(e), array: e.Kind == unstable.ArrayTable}) {
				return nil
			}
		case unstable.KeyValue:
			path := append(append([]string(nil), table...), keyParts(e)...)
			if !f(docItem{path: path, off: nodeOffset(e), value: e.Value()}) {
				return nil
			}
		}
	}
	return p.Error()
}

// offsetError is a mistake at a place in the document that the parser
// does not see: a key too long to take.
type offsetError struct {
	off int
	msg string
}

func (e *offsetError) Error() string { return e.msg }

// keyParts are the parts of a header's or a key = value's dotted key.
func keyParts(n *unstable.Node) []string {
	var keys []string
	for it := n.Key(); it.Next(); {
		keys = append(keys, string(it.Node().Data))
	}
	return keys
}

// nodeOffset is where n starts in the document: its first key for a
// header or a key = value, else its own bytes or those of its first
// element that has some (an array has none of its own). -1: nowhere.
func nodeOffset(n *unstable.Node) int {
	switch n.Kind {
	case unstable.KeyValue, unstable.Table, unstable.ArrayTable:
		if it := n.Key(); it.Next() {
			return int(it.Node().Raw.Offset)
		}
		return -1
	}
	if n.Raw.Length > 0 {
		return int(n.Raw.Offset)
	}
	for it := n.Children(); it.Next(); {
		if off := nodeOffset(it.Node()); off >= 0 {
			return off
		}
	}
	return -1
}

// lineAt is the line of a byte offset, counted from 1.
func lineAt(data []byte, off int) int {
	off = min(max(off, 0), len(data))
	return 1 + bytes.Count(data[:off], []byte{'\n'})
}

// syntaxOffset is where a syntax error of the document is, from the
// parser's highlight (a part of the document).
func syntaxOffset(data []byte, err error) int {
	if oe, ok := err.(*offsetError); ok {
		return oe.off
	}
	var pe *unstable.ParserError
	if !errors.As(err, &pe) || pe.Highlight == nil {
		return len(data)
	}
	off := cap(data) - cap(pe.Highlight)
	if off < 0 || off > len(data) {
		return len(data)
	}
	return off
}

// lineOf is the line path is written on: the key itself, or the first key
// written below it (lists.a.b = 1 writes lists.a), an element of an array
// or an inline table; else the nearest enclosing table that is written
// (where a required key is missing). 0: nothing of it is written.
func lineOf(data []byte, path []string) int {
	best, bestLen := -1, 0
	_ = walkDoc(data, func(it docItem) bool {
		n := commonPrefix(it.path, path)
		switch {
		case n == len(path):
			best, bestLen = it.off, n
			return false
		case n < len(it.path):
			return true
		case it.value != nil:
			// The path goes on inside this value.
			off, depth := inside(it.value, path[n:])
			if off < 0 {
				off = it.off
			}
			if n+depth > bestLen {
				best, bestLen = off, n+depth
			}
			if n+depth == len(path) {
				return false
			}
		case n > bestLen:
			best, bestLen = it.off, n
		}
		return true
	})
	if best < 0 {
		return 0
	}
	return lineAt(data, best)
}

// inside follows path into a value (array elements by index, inline
// tables by key) and returns where the deepest part it reached starts
// and how many parts of path that was.
func inside(v *unstable.Node, path []string) (off, depth int) {
	off = nodeOffset(v)
	for depth < len(path) {
		switch v.Kind {
		case unstable.Array:
			i, err := strconv.Atoi(path[depth])
			if err != nil {
				return off, depth
			}
			e := nthChild(v, i)
			if e == nil {
				return off, depth
			}
			v, depth = e, depth+1
			if o := nodeOffset(v); o >= 0 {
				off = o
			}
		case unstable.InlineTable:
			var next *unstable.Node
			for it := v.Children(); it.Next() && next == nil; {
				kv := it.Node()
				if kv.Kind != unstable.KeyValue {
					continue
				}
				keys := keyParts(kv)
				n := commonPrefix(keys, path[depth:])
				switch {
				case n == len(path)-depth:
					return nodeOffset(kv), len(path)
				case n == len(keys):
					next, off, depth = kv.Value(), nodeOffset(kv), depth+n
				}
			}
			if next == nil {
				return off, depth
			}
			v = next
		default:
			return off, depth
		}
	}
	return off, depth
}

func nthChild(v *unstable.Node, i int) *unstable.Node {
	for it := v.Children(); it.Next(); i-- {
		if i == 0 {
			return it.Node()
		}
	}
	return nil
}

// commonPrefix is how many leading parts a and b share.
func commonPrefix(a, b []string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}
