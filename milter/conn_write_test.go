package milter

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/d--j/go-milter"
)

// writeRecorder is a socket that keeps each write apart.
type writeRecorder struct {
	net.Conn
	forward bool // hand writes on to the Conn, else drop them

	mu     sync.Mutex
	writes [][]byte
}

func (w *writeRecorder) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.writes = append(w.writes, bytes.Clone(p))
	w.mu.Unlock()
	if w.forward {
		return w.Conn.Write(p)
	}
	return len(p), nil
}

func (w *writeRecorder) taken() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes
}

func (w *writeRecorder) SetWriteDeadline(time.Time) error { return nil }

func header(length uint32, code byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, length), code)
}

// TestWriteSendsWholePackets proves that a packet written as go-milter
// writes it, its header and then its data, reaches the socket as one
// write, and that a packet without data, and data that happens to be as
// long as a header, are not held back.
func TestWriteSendsWholePackets(t *testing.T) {
	rec := &writeRecorder{}
	c := newConn(rec, time.Minute, nil)
	five := []byte("abcde") // data as long as a packet header

	steps := []struct {
		p    []byte
		want int // what Write reports
	}{
		{header(4, 'y'), 5}, {[]byte("abc"), 3}, // SMFIR_REPLYCODE-like: held, then sent whole
		{header(1, 'c'), 5},            // continue: no data, sent at once
		{header(6, 'h'), 5}, {five, 5}, // data of a header's length
		{header(1, 'a'), 5},
	}
	for i, st := range steps {
		n, err := c.Write(st.p)
		if err != nil || n != st.want {
			t.Fatalf("write %d: %d, %v; want %d, nil", i, n, err, st.want)
		}
	}
	want := [][]byte{
		append(header(4, 'y'), "abc"...),
		header(1, 'c'),
		append(header(6, 'h'), five...),
		header(1, 'a'),
	}
	if len(rec.writes) != len(want) {
		t.Fatalf("%d writes reached the socket, want %d: %q", len(rec.writes), len(want), rec.writes)
	}
	for i := range want {
		if !bytes.Equal(rec.writes[i], want[i]) {
			t.Errorf("write %d: %q, want %q", i, rec.writes[i], want[i])
		}
	}
}

// TestNegotiationReplyIsOneWrite proves it with go-milter itself: its
// answer to the MTA's option negotiation, a header and then the options
// and macro lists, reaches the socket in one write.
func TestNegotiationReplyIsOneWrite(t *testing.T) {
	mtaSide, milterSide := net.Pipe()
	defer mtaSide.Close()
	rec := &writeRecorder{Conn: milterSide, forward: true}
	srv := milter.NewServer(
		milter.WithMilter(func() milter.Milter { return milter.NoOpMilter{} }),
		milter.WithMacroRequest(milter.StageConnect, []string{macroListener}),
	)
	in := newHandoff()
	defer in.Close()
	go func() { _ = srv.Serve(in) }()
	defer srv.Close()
	go in.give(newConn(rec, time.Minute, nil))

	// SMFIC_OPTNEG: version 6, every action, every protocol step.
	optneg := binary.BigEndian.AppendUint32(nil, 13)
	optneg = append(optneg, 'O')
	optneg = binary.BigEndian.AppendUint32(optneg, 6)
	optneg = binary.BigEndian.AppendUint32(optneg, 0x1ff)
	optneg = binary.BigEndian.AppendUint32(optneg, 0x1fffff)
	_ = mtaSide.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := mtaSide.Write(optneg); err != nil {
		t.Fatal(err)
	}
	var size [4]byte
	if _, err := io.ReadFull(mtaSide, size[:]); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, binary.BigEndian.Uint32(size[:]))
	if _, err := io.ReadFull(mtaSide, reply); err != nil {
		t.Fatal(err)
	}
	if reply[0] != 'O' || !bytes.Contains(reply, []byte(macroListener)) {
		t.Fatalf("negotiation reply %q: want SMFIC_OPTNEG with the macro request", reply)
	}
	writes := rec.taken()
	if len(writes) != 1 || len(writes[0]) != 4+len(reply) {
		t.Errorf("the reply reached the socket in %d writes (%q), want 1 of %d bytes", len(writes), writes, 4+len(reply))
	}
}
