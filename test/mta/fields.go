package mta

import (
	"bufio"
	"bytes"
	"fmt"
	"net/textproto"
	"os"
	"strings"
)

// Field is one header field of a delivered message.
type Field struct {
	Name, Value string // the value unfolded, without the space after the colon
}

// sinkEnvelope are the lines smtp-sink writes before the message.
var sinkEnvelope = map[string]bool{
	"X-Client-Addr": true, "X-Client-Proto": true, "X-Helo-Args": true, "X-Mail-Args": true, "X-Rcpt-Args": true,
}

// Fields returns the message's header fields in the order they were
// delivered, which Header (a map) loses: where a milter's header landed
// is part of what a test checks.
func (m Message) Fields() ([]Field, error) {
	raw, err := os.ReadFile(m.Path)
	if err != nil {
		return nil, err
	}
	var fields []Field
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(fields) == 0 {
				return nil, fmt.Errorf("%s: continuation line before any field: %q", m.Path, line)
			}
			fields[len(fields)-1].Value += " " + strings.TrimSpace(line)
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("%s: not a header field: %q", m.Path, line)
		}
		name = textproto.TrimString(name)
		if sinkEnvelope[textproto.CanonicalMIMEHeaderKey(name)] {
			continue
		}
		fields = append(fields, Field{Name: name, Value: strings.TrimSpace(value)})
	}
	return fields, sc.Err()
}
