package redisstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"sluice/limits/counter"
	"sluice/limits/counter/countertest"
	"sluice/limits/redisstore/redistest"
)

// Replies as Redis 7 sends them, in RESP2 and RESP3, and what RESP3
// allows beside: the scanner lets each through, whole or in any pieces.
var redisReplies = []string{
	"+OK\r\n",
	"-ERR unknown command 'HELLO'\r\n",
	"-NOSCRIPT No matching script. Please use EVAL.\r\n",
	":0\r\n", ":-42\r\n",
	"$5\r\nhello\r\n", "$0\r\n\r\n", "$-1\r\n",
	"$5\r\na\r\nb\n\r\n", // CRLF inside a bulk string is data
	"*-1\r\n", "*0\r\n",
	"*8\r\n:1\r\n:0\r\n:1\r\n:1\r\n:1\r\n:0\r\n:2\r\n:1\r\n",  // the take script's answer
	"*4\r\n$3\r\nkey\r\n$5\r\nvalue\r\n$1\r\nk\r\n$0\r\n\r\n", // HGETALL in RESP2
	"*2\r\n$10\r\n1733328000\r\n$6\r\n123456\r\n",             // TIME
	"*3\r\n*2\r\n:1\r\n:2\r\n*0\r\n*1\r\n$1\r\nx\r\n",
	"_\r\n", ",3.14\r\n", ",inf\r\n", "#t\r\n", "#f\r\n", "(3492890328409238509324850943850943825024385\r\n",
	"=15\r\ntxt:Some string\r\n", "!21\r\nSYNTAX invalid syntax\r\n",
	"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n",         // HGETALL in RESP3
	"~3\r\n+a\r\n+b\r\n+c\r\n",                        // a set
	">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", // a push
	"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.19\r\n$1\r\nb\r\n,0.06\r\n*2\r\n:2039123\r\n:9543892\r\n", // an attribute, then its reply
	"*2\r\n|1\r\n+ttl\r\n:3600\r\n:1\r\n:2\r\n",                                                             // an attribute on an element is no element
	"|0\r\n+OK\r\n", "|-1\r\n+OK\r\n",
	"%0\r\n", "~0\r\n", "%-1\r\n",
	"+" + strings.Repeat("x", maxLine-1) + "\r\n", // the longest line
	"*" + fmt.Sprint(maxPending) + "\r\n" + strings.Repeat(":1\r\n", maxPending),
	"*2\r\n*" + fmt.Sprint(maxPending-2) + "\r\n" + strings.Repeat("_\r\n", maxPending-2) + ":1\r\n",
	strings.Repeat("*1\r\n", maxDepth) + ":1\r\n",
}

func TestScannerAcceptsRedisReplies(t *testing.T) {
	for _, r := range redisReplies {
		sc := newReplyScanner(defaultLimits)
		if err := sc.scan([]byte(r)); err != nil {
			t.Errorf("%.60q: %v", r, err)
		}
		if sc.state != atType || len(sc.open) != 0 || sc.pend != 0 || sc.reply != 0 {
			t.Errorf("%.60q: not at a reply's end after it: %+v", r, sc)
		}
	}
	// All of them back to back, as a pipeline's replies come.
	all := []byte(strings.Join(redisReplies, ""))
	if err := newReplyScanner(defaultLimits).scan(all); err != nil {
		t.Errorf("the replies back to back: %v", err)
	}
	// In pieces of every size up to 9, and byte by byte.
	for size := 1; size <= 9; size++ {
		sc := newReplyScanner(defaultLimits)
		for p := all; len(p) > 0; {
			k := min(size, len(p))
			if err := sc.scan(p[:k]); err != nil {
				t.Fatalf("in pieces of %d, at byte %d: %v", size, len(all)-len(p), err)
			}
			p = p[k:]
		}
	}
}

// Replies that break a bound or RESP's framing are refused, and the
// error says what was wrong.
func TestScannerRefuses(t *testing.T) {
	tests := []struct{ reply, want string }{
		{"$4611686018427387904\r\n", "declares more than 67108864 bytes"},
		{"$67108863\r\n", "a bulk string of 67108863 bytes"},
		{"*4611686018427387904\r\n", "declares more than 1048576 elements"},
		{"%524289\r\n", "1048578 elements where 0 are pending"},
		{"*1000000\r\n*1000000\r\n", "1000000 elements where 1000000 are pending"},
		{strings.Repeat("*1\r\n", maxDepth+1), "nested more than 32 deep"},
		{"|1\r\n|1\r\n+a\r\n+b\r\n+k\r\n+v\r\n+reply\r\n", "an attribute inside an attribute"},
		{"+" + strings.Repeat("x", maxLine+1), "line longer than 65536 bytes"},
		{"$-5\r\n", "not a length"},
		{"$+5\r\n", "not a length"},
		{"$\r\n", "not a length"},
		{"$5x\r\n", "not a length"},
		{"$5\r\r\n", "not a length"},
		{"*?\r\n", "not a length"},
		{"+OK\n", "does not end in CRLF"},
		{"\x00garbage\r\n", "unknown reply type byte"},
		{"\r\n", "unknown reply type byte"},
		{"HTTP/1.1 400 Bad Request\r\n", "unknown reply type byte 'H'"},
	}
	for _, tc := range tests {
		err := newReplyScanner(defaultLimits).scan([]byte(tc.reply))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.40q: %v, want %q", tc.reply, err, tc.want)
		}
	}
	// Bulk strings each under the bound, together above it.
	small := replyLimits{bytes: 100, pending: 10, depth: 4, line: 20}
	two := "*2\r\n$60\r\n" + strings.Repeat("x", 60) + "\r\n$60\r\n"
	err := newReplyScanner(small).scan([]byte(two))
	if err == nil || !strings.Contains(err.Error(), "a bulk string of 60 bytes in a reply of 76 bytes so far, above the 100") {
		t.Errorf("two bulk strings above the bound together: %v", err)
	}
	// The bound is per reply: the next one starts from zero.
	if err := newReplyScanner(small).scan([]byte(strings.Repeat("$60\r\n"+strings.Repeat("x", 60)+"\r\n", 3))); err != nil {
		t.Errorf("three replies each under the bound: %v", err)
	}
}

// A refused reply closes the connection: go-redis gets the error and
// never the header, and later reads fail the same way.
func TestBoundedConnRefuses(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	var told error
	conn, _ := boundedDialer(func(context.Context, string, string) (net.Conn, error) { return client, nil },
		func(err error) { told = err })(context.Background(), "tcp", "192.0.2.1:6379")
	go func() {
		server.Write([]byte("+OK\r\n"))
		server.Write([]byte("$4611686018427387904\r\n"))
	}()
	buf := make([]byte, 64)
	if n, err := conn.Read(buf); err != nil || string(buf[:n]) != "+OK\r\n" {
		t.Fatalf("first read: %q %v", buf[:n], err)
	}
	n, err := conn.Read(buf)
	if n != 0 || !errors.Is(err, ErrReplyRefused) || !strings.Contains(err.Error(), "192.0.2.1:6379") {
		t.Fatalf("second read: %d bytes, %v; want a refused reply naming the server", n, err)
	}
	if told != err {
		t.Errorf("the store was told %v", told)
	}
	if n, err := conn.Read(buf); n != 0 || !errors.Is(err, ErrReplyRefused) {
		t.Errorf("read after the refusal: %d %v", n, err)
	}
	if _, err := client.Write([]byte("x")); err == nil {
		t.Error("the connection is still open")
	}
}

// oracle is a second reading of the bounds, recursive as go-redis reads,
// for the fuzz target to hold the scanner to: it walks the values of a
// stream and returns the first thing that breaks lim, errTruncated when
// the stream ends inside a value, or nil.
type oracle struct {
	b      []byte
	lim    replyLimits
	reply  int64
	pend   int64
	depth  int
	inAttr bool
}

var errTruncated = errors.New("truncated")

func (o *oracle) stream() error {
	for len(o.b) > 0 {
		o.reply = 0
		if err := o.value(); err != nil {
			return err
		}
	}
	return nil
}

// value reads the attributes before a value, then the value.
func (o *oracle) value() error {
	for {
		kind, n, err := o.line()
		if err != nil {
			return err
		}
		attr := kind == '|'
		switch {
		case !strings.ContainsRune("$=!*~>%|", rune(kind)):
			return nil
		case n == -1 && attr:
			continue
		case n == -1:
			return nil
		case strings.ContainsRune("$=!", rune(kind)):
			if o.reply+n+2 > o.lim.bytes {
				return errors.New("bulk")
			}
			if int64(len(o.b)) < n+2 {
				return errTruncated
			}
			o.b, o.reply = o.b[n+2:], o.reply+n+2
			return nil
		}
		if kind == '%' || attr {
			n *= 2
		}
		if attr && o.inAttr || o.depth >= o.lim.depth || o.pend+n > o.lim.pending {
			return errors.New("aggregate")
		}
		o.depth++
		o.pend += n
		outer := o.inAttr
		o.inAttr = o.inAttr || attr
		for ; n > 0; n-- {
			if err := o.value(); err != nil {
				return err
			}
			o.pend--
		}
		o.depth--
		o.inAttr = outer
		if !attr {
			return nil
		}
	}
}

// line reads a type byte and its line; n is a header's length.
func (o *oracle) line() (kind byte, n int64, err error) {
	if len(o.b) == 0 {
		return 0, 0, errTruncated
	}
	kind = o.b[0]
	if !strings.ContainsRune("+-:_,#($=!*~>%|", rune(kind)) {
		return 0, 0, errors.New("type")
	}
	end := bytes.IndexByte(o.b, '\n')
	text := o.b[1:]
	if end >= 0 {
		text = o.b[1:end]
	}
	if len(text) > o.lim.line {
		return 0, 0, errors.New("long line")
	}
	header := strings.ContainsRune("$=!*~>%|", rune(kind))
	limit := o.lim.pending
	if strings.ContainsRune("$=!", rune(kind)) {
		limit = o.lim.bytes
	}
	neg, digits := false, 0
	for i, c := range text {
		if !header {
			break
		}
		switch {
		case i == 0 && c == '-':
			neg = true
		case c >= '0' && c <= '9':
			digits++
			if n = n*10 + int64(c-'0'); n > limit {
				return 0, 0, errors.New("length")
			}
		case c == '\r' && i == len(text)-1:
		default:
			return 0, 0, errors.New("not a length")
		}
	}
	if end < 0 {
		return 0, 0, errTruncated
	}
	o.b = o.b[end+1:]
	o.reply += int64(len(text)) + 2
	if len(text) == 0 || text[len(text)-1] != '\r' || o.reply > o.lim.bytes {
		return 0, 0, errors.New("line")
	}
	if header && (digits == 0 || neg && n != 1) {
		return 0, 0, errors.New("not a length")
	}
	if neg {
		n = -1
	}
	return kind, n, nil
}

// fuzzLimits are small, so that go-redis reading an accepted stream
// allocates little.
var fuzzLimits = replyLimits{bytes: 4096, pending: 64, depth: 6, line: 128}

// memConn is a connection whose peer has said all it will: reads return
// its bytes, at most piece at a time, then io.EOF; writes go nowhere.
type memConn struct {
	r     *bytes.Reader
	piece int
}

func (c *memConn) Read(p []byte) (int, error)       { return c.r.Read(p[:min(len(p), c.piece)]) }
func (c *memConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *memConn) Close() error                     { return nil }
func (c *memConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

// readThrough has go-redis read data, piece bytes at a time, as the
// replies to a pipeline of four commands, through a boundedConn with
// fuzzLimits. A reply the bounds let through must not make it panic.
func readThrough(data []byte, piece int) {
	client := redis.NewClient(&redis.Options{
		// An address, not a name: go-redis looks a name up in the DNS even
		// when the dialer is its caller's (70 ms a client here).
		Addr: "127.0.0.1:6379", MaxRetries: -1, DisableIdentity: true, PoolSize: 1,
		Dialer: func(context.Context, string, string) (net.Conn, error) {
			// HELLO is refused, as by a Redis before 6; then data.
			in := append([]byte("-ERR unknown command 'HELLO'\r\n"), data...)
			c := &memConn{r: bytes.NewReader(in), piece: piece}
			return &boundedConn{Conn: c, scan: newReplyScanner(fuzzLimits), addr: "fuzz"}, nil
		},
	})
	defer client.Close()
	ctx := context.Background()
	client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Do(ctx, "GET", "a")
		p.EvalSha(ctx, "0000", []string{"k"}, 1)
		p.HGetAll(ctx, "h")
		p.Do(ctx, "GET", "b")
		return nil
	})
}

// fuzzSeeds are streams for both fuzz targets to start from: Redis's
// replies and hostile ones.
func fuzzSeeds(f *testing.F) {
	for _, r := range redisReplies[:len(redisReplies)-3] {
		f.Add([]byte(r), uint8(1))
	}
	for _, r := range []string{
		"$4611686018427387904\r\n", "*4611686018427387904\r\n", "%2305843009213693952\r\n",
		"*64\r\n*64\r\n", strings.Repeat("*1\r\n", 10), "|1\r\n|1\r\n+a\r\n+b\r\n+k\r\n+v\r\n+r\r\n",
		"$-5\r\n", "$5\r\r\n", "+OK\n", "\x00", "$4096\r\n", "*2\r\n$2000\r\n" + strings.Repeat("x", 2000) + "\r\n$2000\r\n",
	} {
		f.Add([]byte(r), uint8(3))
	}
}

// The scanner's verdict on a stream does not depend on how the stream is
// cut into reads, and agrees with the oracle's.
func FuzzReplyBounds(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte, piece uint8) {
		whole := newReplyScanner(fuzzLimits).scan(data)
		sc := newReplyScanner(fuzzLimits)
		var cut error
		size := int(piece%16) + 1
		for p := data; len(p) > 0 && cut == nil; {
			k := min(size, len(p))
			cut, p = sc.scan(p[:k]), p[k:]
		}
		if (whole == nil) != (cut == nil) {
			t.Fatalf("whole: %v; in pieces of %d: %v", whole, size, cut)
		}
		o := &oracle{b: data, lim: fuzzLimits}
		want := o.stream()
		if errors.Is(want, errTruncated) {
			want = nil
		}
		if (whole == nil) != (want == nil) {
			t.Fatalf("scanner: %v; oracle: %v", whole, want)
		}
	})
}

// go-redis reads what the bounds let through without a panic. A client
// per stream is slower than the scanner alone, hence a target of its own.
func FuzzReplyBoundsGoRedis(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte, piece uint8) {
		readThrough(data, int(piece%16)+1)
	})
}

// BenchmarkScan measures the scanner on the take script's reply to a
// stage of six requests, the reply of every counted SMTP stage.
func BenchmarkScan(b *testing.B) {
	reply := []byte("*24\r\n" + strings.Repeat(":1\r\n:0\r\n:17\r\n:1\r\n", 6))
	sc := newReplyScanner(defaultLimits)
	b.SetBytes(int64(len(reply)))
	for b.Loop() {
		if err := sc.scan(reply); err != nil {
			b.Fatal(err)
		}
	}
}

// withoutBounds gives the store go-redis's own connections, with no
// scanner: the baseline of BenchmarkDoBounds.
func withoutBounds() Option {
	return func(s *Store) {
		o := *s.client.(*redis.Client).Options()
		o.Dialer = nil
		s.client.Close()
		s.client = redis.NewClient(&o)
	}
}

// BenchmarkDoBounds runs one stage's Do (three rules of two windows: six
// keys, the take script's reply of 24 integers) against a real
// redis-server on two stores, one whose connections go through the reply
// bounds and one with go-redis's own, taking turns in the same loop so
// that a busy machine slows both alike (each goes first every other
// time). It reports each one's median
// and their ratio:
//
//	go test -run '^$' -bench DoBounds -count 6 ./limits/redisstore
func BenchmarkDoBounds(b *testing.B) {
	srv := redistest.Start(b)
	ctx := context.Background()
	open := func(opts ...Option) *Store {
		s, err := Open(testConfig(b, false, srv.Addr), nil, opts...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		return s
	}
	plain, bounded := open(withoutBounds()), open()
	for s, want := range map[*Store]bool{plain: false, bounded: true} {
		c, err := s.client.(*redis.Client).Options().Dialer(ctx, "tcp", srv.Addr)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
		if _, ok := c.(boundedSyscallConn); ok != want {
			b.Fatalf("the store's connections are %T", c)
		}
	}
	reqs := make([]counter.Request, 0, 6)
	for _, dim := range []string{"sender:a@example.org", "sender_domain:example.org", "client_ip:192.0.2.1"} {
		for w, per := range []time.Duration{time.Minute, 24 * time.Hour} {
			reqs = append(reqs, countertest.Rate(fmt.Sprintf("r%d:%d:%s", len(reqs), w, dim), 1<<20, per, 1<<20))
		}
	}
	var lat [2][]time.Duration
	for i := range 400 { // connections, scripts
		if err := []*Store{plain, bounded}[i%2].Do(ctx, reqs); err != nil {
			b.Fatal(err)
		}
	}
	stores := []*Store{plain, bounded}
	for n := 0; b.Loop(); n++ {
		for k := range 2 {
			i := (n + k) % 2 // each goes first every other time
			t0 := time.Now()
			if err := stores[i].Do(ctx, reqs); err != nil {
				b.Fatal(err)
			}
			lat[i] = append(lat[i], time.Since(t0))
		}
	}
	p50 := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2].Nanoseconds())
	}
	pl, bo := p50(lat[0]), p50(lat[1])
	b.ReportMetric(pl, "plain-p50-ns")
	b.ReportMetric(bo, "bounded-p50-ns")
	b.ReportMetric(bo/pl, "bounded/plain")
}
