package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"sluice/admin"
	"sluice/conf"
)

// countersArgs is how many positional arguments each counters command
// takes.
var countersArgs = map[string]struct {
	min, max int
	want     string
}{
	"top": {0, 0, ""}, "show": {1, 1, ""}, "reset": {1, 1, ""}, "allow": {1, 1, ""}, "allows": {0, 0, ""},
	"limit":      {3, 3, "RULE KEY LIMIT, e.g. limit rcpts sasl_user:dave@example.com 100/1h"},
	"unlimit":    {2, 2, "RULE KEY, e.g. unlimit rcpts sasl_user:dave@example.com"},
	"limits":     {0, 1, ""},
	"restricted": {0, 0, ""},
	"release":    {1, 1, ""},
}

// outboundCmd runs the commands about runtime limits and restrictions. It
// returns an exit code (>= 0) for a usage error, else -1 and the error of
// the request.
func outboundCmd(ctx context.Context, cl *admin.Client, out *countersOut, cmd string, pos []string, rule, forD string, stderr io.Writer) (int, error) {
	switch cmd {
	case "limit":
		var d time.Duration
		if forD != "" {
			var err error
			if d, err = conf.ParseDuration(forD); err != nil || d <= 0 {
				fmt.Fprintf(stderr, "sluice counters limit: -for %q: want a duration such as 24h or 7d (leave it out for a limit until unlimit)\n", forD)
				return 2, nil
			}
		}
		ls, err := cl.Limit(ctx, pos[0], pos[1], pos[2], d)
		if err == nil {
			out.limitSet(ls)
		}
		return -1, err
	case "unlimit":
		ls, err := cl.Unlimit(ctx, pos[0], pos[1])
		if err == nil {
			out.limitRemoved(pos[0], pos[1], ls)
		}
		return -1, err
	case "limits":
		if len(pos) == 1 {
			rule = pos[0]
		}
		ls, ts, err := cl.Limits(ctx, rule)
		if err == nil {
			out.limits(ls, ts)
		}
		return -1, err
	case "restricted":
		rs, err := cl.Restricted(ctx, rule)
		if err == nil {
			out.restrictions(rs)
		}
		return -1, err
	case "release":
		rs, err := cl.Release(ctx, pos[0], rule)
		if err == nil {
			out.released(pos[0], rs)
		}
		return -1, err
	}
	return 2, nil
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func (o *countersOut) limitSet(ls []admin.RuntimeLimit) {
	if o.json {
		o.printJSON(ls)
		return
	}
	for _, l := range ls {
		until := "until unlimit"
		if !l.Until.IsZero() {
			until = "until " + stamp(l.Until)
		}
		fmt.Fprintf(o.w, "%s: %s limited to %s %s (set by %s); every host sharing the store applies it now\n", l.Rule, l.Key, l.Limit, until, l.By)
	}
}

func (o *countersOut) limitRemoved(rule, key string, ls []admin.RuntimeLimit) {
	if o.json {
		o.printJSON(ls)
		return
	}
	if len(ls) == 0 {
		fmt.Fprintf(o.w, "%s: %s had no runtime limit\n", rule, key)
		return
	}
	for _, l := range ls {
		fmt.Fprintf(o.w, "%s: runtime limit of %s removed (was %s); its table line or the rule's rate applies\n", l.Rule, l.Key, l.Limit)
	}
}

func (o *countersOut) limits(ls []admin.RuntimeLimit, ts []admin.OverrideTable) {
	if o.json {
		o.printJSON(struct {
			Limits []admin.RuntimeLimit  `json:"limits"`
			Tables []admin.OverrideTable `json:"tables"`
		}{ls, ts})
		return
	}
	if len(ls) == 0 {
		fmt.Fprintln(o.w, "no runtime limits in force")
	} else {
		tw := tabwriter.NewWriter(o.w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "RULE\tKEY\tLIMIT\tUNTIL\tSET-BY\tSET-AT")
		for _, l := range ls {
			until := "-"
			if !l.Until.IsZero() {
				until = stamp(l.Until)
			}
			at := "-"
			if !l.At.IsZero() {
				at = stamp(l.At)
			}
			rule := l.Rule
			if !l.InConfig {
				rule += " (not in config)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", rule, l.Key, l.Limit, until, orDash(l.By), at)
		}
		tw.Flush()
	}
	for _, t := range ts {
		fmt.Fprintf(o.w, "rule %s: table %s, %d entries\n", t.Rule, t.Path, t.Entries)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (o *countersOut) restrictions(rs []admin.Restriction) {
	if o.json {
		o.printJSON(rs)
		return
	}
	if len(rs) == 0 {
		fmt.Fprintln(o.w, "no key is restricted")
		return
	}
	tw := tabwriter.NewWriter(o.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RULE\tKEY\tSINCE\tUNTIL\tCOUNT\tHELD")
	for _, r := range rs {
		until := "until released"
		switch {
		case r.Grace:
			until = "released; grace until " + stamp(r.Until)
		case !r.Until.IsZero():
			until = stamp(r.Until)
		}
		count := fmt.Sprint(r.Count)
		if r.Limit != "" {
			count += " (limit " + r.Limit + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", r.Rule, r.Key, stamp(r.Since), until, count, len(r.Held))
	}
	tw.Flush()
}

func (o *countersOut) released(key string, rs []admin.Restriction) {
	if o.json {
		o.printJSON(rs)
		return
	}
	if len(rs) == 0 {
		fmt.Fprintf(o.w, "%s is not restricted\n", key)
		return
	}
	var held []string
	for _, r := range rs {
		fmt.Fprintf(o.w, "%s: released from %s (restricted since %s, count %d); not restricted again before %s\n",
			r.Key, r.Rule, stamp(r.Since), r.Count, stamp(r.GraceUntil))
		held = append(held, r.Held...)
	}
	if len(held) == 0 {
		fmt.Fprintln(o.w, "no message was held meanwhile")
		return
	}
	fmt.Fprintf(o.w, "%d messages were held meanwhile: %s\n", len(held), strings.Join(held, " "))
	fmt.Fprintln(o.w, "release them from the hold queue with")
	fmt.Fprintf(o.w, "  postsuper -H %s    (Postfix)\n", strings.Join(held, " -H "))
	fmt.Fprintf(o.w, "  for id in %s; do sendmail -Q -qI\"$id\"; done    (Sendmail)\n", strings.Join(held, " "))
}
