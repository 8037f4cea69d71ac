package replay

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"sluice/smtp"
)

// WriteJSON writes the report as one JSON object.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// WriteText writes the report as tables for people.
func (rep *Report) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	p := func(format string, args ...any) { fmt.Fprintf(ew, format, args...) }
	p("sluice replay: %s (mode %s; replayed in dry-run on fresh counters)\n", rep.Config, rep.Mode)
	p("log: %s lines (%s skipped, %s ignored, %s late), %s to %s\n", num(rep.Lines), num(rep.Skipped), num(rep.Ignored),
		num(rep.Late), stamp(rep.From), stamp(rep.To))
	p("sessions %s (%s partial), messages %s (%s partial), recipients %s\n", num(rep.Sessions), num(rep.PartialSessions),
		num(rep.Messages), num(rep.Partial), num(rep.Recipients))
	p("the MTA itself refused %s commands%s; milters refused %s; held %s, discarded %s\n", num(rep.MTARefused),
		refusedAt(rep.MTARefusedAt), num(rep.MilterRefused), num(rep.Held), num(rep.Discarded))
	p("sender checks: %s\n\n", rep.Checks)

	tw := tabwriter.NewWriter(ew, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RULE\tCOUNTS\tWOULD\tOF\tSHARE\tKEYS")
	for _, r := range rep.Rules {
		keys := num(r.Keys)
		if r.KeysCapped {
			keys = "≥" + keys
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s %s\t%s\t%s\n", r.Rule, r.Count, r.Would.String(), num(r.Events), eventsAt(r.Stage), percent(r.Share), keys)
	}
	tw.Flush()
	for _, r := range rep.Rules {
		if len(r.Top) == 0 {
			continue
		}
		p("\n%s: top keys\n", r.Rule)
		tw := tabwriter.NewWriter(ew, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  KEY\tCROSSED\tFIRST\tLAST\tFOR")
		for _, k := range r.Top {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", smtp.Printable(k.Key, 120), num(k.Count), stamp(k.First), stamp(k.Last), span(k.Last.Sub(k.First)))
		}
		tw.Flush()
	}
	return ew.err
}

// String says what a rule would have done: "tempfail 12, tag 3", or "-".
func (w Would) String() string {
	var parts []string
	for _, a := range []struct {
		name string
		n    int64
	}{{"tempfail", w.Tempfail}, {"reject", w.Reject}, {"disconnect", w.Disconnect}, {"hold", w.Hold}, {"delay", w.Delay}, {"tag", w.Tag}} {
		if a.n > 0 {
			parts = append(parts, a.name+" "+num(a.n))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

func eventsAt(stage string) string {
	switch stage {
	case "connect":
		return "sessions"
	case "helo":
		return "greetings"
	case "mail":
		return "messages"
	case "rcpt":
		return "recipients"
	}
	return "message ends"
}

func refusedAt(m map[string]int64) string {
	var parts []string
	for _, st := range []string{"connect", "helo", "mail", "rcpt", "data"} {
		if n := m[st]; n > 0 {
			parts = append(parts, st+" "+num(n))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// span says how long a key kept crossing: "0s", "42m10s", "6d5h".
func span(d time.Duration) string {
	if d >= 24*time.Hour {
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	}
	return d.Round(time.Second).String()
}

func percent(f float64) string { return strconv.FormatFloat(f*100, 'f', 2, 64) + "%" }

func stamp(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") }

// num writes n with thousands separators.
func num(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// errWriter keeps the first write error.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}
