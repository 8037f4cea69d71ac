// Package maillogtest writes made-up Postfix logs for tests and
// benchmarks: sessions of many clients and senders interleaved in time as
// a busy server logs them, with the lines of smtpd, cleanup, qmgr and the
// delivery agent.
package maillogtest

import (
	"bufio"
	"container/heap"
	"fmt"
	"io"
	"math/rand/v2"
	"time"
)

// Options shape a generated log.
type Options struct {
	Lines   int       // about this many lines (whole sessions: a few more)
	Start   time.Time // the first session's time; zero: 2026-12-01 00:00 UTC
	Clients int       // distinct client addresses (default 5000)
	Senders int       // distinct senders (default 20000)
	// Rate is sessions per second of log time (default 50).
	Rate float64
	// RFC3339 writes high-precision RFC 3339 stamps; else the
	// traditional "Dec 01 00:00:00" of Postfix's maillog_file.
	RFC3339 bool
	Seed    uint64
}

// line is one line waiting for its time.
type line struct {
	at   time.Time
	seq  int
	text string
}

type lineHeap []line

func (h lineHeap) Len() int { return len(h) }
func (h lineHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}
func (h lineHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *lineHeap) Push(x any)   { *h = append(*h, x.(line)) }
func (h *lineHeap) Pop() any {
	old := *h
	l := old[len(old)-1]
	*h = old[:len(old)-1]
	return l
}

// Postfix writes a log of about o.Lines lines to w and returns how many
// it wrote.
func Postfix(w io.Writer, o Options) (int, error) {
	if o.Start.IsZero() {
		o.Start = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	}
	if o.Clients <= 0 {
		o.Clients = 5000
	}
	if o.Senders <= 0 {
		o.Senders = 20000
	}
	if o.Rate <= 0 {
		o.Rate = 50
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x5eed))
	bw := bufio.NewWriterSize(w, 1<<16)
	var pending lineHeap
	seq, written, qid := 0, 0, uint64(0x10000)
	free := make([]int, 0, 256) // smtpd pids not serving a client
	for p := 256; p > 0; p-- {
		free = append(free, 3000+p)
	}
	busyUntil := map[int]time.Time{}
	emit := func(at time.Time, format string, args ...any) {
		seq++
		heap.Push(&pending, line{at: at, seq: seq, text: fmt.Sprintf(format, args...)})
	}
	flushUntil := func(t time.Time) error {
		for len(pending) > 0 && !pending[0].at.After(t) {
			l := heap.Pop(&pending).(line)
			stamp := l.at.UTC().Format("Jan 02 15:04:05")
			if o.RFC3339 {
				stamp = l.at.UTC().Format("2006-01-02T15:04:05.000000+00:00")
			}
			if _, err := fmt.Fprintf(bw, "%s mx %s\n", stamp, l.text); err != nil {
				return err
			}
			written++
		}
		return nil
	}
	step := time.Duration(float64(time.Second) / o.Rate)
	t := o.Start
	for written+len(pending) < o.Lines {
		t = t.Add(time.Duration(rng.Int64N(int64(2 * step))))
		// Free the pids whose sessions ended.
		for pid, until := range busyUntil {
			if !until.After(t) {
				delete(busyUntil, pid)
				free = append(free, pid)
			}
		}
		if len(free) == 0 {
			continue
		}
		pid := free[len(free)-1]
		free = free[:len(free)-1]
		ip := fmt.Sprintf("198.51.%d.%d", 100+rng.IntN(o.Clients)/250%100, 1+rng.IntN(o.Clients)%250)
		name := "unknown"
		if rng.IntN(2) == 0 {
			name = "mail.client" + ip[7:] + ".example"
		}
		service := "postfix/smtpd"
		sasl := ""
		if rng.IntN(5) == 0 {
			service = "postfix/submission/smtpd"
			sasl = fmt.Sprintf(", sasl_method=PLAIN, sasl_username=user%d@example.org", rng.IntN(o.Clients))
		}
		client := name + "[" + ip + "]"
		at := t
		emit(at, "%s[%d]: connect from %s", service, pid, client)
		msgs := 1 + rng.IntN(3)
		mails, datas, rcptOK, rcptAll := 0, 0, 0, 0
		for range msgs {
			at = at.Add(time.Duration(5+rng.IntN(200)) * time.Millisecond)
			sender := fmt.Sprintf("s%d@sender%d.example", rng.IntN(o.Senders), rng.IntN(500))
			mails++
			if rng.IntN(10) == 0 {
				// Every recipient unknown: no queue file.
				rcptAll++
				emit(at, "%s[%d]: NOQUEUE: reject: RCPT from %s: 550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown in relay recipient table; from=<%s> to=<nobody@example.net> proto=ESMTP helo=<%s>",
					service, pid, client, sender, name)
				continue
			}
			qid++
			datas++
			id := fmt.Sprintf("%X", qid)
			n := 1 + rng.IntN(3)
			rcptOK += n
			rcptAll += n
			emit(at, "%s[%d]: %s: client=%s%s", service, pid, id, client, sasl)
			at = at.Add(time.Duration(1+rng.IntN(50)) * time.Millisecond)
			emit(at, "postfix/cleanup[%d]: %s: message-id=<%d.%d@%s>", 2000+rng.IntN(4), id, qid, rng.Int64(), "example")
			at = at.Add(time.Duration(1+rng.IntN(20)) * time.Millisecond)
			emit(at, "postfix/qmgr[1999]: %s: from=<%s>, size=%d, nrcpt=%d (queue active)", id, sender, 500+rng.IntN(50000), n)
			d := at
			for i := range n {
				d = d.Add(time.Duration(10+rng.IntN(300)) * time.Millisecond)
				emit(d, "postfix/smtp[%d]: %s: to=<r%d@dest%d.example>, relay=mx.dest.example[203.0.113.5]:25, delay=0.4, delays=0.1/0/0.1/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued)",
					4000+rng.IntN(20), id, i, rng.IntN(1000))
			}
			emit(d.Add(time.Millisecond), "postfix/qmgr[1999]: %s: removed", id)
		}
		at = at.Add(time.Duration(1+rng.IntN(100)) * time.Millisecond)
		emit(at, "%s[%d]: disconnect from %s ehlo=1 mail=%d rcpt=%d/%d data=%d quit=1 commands=%d/%d",
			service, pid, client, mails, rcptOK, rcptAll, datas, 2+mails+rcptOK+datas, 2+mails+rcptAll+datas)
		busyUntil[pid] = at.Add(time.Millisecond)
		if err := flushUntil(t); err != nil {
			return written, err
		}
	}
	if err := flushUntil(t.Add(time.Hour)); err != nil {
		return written, err
	}
	return written, bw.Flush()
}
