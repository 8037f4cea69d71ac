package maillog

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// Source is one log to read: a file, gzip-compressed or not, or stdin.
type Source struct {
	Name string
	R    io.Reader
	// ModTime is when the file was last written: year-less timestamps
	// are taken to be of the year before it. Zero: now.
	ModTime time.Time
}

// Reader reads logs into events.
type Reader struct {
	Format Format
	// Year is the year of the first year-less timestamp of each source;
	// 0: from the source's ModTime.
	Year int
	// Location is the time zone of year-less timestamps; nil: local.
	Location *time.Location
	// Since and Until (Unix nanoseconds, 0: open) keep the events from
	// Since up to, not including, Until.
	Since, Until int64
	// Skip is told of each line that could not be read.
	Skip func(source string, line int64, text []byte, err error)
	// Stats counts lines (Lines, Skipped); may be nil.
	Stats *Stats
}

// maxLine bounds a line: longer ones are skipped.
const maxLine = 64 << 10

// input is one source being read.
type input struct {
	name   string
	br     *bufio.Reader
	closer io.Closer
	p      *parser
	line   int64
	ev     Event
	ok     bool  // ev holds the next event
	order  int   // of the source among those given
	broken error // the gzip stream is damaged: nothing more is read
}

// Read reads every source and hands each event to add, in time order
// across sources: rotated files given in any order, or the logs of
// several hosts, merge as they happened. add must not keep the event.
func (r *Reader) Read(ctx context.Context, sources []Source, add func(*Event)) error {
	var st Stats
	if r.Stats == nil {
		r.Stats = &st
	}
	var ins mergeHeap
	defer func() {
		for _, in := range ins {
			if in.closer != nil {
				in.closer.Close()
			}
		}
	}()
	for i, s := range sources {
		in, err := r.open(s)
		if err != nil {
			return err
		}
		in.order = i
		if err := r.next(in); err != nil {
			return err
		}
		if in.ok {
			ins = append(ins, in)
		} else if in.closer != nil {
			in.closer.Close()
		}
	}
	heap.Init(&ins)
	for n := 0; len(ins) > 0; n++ {
		if n&0xfff == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		in := ins[0]
		if e := &in.ev; (r.Since == 0 || e.Time >= r.Since) && (r.Until == 0 || e.Time < r.Until) {
			add(e)
		}
		if err := r.next(in); err != nil {
			return err
		}
		if in.ok {
			heap.Fix(&ins, 0)
		} else {
			heap.Pop(&ins)
			if in.closer != nil {
				in.closer.Close()
			}
		}
	}
	return nil
}

func (r *Reader) open(s Source) (*input, error) {
	br := bufio.NewReaderSize(s.R, maxLine)
	in := &input{name: s.Name, br: br}
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			// A damaged or cut file is a line that cannot be read, not
			// the end of the replay: the other files go on.
			in.broken = err
			return in, nil
		}
		in.br, in.closer = bufio.NewReaderSize(zr, maxLine), zr
	}
	mod := s.ModTime
	if mod.IsZero() {
		mod = time.Now()
	}
	in.p = newParser(r.Format, r.Location, yearBefore(r.Year, mod.In(locOr(r.Location))))
	return in, nil
}

func locOr(l *time.Location) *time.Location {
	if l == nil {
		return time.Local
	}
	return l
}

// yearBefore gives the year of a year-less date: year when given, else
// that of mod, or the year before when the date is later in the year
// than mod (a file is written after its lines).
func yearBefore(year int, mod time.Time) func(time.Month, int) int {
	return func(m time.Month, d int) int {
		if year != 0 {
			return year
		}
		if m > mod.Month() || m == mod.Month() && d > mod.Day() {
			return mod.Year() - 1
		}
		return mod.Year()
	}
}

// next reads the next event of in; in.ok is false at the end.
func (r *Reader) next(in *input) error {
	in.ok = false
	if in.broken != nil {
		in.line++
		r.Stats.Lines++
		r.skip(in, nil, fmt.Errorf("gzip: %w (the rest of the file is left out)", in.broken))
		return nil
	}
	for {
		line, err := in.br.ReadSlice('\n')
		if err != nil && err != io.EOF && in.closer != nil && !errors.Is(err, bufio.ErrBufferFull) {
			// The compressed stream is damaged or cut (a file rotated
			// while it was written): what came before it counts.
			in.broken = err
			if len(line) == 0 {
				return r.next(in)
			}
			err = io.EOF
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			in.line++
			r.Stats.Lines++
			r.skip(in, line, errors.New("line longer than 64 KiB"))
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = in.br.ReadSlice('\n')
			}
			if err != nil && err != io.EOF {
				return fmt.Errorf("%s: %w", in.name, err)
			}
			continue
		}
		if len(line) > 0 {
			in.line++
			r.Stats.Lines++
			text := bytes.TrimRight(line, "\r\n")
			if len(text) == 0 {
				r.Stats.Ignored++
			} else if perr := in.p.parse(text, &in.ev); perr != nil {
				r.skip(in, text, perr)
			} else {
				in.ok = true
				return nil
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", in.name, err)
		}
	}
}

func (r *Reader) skip(in *input, text []byte, err error) {
	r.Stats.Skipped++
	if r.Skip != nil {
		r.Skip(in.name, in.line, text, err)
	}
}

// mergeHeap orders inputs by the time of their next event; ties go to
// the source given first.
type mergeHeap []*input

func (h mergeHeap) Len() int { return len(h) }
func (h mergeHeap) Less(i, j int) bool {
	if h[i].ev.Time != h[j].ev.Time {
		return h[i].ev.Time < h[j].ev.Time
	}
	return h[i].order < h[j].order
}
func (h mergeHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *mergeHeap) Push(x any)   { *h = append(*h, x.(*input)) }
func (h *mergeHeap) Pop() any {
	old := *h
	in := old[len(old)-1]
	*h = old[:len(old)-1]
	return in
}
