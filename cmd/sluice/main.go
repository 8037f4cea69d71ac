// Command sluice is a rate-limiting milter for Postfix and Sendmail.
//
//	sluice [serve] [-config FILE]   run the milter (the default)
//	sluice check -config FILE       validate a config and exit
//	sluice counters top|show|reset|allow|allows|limit|unlimit|limits|restricted|release ...
//	                                see and change a running sluice's counters, limits and restrictions
//	sluice explain -config FILE -client IP ...
//	                                how a policy treats one session, on fresh counters
//	sluice replay -config FILE LOG...
//	                                what a policy would have done to the mail of a log
//	sluice version                  print the version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"

	"sluice/conf"
	"sluice/config"
	"sluice/limits/memstore"
)

// version and commit are set by packaging/build-deb with -ldflags "-X
// main.version=... -X main.commit=...", from packaging/changelog and git.
// A plain go build leaves them empty and the build info stands in.
var version, commit string

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
	case "replay":
		return replayCmd(args, stdout, stderr)
	case "version":
		v, c := build()
		fmt.Fprintf(stdout, "sluice %s (commit %s, %s %s/%s)\n", v, c, runtime.Version(), runtime.GOOS, runtime.GOARCH)
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
                                  (top, show KEY, reset KEY, allow KEY -for 2h, allows),
                                  give keys limits of their own (limit RULE KEY RATE, unlimit, limits),
                                  see and release restricted keys (restricted, release KEY)
  sluice explain -config FILE -client IP -helo NAME -sender ADDR -rcpt ADDR [-listener NAME] [-auth USER] [-message FILE]
                                  show which rules apply at each stage, and what
                                  fresh counters would answer (never the live ones)
  sluice replay [-config FILE] [-json] [-html FILE] LOG...
                                  what the policy would have done to the mail of a
                                  Postfix or Sendmail log (plain, gzip, or - for stdin)
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
		fmt.Fprintln(stderr, conf.ClipMessage(err.Error()))
		return 1
	}
	// And what is at the snapshot path, which serve would refuse.
	if err := memstore.CheckSnapshotPath(c.Store.Snapshot); err != nil {
		fmt.Fprintln(stderr, c.Locate(conf.In(err, "store", "snapshot")))
		return 1
	}
	for _, w := range c.Warnings() {
		fmt.Fprintln(stderr, "warning:", w)
	}
	fmt.Fprintf(stdout, "%s: OK (%d limits, listen %s, mode %s)\n", configName(*path), len(c.Rules), c.Listen, c.Mode)
	return 0
}

// versionString is the version the binary was built as.
func versionString() string {
	v, _ := build()
	return v
}

// build returns the version and commit set at build time; without them,
// the module version ("devel" for a build in a checkout) and the VCS
// revision the go command recorded, "+dirty" when the tree had changes.
func build() (ver, rev string) {
	ver, rev = version, commit
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return or(ver, "devel"), or(rev, "unknown")
	}
	if ver == "" {
		ver = "devel"
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			ver = v
		}
	}
	if rev == "" {
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev == "" {
			rev = "unknown"
		} else if dirty {
			rev += "+dirty"
		}
	}
	return ver, rev
}

func or(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}
