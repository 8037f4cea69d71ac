package mta

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/mail"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"sluice/test/testenv"
)

// Sink is Postfix's smtp-sink, accepting every message on loopback and
// writing each to its own file: the "internet" the test MTAs relay to.
type Sink struct {
	Addr string // 127.0.0.1:PORT
	Dir  string // one file per delivered message

	proc *testenv.Process
}

// StartSink starts smtp-sink on a free port.
func StartSink(t testing.TB) *Sink {
	t.Helper()
	bin := testenv.Tool(t, "smtp-sink")
	dir := filepath.Join(testenv.Dir(t, "sink"), "msgs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// As root smtp-sink insists on dropping privileges (-u).
	if err := chownPostfix(dir); err != nil {
		t.Fatalf("sink dir: %v", err)
	}
	s := &Sink{Addr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), Dir: dir}
	cmd := exec.Command(bin, "-u", "postfix", "-4", "-d", dir+"/%Y%m%d%H%M%S.", s.Addr, "1024")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	s.proc = testenv.StartProcess(t, "smtp-sink", cmd)
	t.Cleanup(func() { s.proc.Stop(syscall.SIGTERM, 5*time.Second) })
	testenv.WaitFor(t, 10*time.Second, "smtp-sink on "+s.Addr, func() error {
		if s.proc.Exited() {
			return fmt.Errorf("smtp-sink exited: %v: %s", s.proc.Err(), out.String())
		}
		return testenv.TCPListening(s.Addr)
	})
	return s
}

// Message is one message the sink received.
type Message struct {
	Path     string
	Envelope textproto.MIMEHeader // smtp-sink's X-Client-Addr, X-Helo-Args, X-Mail-Args, X-Rcpt-Args
	Header   mail.Header          // the message's own header, as the MTA relayed it
	Body     []byte
}

// From is the envelope sender, without angle brackets.
func (m Message) From() string {
	return strings.Trim(strings.Fields(m.Envelope.Get("X-Mail-Args") + " ")[0], "<>")
}

// Messages returns every message received so far, oldest first. A message
// still being received may be incomplete: wait until the MTA's queue is
// empty (Postfix.WaitDelivered, Sendmail.WaitDelivered) before reading.
func (s *Sink) Messages(t testing.TB) []Message {
	t.Helper()
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		t.Fatalf("read sink: %v", err)
	}
	type file struct {
		path string
		mod  time.Time
	}
	var files []file
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		files = append(files, file{filepath.Join(s.Dir, e.Name()), fi.ModTime()})
	}
	sort.Slice(files, func(i, j int) bool {
		if !files[i].mod.Equal(files[j].mod) {
			return files[i].mod.Before(files[j].mod)
		}
		return files[i].path < files[j].path
	})
	msgs := make([]Message, 0, len(files))
	for _, f := range files {
		m, err := ReadMessage(f.path)
		if err != nil {
			t.Fatalf("sink: %v", err)
		}
		msgs = append(msgs, m)
	}
	return msgs
}

// Count is the number of messages received so far.
func (s *Sink) Count() int {
	entries, _ := os.ReadDir(s.Dir)
	return len(entries)
}

// ReadMessage parses one smtp-sink dump file: smtp-sink's envelope lines,
// then the message.
func ReadMessage(path string) (Message, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Message{}, err
	}
	r := textproto.NewReader(bufio.NewReader(bytes.NewReader(raw)))
	m := Message{Path: path, Envelope: textproto.MIMEHeader{}, Header: mail.Header{}}
	// smtp-sink's own lines come first, then the message's header; both
	// are one header block, so split it by name.
	all, err := r.ReadMIMEHeader()
	if err != nil && err != io.EOF {
		return Message{}, fmt.Errorf("parse %s: %v", path, err)
	}
	for k, v := range all {
		switch k {
		case "X-Client-Addr", "X-Client-Proto", "X-Helo-Args", "X-Mail-Args", "X-Rcpt-Args":
			m.Envelope[k] = v
		default:
			m.Header[k] = v
		}
	}
	m.Body, _ = io.ReadAll(r.R)
	return m, nil
}

// WithHeader returns the messages that carry header name.
func WithHeader(msgs []Message, name string) []Message {
	var found []Message
	for _, m := range msgs {
		if len(m.Header[textproto.CanonicalMIMEHeaderKey(name)]) > 0 {
			found = append(found, m)
		}
	}
	return found
}

// FromSender returns the messages whose envelope sender is addr.
func FromSender(msgs []Message, addr string) []Message {
	var found []Message
	for _, m := range msgs {
		if strings.EqualFold(m.From(), addr) {
			found = append(found, m)
		}
	}
	return found
}

func chownPostfix(path string) error {
	uid, gid, err := postfixIDs()
	if err != nil {
		return err
	}
	return os.Chown(path, uid, gid)
}
