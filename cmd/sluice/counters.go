package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"sluice/admin"
	"sluice/conf"
)

const countersUsage = `usage: sluice counters COMMAND [KEY] [flags]

Talks to a running sluice through its admin socket ([admin] socket).
KEY is a dimension key as sluice logs it: sender:alice@example.org,
client_ip:192.0.2.7, sasl_user:bob, sasl_user:bob,rcpt_domain:gmail.com.

  top    [-rule R] [-n 20]   the counters closest to or over their limit
  show   KEY [-rule R]       every counter of KEY, with limit and retry-after
  reset  KEY [-rule R]       forget KEY's counters (all rules, or rule R)
  allow  KEY -for 2h         exempt KEY from every rule for a while (-for 0 lifts it)
  allows                     the exemptions in force
  limit  RULE KEY LIMIT [-for 24h]
                             give KEY a limit of its own under RULE (a rule with
                             overrides): "100/1h", "100/1h,1000/1d", "unlimited"
                             or "0"; every host sharing the store applies it at once
  unlimit RULE KEY           remove KEY's runtime limit (its table line or the
                             rule's rate applies again)
  limits [RULE]              the runtime limits in force, and the tables loaded
  restricted [-rule R]       the restricted keys: since, until, the count that
                             crossed, the mail held meanwhile
  release KEY [-rule R]      lift KEY's restriction (it is not restricted again
                             before the end of the window) and print the queue ids
                             of the mail held meanwhile, with the command to release them

flags for every command:
  -socket PATH   the admin socket (default: [admin] socket of -config, else ` + admin.DefaultSocket + `)
  -config FILE   read the socket path from this config
  -json          print the answer as JSON
`

func countersCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "help" {
		out := stderr
		if len(args) > 0 {
			out = stdout
		}
		fmt.Fprint(out, countersUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	// The common flags may come before the command too.
	var socket, config string
	var asJSON bool
	common := func(fs *flag.FlagSet) {
		fs.SetOutput(stderr)
		fs.Usage = func() { fmt.Fprint(stderr, countersUsage) }
		fs.StringVar(&socket, "socket", socket, "admin socket path")
		fs.StringVar(&config, "config", config, "config file to read [admin] socket from")
		fs.BoolVar(&asJSON, "json", asJSON, "print JSON")
	}
	if strings.HasPrefix(args[0], "-") {
		pre := flag.NewFlagSet("counters", flag.ContinueOnError)
		common(pre)
		if err := pre.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if pre.NArg() == 0 {
			fmt.Fprint(stderr, countersUsage)
			return 2
		}
		args = pre.Args()
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("counters "+cmd, flag.ContinueOnError)
	common(fs)
	rule := fs.String("rule", "", "only this rule")
	n := fs.Int("n", 20, "how many counters (top)")
	forD := fs.String("for", "", "how long the exemption lasts (allow)")
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	arity, known := countersArgs[cmd]
	if !known {
		fmt.Fprintf(stderr, "sluice counters: unknown command %q\n\n%s", cmd, countersUsage)
		return 2
	}
	if len(pos) < arity.min || len(pos) > arity.max {
		switch {
		case arity.min == 1 && arity.max == 1:
			fmt.Fprintf(stderr, "sluice counters %s: want one KEY, e.g. sender:alice@example.org\n", cmd)
		case len(pos) > arity.max:
			fmt.Fprintf(stderr, "sluice counters %s: unexpected argument %q\n", cmd, pos[arity.max])
		default:
			fmt.Fprintf(stderr, "sluice counters %s: want %s\n", cmd, arity.want)
		}
		return 2
	}
	path, err := adminSocket(socket, config)
	if err != nil {
		fmt.Fprintln(stderr, "sluice counters:", err)
		return 1
	}
	cl := admin.NewClient(path)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := &countersOut{w: stdout, json: asJSON}
	switch cmd {
	case "top":
		if *n < 1 {
			fmt.Fprintln(stderr, "sluice counters top: -n must be 1 or more")
			return 2
		}
		var cs []admin.Counter
		if cs, err = cl.Top(ctx, *rule, *n); err == nil {
			out.counters(cs, "no counter is near its limit")
		}
	case "show":
		var cs []admin.Counter
		if cs, err = cl.Show(ctx, pos[0], *rule); err == nil {
			out.counters(cs, "")
			if !out.json {
				ex, _ := cl.Allows(ctx)
				out.exemptFor(cs, ex)
			}
		}
	case "reset":
		var cs []admin.Counter
		if cs, err = cl.Reset(ctx, pos[0], *rule); err == nil {
			if !out.json {
				fmt.Fprintf(stdout, "reset %d counters; they were:\n", len(cs))
			}
			out.counters(cs, "")
		}
	case "allow":
		if *forD == "" {
			fmt.Fprintln(stderr, "sluice counters allow: -for is required (e.g. -for 2h; -for 0 lifts the exemption)")
			return 2
		}
		d, perr := conf.ParseDuration(*forD)
		if perr != nil {
			fmt.Fprintf(stderr, "sluice counters allow: -for: %v; want a duration such as 2h or 1d\n", perr)
			return 2
		}
		var ex []admin.Exemption
		if ex, err = cl.Allow(ctx, pos[0], d); err == nil {
			out.allowed(ex, d)
		}
	case "allows":
		var ex []admin.Exemption
		if ex, err = cl.Allows(ctx); err == nil {
			out.exemptions(ex)
		}
	default:
		code, err := outboundCmd(ctx, cl, out, cmd, pos, *rule, *forD, stderr)
		if code >= 0 {
			return code
		}
		if err != nil {
			fmt.Fprintf(stderr, "sluice counters %s: %v\n", cmd, err)
			return 1
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "sluice counters %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

// adminSocket picks the socket: -socket, else the config's [admin]
// socket, else the default.
func adminSocket(socket, config string) (string, error) {
	if socket != "" {
		return socket, nil
	}
	if config == "" {
		return admin.DefaultSocket, nil
	}
	c, err := loadConfig(config)
	if err != nil {
		return "", err
	}
	if c.Admin.Socket == "" {
		return "", fmt.Errorf("%s has no [admin] socket: the admin endpoint is off", config)
	}
	return c.Admin.Socket, nil
}

type countersOut struct {
	w    io.Writer
	json bool
}

func (o *countersOut) counters(cs []admin.Counter, empty string) {
	if o.json {
		o.printJSON(cs)
		return
	}
	if len(cs) == 0 {
		if empty != "" {
			fmt.Fprintln(o.w, empty)
		}
		return
	}
	from := false
	for _, c := range cs {
		from = from || c.From != "" && c.From != "rule"
	}
	tw := tabwriter.NewWriter(o.w, 0, 0, 2, ' ', 0)
	if from {
		fmt.Fprintln(tw, "RULE\tLIMIT\tKEY\tCOUNT\tRETRY-AFTER\tLIMIT-FROM")
	} else {
		fmt.Fprintln(tw, "RULE\tLIMIT\tKEY\tCOUNT\tRETRY-AFTER")
	}
	for _, c := range cs {
		limit := c.Limit
		if !c.InConfig {
			limit = "(not in config)"
		}
		count := strconv.FormatInt(c.Count, 10) + "/" + strconv.FormatInt(c.Max, 10)
		if c.Concurrent {
			count += " open"
		}
		if c.Distinct {
			count += " different"
		}
		retry := "-"
		if c.RetryAfter > 0 {
			retry = c.Retry().Round(time.Second).String()
		}
		if from {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Rule, limit, c.Key, count, retry, c.From)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Rule, limit, c.Key, count, retry)
	}
	tw.Flush()
}

// exemptFor adds a line for each of cs's keys that is exempt.
func (o *countersOut) exemptFor(cs []admin.Counter, ex []admin.Exemption) {
	for _, e := range ex {
		for _, c := range cs {
			if c.Key == e.Key {
				fmt.Fprintf(o.w, "%s is exempt from every rule until %s\n", e.Key, e.Until.Format(time.RFC3339))
				break
			}
		}
	}
}

func (o *countersOut) allowed(ex []admin.Exemption, d time.Duration) {
	if o.json {
		o.printJSON(ex)
		return
	}
	for _, e := range ex {
		if d == 0 {
			fmt.Fprintf(o.w, "%s: exemption lifted\n", e.Key)
			continue
		}
		fmt.Fprintf(o.w, "%s is exempt from every rule until %s (%s)\n", e.Key, e.Until.Format(time.RFC3339), d)
	}
}

func (o *countersOut) exemptions(ex []admin.Exemption) {
	if o.json {
		o.printJSON(ex)
		return
	}
	if len(ex) == 0 {
		fmt.Fprintln(o.w, "no exemptions in force")
		return
	}
	tw := tabwriter.NewWriter(o.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tUNTIL\tLEFT")
	for _, e := range ex {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", e.Key, e.Until.Format(time.RFC3339), time.Until(e.Until).Round(time.Second))
	}
	tw.Flush()
}

func (o *countersOut) printJSON(v any) {
	enc := json.NewEncoder(o.w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
