// Command sluice is a rate-limiting milter for Postfix and Sendmail.
//
//	sluice [serve] [-config FILE]   run the milter (the default)
//	sluice check -config FILE       validate a config and exit
//	sluice counters top|show|reset|allow|allows ...
//	                                see and change a running sluice's counters
//	sluice explain -config FILE -client IP ...
//	                                how a policy treats one session, on fresh counters
//	sluice version                  print the version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"sluice/conf"
	"sluice/config"
	"sluice/limits/memstore"
)

// version is set at build time with -ldflags "-X main.version=..."; without
// it, the module version or VCS revision stands in.
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serveCmd(args, stderr)
	case "check":
		return checkCmd(args, stdout, stderr)
	case "counters":
		return countersCmd(args, stdout, stderr)
	case "explain":
		return explainCmd(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "sluice", versionString())
		return 0
	case "help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "sluice: unknown command %q\n", cmd)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  sluice [serve] [-config FILE]   run the milter (built-in config without -config)
  sluice check [-config FILE]     validate a config: errors with file:line, exit 1
  sluice counters COMMAND ...     see, reset and exempt counters of a running sluice
                                  (top, show KEY, reset KEY, allow KEY -for 2h, allows)
  sluice explain -config FILE -client IP -helo NAME -sender ADDR -rcpt ADDR [-listener NAME] [-auth USER] [-message FILE]
                                  show which rules apply at each stage, and what
                                  fresh counters would answer (never the live ones)
  sluice version                  print the version
`)
}

// flags parses a subcommand's flags; it returns -1 to go on, or an exit code.
func flags(fs *flag.FlagSet, args []string, stderr io.Writer) int {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sluice %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2
	}
	return -1
}

func checkCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	path := fs.String("config", "", "config file to check (default: the built-in config)")
	if code := flags(fs, args, stderr); code >= 0 {
		return code
	}
	c, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	// The list files and auth's access tables too, and the engine they
	// make: serve would not start without them. The counters are a
	// throwaway store: check opens no store of the file's.
	store, err := memstore.New(memstore.Config{MaxKeys: 16}, nil)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer store.Close()
	if _, err := c.Build(config.Runtime{Store: store}); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	// And what is at the snapshot path, which serve would refuse.
	if err := memstore.CheckSnapshotPath(c.Store.Snapshot); err != nil {
		fmt.Fprintln(stderr, c.Locate(conf.In(err, "store", "snapshot")))
		return 1
	}
	fmt.Fprintf(stdout, "%s: OK (%d limits, listen %s, mode %s)\n", configName(*path), len(c.Rules), c.Listen, c.Mode)
	return 0
}

func versionString() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "+dirty"
	}
	return "devel-" + rev
}
