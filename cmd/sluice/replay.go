package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"sluice/maillog"
	"sluice/replay"
)

// replayCmd answers "what would this policy have done to that mail?": it
// reads Postfix or Sendmail logs, rebuilds their sessions and drives the
// same engine as the milter over them, in dry-run, on fresh counters
// whose clock is the log's time, and reports per rule what it would have
// refused, held, delayed or tagged.
func replayCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: sluice replay [-config FILE] [flags] LOG... (- for stdin; plain or gzip)")
		fs.PrintDefaults()
	}
	path := fs.String("config", "", "config file (default: the built-in config)")
	format := fs.String("format", "auto", "log line format: auto, traditional (Mmm dd hh:mm:ss), rfc3339 or json (journalctl -o json)")
	year := fs.Int("year", 0, "year of the first year-less timestamp of each log (default: from the file's modification time)")
	since := fs.String("since", "", "replay from this time on (RFC 3339, or 2006-01-02[ 15:04] local time)")
	until := fs.String("until", "", "replay up to this time (same forms)")
	timeout := fs.Duration("session_timeout", 10*time.Minute, "close a session no line touched for this long, in log time")
	asJSON := fs.Bool("json", false, "print the report as one JSON object")
	html := fs.String("html", "", "also write the report as a self-contained HTML page to this file")
	text := fs.String("text", "", "also write the report's tables to this file (with -json, the same run's)")
	maxKeys := fs.Int("max_keys", 0, "counters the replay keeps (default: the config's [store] max_keys)")
	store := fs.String("store", "memory", "where the replay counts: memory (a fresh store of its own; the only choice)")
	listeners := map[string]string{}
	fs.Func("listener", "SERVICE=LISTENER: the milter listener name of a Postfix service or Sendmail daemon (repeat), e.g. smtpd=mx.example.org", func(s string) error {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" || v == "" {
			return fmt.Errorf("want SERVICE=LISTENER, not %q", s)
		}
		listeners[k] = v
		return nil
	})
	progress := fs.String("progress", "auto", "progress bar on stderr: auto (when stderr is a terminal), on or off")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fail := func(format string, args ...any) int {
		fmt.Fprintf(stderr, "sluice replay: "+format+"\n", args...)
		return 2
	}
	if fs.NArg() == 0 {
		return fail("no log given (name files, or - for stdin)")
	}
	f, err := maillog.ParseFormat(*format)
	if err != nil {
		return fail("-format: %v", err)
	}
	if *store != "memory" {
		return fail("-store %q: a replay counts on the log's clock, which only a memory store of its own can follow (Redis counts on its own TIME)", *store)
	}
	if *timeout <= 0 {
		return fail("-session_timeout must be positive")
	}
	var from, to int64
	if from, err = parseWhen(*since); err != nil {
		return fail("-since: %v", err)
	}
	if to, err = parseWhen(*until); err != nil {
		return fail("-until: %v", err)
	}
	if from != 0 && to != 0 && to <= from {
		return fail("-until must be after -since")
	}
	c, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	sources, total, closeAll, err := openLogs(fs.Args())
	if err != nil {
		fmt.Fprintln(stderr, "sluice replay:", err)
		return 1
	}
	defer closeAll()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	r, err := replay.New(c, replay.Options{MaxKeys: *maxKeys})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer r.Close()
	rb := maillog.NewRebuilder(*timeout, func(st *maillog.Step) { r.Step(ctx, st) })
	rb.Listeners = listeners
	shown := 0
	rd := &maillog.Reader{Format: f, Year: *year, Since: from, Until: to, Stats: &rb.Stats,
		Skip: func(src string, line int64, text []byte, err error) {
			if shown++; shown <= maxShownSkips {
				fmt.Fprintf(stderr, "%s:%d: skipped (%v): %s\n", src, line, err, printableLine(text))
			}
		}}
	var bar *progressBar
	if *progress == "on" || *progress == "auto" && isTerminal(stderr) {
		bar = newProgressBar(stderr, total, &rb.Stats)
		for i := range sources {
			sources[i].R = &countingReader{r: sources[i].R, bar: bar}
		}
	}
	err = rd.Read(ctx, sources, rb.Add)
	bar.finish()
	if err != nil {
		fmt.Fprintln(stderr, "sluice replay:", err)
		return 1
	}
	rb.Flush()
	if shown > maxShownSkips {
		fmt.Fprintf(stderr, "... and %d more lines skipped\n", shown-maxShownSkips)
	}
	rep := r.Report(&rb.Stats, from, to)
	if *html != "" {
		if err := writeFileWith(*html, rep.WriteHTML); err != nil {
			fmt.Fprintln(stderr, "sluice replay:", err)
			return 1
		}
	}
	if *text != "" {
		if err := writeFileWith(*text, rep.WriteText); err != nil {
			fmt.Fprintln(stderr, "sluice replay:", err)
			return 1
		}
	}
	if *asJSON {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "sluice replay:", err)
		return 1
	}
	return 0
}

// maxShownSkips is how many skipped lines are shown, with file:line.
const maxShownSkips = 5

func printableLine(b []byte) string {
	s := string(b)
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

// parseWhen reads a -since or -until time; "" is none.
func parseWhen(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UnixNano(), nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t.UnixNano(), nil
		}
	}
	return 0, fmt.Errorf("%q is not a time (want RFC 3339, or 2006-01-02[ 15:04[:05]])", s)
}

// openLogs opens the logs named; "-" is stdin. total is their size in
// bytes, or -1 when one of them has none known (stdin).
func openLogs(names []string) ([]maillog.Source, int64, func(), error) {
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	var sources []maillog.Source
	var total int64
	stdin := false
	for _, name := range names {
		if name == "-" {
			if stdin {
				closeAll()
				return nil, 0, nil, errors.New("stdin (-) given twice")
			}
			stdin = true
			sources = append(sources, maillog.Source{Name: "(stdin)", R: os.Stdin})
			total = -1
			continue
		}
		f, err := os.Open(name)
		if err != nil {
			closeAll()
			return nil, 0, nil, err
		}
		files = append(files, f)
		fi, err := f.Stat()
		if err != nil {
			closeAll()
			return nil, 0, nil, err
		}
		if fi.IsDir() {
			closeAll()
			return nil, 0, nil, fmt.Errorf("%s is a directory", name)
		}
		if total >= 0 {
			total += fi.Size()
		}
		sources = append(sources, maillog.Source{Name: name, R: f, ModTime: fi.ModTime()})
	}
	return sources, total, closeAll, nil
}

func writeFileWith(name string, write func(io.Writer) error) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	return f.Close()
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressBar shows bytes read of the total, lines per second and the
// time left, on a terminal.
type progressBar struct {
	bar   *progressbar.ProgressBar
	stats *maillog.Stats
	start time.Time
	next  time.Time
}

func newProgressBar(w io.Writer, total int64, st *maillog.Stats) *progressBar {
	b := progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("replay"),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionSetWidth(30),
		progressbar.OptionClearOnFinish(),
	)
	return &progressBar{bar: b, stats: st, start: time.Now()}
}

func (p *progressBar) add(n int) {
	p.bar.Add(n)
	if now := time.Now(); now.After(p.next) {
		p.next = now.Add(500 * time.Millisecond)
		rate := float64(p.stats.Lines) / max(now.Sub(p.start).Seconds(), 1e-3)
		p.bar.Describe(fmt.Sprintf("replay: %d lines, %.0f lines/s", p.stats.Lines, rate))
	}
}

func (p *progressBar) finish() {
	if p != nil {
		p.bar.Finish()
	}
}

// countingReader tells the progress bar of each read.
type countingReader struct {
	r   io.Reader
	bar *progressBar
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.bar.add(n)
	return n, err
}
