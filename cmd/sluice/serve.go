package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"sluice/limits"
	"sluice/limits/counter"
	"sluice/lists"
	"sluice/milter"
)

func serveCmd(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	path := fs.String("config", "", "config file (default: the built-in config)")
	if code := flags(fs, args, stderr); code >= 0 {
		return code
	}
	c, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	log, err := newLogger(&c.Log, os.Stdout)
	if err != nil {
		fmt.Fprintln(stderr, "sluice:", err)
		return 1
	}
	defer log.Sync()
	undo := zap.RedirectStdLog(log.Named("go-milter"))
	defer undo()
	d := &daemon{path: *path, log: log}
	if err := d.run(c); err != nil {
		log.Error("sluice stopped", zap.Error(err))
		return 1
	}
	return 0
}

func newLogger(c *LogConfig, w io.Writer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, err
	}
	ec := zap.NewProductionEncoderConfig()
	ec.TimeKey = "ts"
	ec.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	var enc zapcore.Encoder
	if c.Format == "console" {
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	} else {
		enc = zapcore.NewJSONEncoder(ec)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level)), nil
}

// daemon is a running sluice: the parts that outlive a reload.
type daemon struct {
	path     string
	log      *zap.Logger
	store    counter.Store
	fallback counter.Store
	srv      *milter.Server
	lists    *lists.Set
	cfg      *Config
}

func (d *daemon) run(c *Config) error {
	var err error
	d.store, d.fallback, err = limits.OpenStore(&c.Store, d.log)
	if err != nil {
		return err
	}
	defer d.closeStores()
	p, set, err := d.build(c, nil)
	if err != nil {
		return err
	}
	d.cfg, d.lists = c, set
	ln, err := milter.Listen(c.Listen)
	if err != nil {
		return err
	}
	d.srv = milter.NewServer(c.MilterConfig, p, d.log)
	d.log.Info("listening", zap.String("listen", c.Listen), zap.String("version", versionString()),
		zap.Stringer("mode", c.Mode), zap.Int("limits", len(c.Rules)), zap.String("store", c.Store.Backend),
		zap.String("config", configName(d.path)))
	if d.path == "" {
		d.log.Info("running on the built-in config; add to Postfix's main.cf: " + postfixLines(c.Listen))
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	served := make(chan error, 1)
	go func() { served <- d.srv.Serve(ln) }()
	for {
		select {
		case err := <-served:
			return fmt.Errorf("serve %s: %w", c.Listen, err)
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				d.reload()
				continue
			}
			return d.shutdown(sig)
		}
	}
}

// build compiles a policy from c. prev is the list set in force, whose
// lists stay when their files cannot be read at a reload.
func (d *daemon) build(c *Config, prev *lists.Set) (*milter.Policy, *lists.Set, error) {
	set, kept, err := c.Lists.Build(prev)
	if err != nil {
		return nil, nil, locate(configName(d.path), nil, err)
	}
	for _, e := range kept {
		d.log.Error("list not reloaded", zap.Error(e))
	}
	eng, err := limits.New(&c.LimitsConfig, set, limits.Options{Store: d.store, Fallback: d.fallback, Mode: c.Mode, Log: d.log})
	if err != nil {
		return nil, nil, err
	}
	return &milter.Policy{Limits: eng, Decide: c.PolicyConfig, TagHeader: c.TagHeader}, set, nil
}

// reload re-reads the config and list files; new sessions get the new
// policy, sessions in flight finish on theirs, counters stay. A bad config
// leaves the running one in force.
func (d *daemon) reload() {
	c, err := loadConfig(d.path)
	if err != nil {
		d.log.Error("reload failed; the running config stays in force", zap.Error(err))
		return
	}
	if c.Listen != d.cfg.Listen {
		d.log.Warn("listen changed; it takes a restart", zap.String("running", d.cfg.Listen), zap.String("file", c.Listen))
	}
	if c.Store != d.cfg.Store {
		d.log.Warn("[store] changed; it takes a restart")
	}
	p, set, err := d.build(c, d.lists)
	if err != nil {
		d.log.Error("reload failed; the running config stays in force", zap.Error(err))
		return
	}
	d.srv.SetPolicy(p)
	d.cfg, d.lists = c, set
	d.log.Info("reloaded", zap.String("config", configName(d.path)), zap.Stringer("mode", c.Mode), zap.Int("limits", len(c.Rules)))
}

func (d *daemon) shutdown(sig os.Signal) error {
	d.log.Info("stopping", zap.Stringer("signal", sig), zap.Int("sessions", d.srv.Sessions()))
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownTimeout.D())
	defer cancel()
	_ = d.srv.Shutdown(ctx)
	return nil
}

func (d *daemon) closeStores() {
	for _, s := range []counter.Store{d.store, d.fallback} {
		if s == nil {
			continue
		}
		if err := s.Close(); err != nil {
			d.log.Error("closing counter store", zap.Error(err))
		}
	}
}

func configName(path string) string {
	if path == "" {
		return DefaultConfigName
	}
	return path
}

// postfixLines are the main.cf settings that plug sluice into Postfix.
func postfixLines(listen string) string {
	spec := listen
	if network, addr, err := milter.ParseSpec(listen); err == nil && network == "tcp" {
		if h, p, err := net.SplitHostPort(addr); err == nil {
			spec = "inet:" + net.JoinHostPort(h, p)
		}
	}
	return "smtpd_milters = " + spec + " ; milter_default_action = tempfail ; milter_protocol = 6"
}
