package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	sd "github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"sluice/admin"
	"sluice/alert"
	"sluice/conf"
	"sluice/config"
	"sluice/engine"
	"sluice/guard"
	"sluice/limits"
	"sluice/limits/counter"
	"sluice/lists"
	"sluice/metrics"
	"sluice/milter"
	"sluice/socket"
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
	for _, w := range c.Warnings() {
		log.Warn("config warning", zap.String("warning", w.Error()))
	}
	d := &daemon{path: *path, log: log}
	if err := d.run(c); err != nil {
		log.Error("sluice stopped", zap.Error(err))
		d.notify("STATUS=stopped: " + oneLine(err.Error()))
		return 1
	}
	return 0
}

func newLogger(c *config.LogConfig, w io.Writer) (*zap.Logger, error) {
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
	raw      counter.Store // the store itself, for readiness and snapshot status
	store    counter.Store // what the engines use: raw, counted when metrics are on
	fallback counter.Store
	srv      *milter.Server
	eng      atomic.Pointer[engine.Engine] // the engine in force
	lists    *lists.Set
	cfg      *config.Config
	met      *metrics.Metrics  // nil when [metrics] is off
	alerts   *alert.Dispatcher // outlives reloads; [[alert]] gives it targets

	activated bool // the milter sockets came from systemd
	serving   atomic.Bool
	stopping  atomic.Bool
}

func (d *daemon) run(c *config.Config) error {
	var err error
	d.cfg = c
	d.raw, d.fallback, err = config.OpenStores(&c.Store, d.log)
	if err != nil {
		return err
	}
	d.store = d.raw
	if c.Metrics.Enabled() {
		d.met = metrics.New(versionString())
		d.store = d.met.Store(c.Store.Backend, d.raw)
		d.met.WatchStore(d.raw)
		if d.fallback != nil {
			d.fallback = d.met.Store("local", d.fallback)
		}
	}
	stores := []counter.Store{d.raw, d.fallback}
	defer func() {
		// On an error at start; a normal stop has closed them already.
		if stores != nil {
			d.closeStores(stores)
		}
	}()
	d.alerts = alert.New(alert.Options{Store: d.store, Log: d.log.Named("alert")})
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		d.alerts.Close(ctx)
	}()
	b, err := d.build(c, nil)
	if err != nil {
		return err
	}
	if err := d.alerts.Configure(c.Alerts); err != nil {
		return err
	}
	d.lists = b.Lists
	d.eng.Store(b.Engine)
	if d.met != nil {
		d.met.Registry().MustRegister(d.alerts.Collector())
		d.met.WatchRestrictions(func(ctx context.Context) (map[string]int, error) {
			return d.eng.Load().Limits().RestrictedCounts(ctx)
		})
	}
	lns, err := d.listeners(c.Listen)
	if err != nil {
		return err
	}
	mc := c.MilterConfig
	var fdLimit int
	var tooMany bool
	if mc.MaxConnections, fdLimit, tooMany, err = connectionBudget(c); err != nil {
		closeAll(lns)
		return err
	}
	if tooMany {
		d.log.Warn("max_connections leaves fewer file descriptors than sluice keeps for the rest; raise LimitNOFILE or lower it",
			zap.Int("max_connections", mc.MaxConnections), zap.Int("fd_limit", fdLimit), zap.Int("reserve", fdReserve(c)))
	}
	d.srv = milter.NewServer(mc, b.Engine, d.log)
	if d.met != nil {
		d.srv.Observe(d.met)
		d.met.SetMaxConnections(mc.MaxConnections)
		d.met.ConfigLoaded(len(c.Rules), false)
	}

	// The side doors open before the milter socket, so that a port in use
	// stops sluice before any mail reaches it.
	var metricsSrv *metrics.Server
	if c.Metrics.Enabled() {
		if metricsSrv, err = d.met.Listen(c.Metrics.Listen, d.ready, d.log.Named("metrics")); err != nil {
			closeAll(lns)
			return err
		}
		defer closeQuietly(metricsSrv.Close)
	}
	var adminSrv *admin.Server
	if c.Admin.Socket != "" {
		if adminSrv, err = d.serveAdmin(c.Admin.Socket); err != nil {
			closeAll(lns)
			return err
		}
		defer closeQuietly(adminSrv.Close)
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	served := make(chan error, len(lns))
	for _, ln := range lns {
		guard.Go(d.log, "milter serve", func() {
			var err error
			// A panic in the accept loop is an error of Serve: sluice
			// stops with it, logged, rather than crash or stop taking
			// connections unnoticed.
			defer func() { served <- err }()
			defer guard.RecoverErr(d.log, "milter serve", &err)
			err = d.srv.Serve(ln)
		})
	}
	d.serving.Store(true)
	fields := []zap.Field{zap.String("listen", listenNames(lns)), zap.String("version", versionString()),
		zap.Stringer("mode", c.Mode), zap.Int("limits", len(c.Rules)), zap.String("store", c.Store.Backend),
		zap.String("config", configName(d.path)), zap.Bool("systemd_socket", d.activated),
		zap.Int("max_connections", mc.MaxConnections), zap.Int("fd_limit", fdLimit)}
	if metricsSrv != nil {
		fields = append(fields, zap.Stringer("metrics", metricsSrv.Addr()))
	}
	if adminSrv != nil {
		fields = append(fields, zap.String("admin", c.Admin.Socket))
	}
	d.log.Info("listening", fields...)
	if d.path == "" {
		d.log.Info("running on the built-in config; add to Postfix's main.cf: " + postfixLines(c.Listen))
	}
	d.notify(sd.SdNotifyReady + "\n" + d.status())

	for {
		select {
		case err := <-served:
			return fmt.Errorf("serve %s: %w", listenNames(lns), err)
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				d.reload()
				continue
			}
			err := d.shutdown(sig, sigs)
			if metricsSrv != nil {
				closeQuietly(metricsSrv.Close)
			}
			if adminSrv != nil {
				closeQuietly(adminSrv.Close)
			}
			serr := d.closeStores(stores)
			stores = nil
			if err == nil && serr != nil {
				return serr
			}
			if err == nil {
				d.log.Info("stopped")
			}
			return err
		}
	}
}

// listeners returns the sockets systemd passed (socket activation), or
// opens the configured one.
func (d *daemon) listeners(spec string) ([]net.Listener, error) {
	passed, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("sockets from systemd: %w", err)
	}
	var lns []net.Listener
	for _, ln := range passed {
		if ln != nil {
			lns = append(lns, ln)
		}
	}
	if len(passed) > 0 {
		if len(lns) == 0 {
			return nil, errors.New("systemd passed sockets, but none is a stream socket sluice can accept on")
		}
		d.activated = true
		d.log.Info("using the sockets systemd passed; listen in the config is not used",
			zap.String("sockets", listenNames(lns)), zap.String("config_listen", spec))
		return lns, nil
	}
	ln, err := socket.Listen(spec)
	if err != nil {
		return nil, err
	}
	return []net.Listener{ln}, nil
}

// serveAdmin opens the admin socket, readable and writable by sluice's
// own user only.
func (d *daemon) serveAdmin(path string) (*admin.Server, error) {
	ln, err := socket.Listen("unix:" + path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	counters := func() admin.Counters { return d.eng.Load().Limits() }
	return admin.Serve(ln, counters, d.log.Named("admin")), nil
}

// ready answers /readyz: sluice takes sessions and its store answers.
func (d *daemon) ready(ctx context.Context) error {
	switch {
	case d.stopping.Load():
		return metrics.NotReady("shutting down")
	case !d.serving.Load():
		return metrics.NotReady("starting")
	}
	err := counter.Ping(ctx, d.raw)
	if errors.Is(err, counter.ErrUnsupported) {
		// A store with nothing to ping answers if it can list its
		// exemptions; one that cannot do either is always there.
		if _, err = counter.Allows(ctx, d.raw); errors.Is(err, counter.ErrUnsupported) {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("counter store %s: %w", d.cfg.Store.Backend, err)
	}
	return nil
}

// build compiles an engine from c. prev is the list set in force, whose
// lists stay when their files cannot be read at a reload.
func (d *daemon) build(c *config.Config, prev *lists.Set) (*config.Built, error) {
	rt := config.Runtime{Store: d.store, Fallback: d.fallback, Recorder: d.recorder(), Log: d.log, Lists: prev, Alerts: d.alerts}
	if d.met != nil {
		rt.Observer = d.met
	}
	b, err := c.Build(rt)
	if err != nil {
		return nil, err
	}
	for _, e := range b.Kept {
		d.log.Error("list not reloaded", zap.Error(e))
	}
	return b, nil
}

// recorder is told of store failures the rules answered: the store itself
// (the Redis store counts them) and the metrics. The metrics wrapper hides
// the store's own methods from the engine, hence both are named here.
func (d *daemon) recorder() limits.StoreErrorRecorder {
	var rs recorders
	if r, ok := d.raw.(limits.StoreErrorRecorder); ok {
		rs = append(rs, r)
	}
	if d.met != nil {
		rs = append(rs, d.met)
	}
	if len(rs) == 0 {
		return nil
	}
	return rs
}

type recorders []limits.StoreErrorRecorder

func (rs recorders) RecordFallback(policy string, requests int, err error) {
	for _, r := range rs {
		r.RecordFallback(policy, requests, err)
	}
}

// reload re-reads the config and list files; new sessions get the new
// policy, sessions in flight finish on theirs, counters stay (they live in
// the store, which a reload keeps). A bad config leaves the running one in
// force. systemd hears RELOADING=1 before and READY=1 after, either way.
func (d *daemon) reload() {
	d.notify(sd.SdNotifyReloading + "\n" + sd.SdNotifyMonotonicUsec())
	c, err := loadConfig(d.path)
	if err == nil {
		d.warnRestartOnly(c)
		var b *config.Built
		if b, err = d.build(c, d.lists); err == nil {
			err = d.alerts.Configure(c.Alerts)
		}
		if err == nil {
			d.eng.Store(b.Engine)
			d.srv.SetEngine(b.Engine)
			d.cfg, d.lists = c, b.Lists
		}
	}
	if err != nil {
		d.log.Error("reload failed; the running config stays in force", zap.Error(err))
		if d.met != nil {
			d.met.ReloadFailed()
		}
		d.notify(sd.SdNotifyReady + "\nSTATUS=reload failed, running config kept: " + oneLine(err.Error()))
		return
	}
	if d.met != nil {
		d.met.ConfigLoaded(len(c.Rules), true)
	}
	d.log.Info("reloaded", zap.String("config", configName(d.path)), zap.Stringer("mode", c.Mode), zap.Int("limits", len(c.Rules)))
	d.notify(sd.SdNotifyReady + "\n" + d.status())
}

// warnRestartOnly says which changes a reload does not apply.
func (d *daemon) warnRestartOnly(c *config.Config) {
	if c.Listen != d.cfg.Listen && !d.activated {
		d.log.Warn("listen changed; it takes a restart", zap.String("running", d.cfg.Listen), zap.String("file", c.Listen))
	}
	for _, ch := range []struct {
		what    string
		changed bool
	}{
		{"max_connections, max_header_bytes or max_macro_bytes", c.Bounds != d.cfg.Bounds},
		{"[store]", !c.Store.Equal(&d.cfg.Store)},
		{"[metrics]", c.Metrics != d.cfg.Metrics},
		{"[admin]", c.Admin != d.cfg.Admin},
		{"[log]", c.Log != d.cfg.Log},
	} {
		if ch.changed {
			d.log.Warn(ch.what + " changed; it takes a restart")
		}
	}
}

// shutdown stops accepting, lets sessions in flight finish until
// shutdown_timeout, and cuts off the rest; a second SIGTERM or SIGINT cuts
// them off at once. What was cut gets milter_default_action from the MTA
// (tempfail: the client retries).
func (d *daemon) shutdown(sig os.Signal, sigs <-chan os.Signal) error {
	d.stopping.Store(true)
	if d.met != nil {
		d.met.ShuttingDown()
	}
	n := d.srv.Sessions()
	d.notify(sd.SdNotifyStopping + fmt.Sprintf("\nSTATUS=stopping: waiting for %d sessions", n))
	d.log.Info("stopping", zap.Stringer("signal", sig), zap.Int("sessions", n),
		zap.Duration("shutdown_timeout", d.cfg.ShutdownTimeout.D()))
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownTimeout.D())
	defer cancel()
	done := make(chan struct{})
	guard.Go(d.log, "shutdown", func() {
		defer close(done)
		_ = d.srv.Shutdown(ctx)
	})
	for {
		select {
		case <-done:
			return nil
		case s := <-sigs:
			if s != syscall.SIGHUP {
				d.log.Warn("second signal; cutting off sessions in flight", zap.Stringer("signal", s))
				cancel()
			}
		}
	}
}

// closeStores closes the stores, which writes the memory store's snapshot.
func (d *daemon) closeStores(stores []counter.Store) error {
	var errs []error
	for _, s := range stores {
		if s == nil {
			continue
		}
		if err := s.Close(); err != nil {
			d.log.Error("closing counter store", zap.Error(err))
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("counter store not closed cleanly: %w", errors.Join(errs...))
	}
	return nil
}

// notify tells systemd (Type=notify) where sluice is; without
// NOTIFY_SOCKET it does nothing.
func (d *daemon) notify(state string) {
	if _, err := sd.SdNotify(false, state); err != nil {
		d.log.Warn("could not notify systemd", zap.Error(err))
	}
}

// status is the line `systemctl status` shows.
func (d *daemon) status() string {
	return fmt.Sprintf("STATUS=serving %s: %d limits, mode %s, store %s", configName(d.path), len(d.cfg.Rules), d.cfg.Mode, d.cfg.Store.Backend)
}

func listenNames(lns []net.Listener) string {
	names := make([]string, len(lns))
	for i, ln := range lns {
		a := ln.Addr()
		if a.Network() == "unix" {
			names[i] = "unix:" + a.String()
		} else {
			names[i] = "inet:" + a.String()
		}
	}
	return strings.Join(names, " ")
}

func closeAll(lns []net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}

// closeQuietly stops a side server, giving a request in progress a moment.
func closeQuietly(close func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = close(ctx)
}

// oneLine keeps a multi-line error on one STATUS= line, bounded: systemd
// shows it in `systemctl status`, and a runaway value must not fill it.
func oneLine(s string) string { return strings.ReplaceAll(conf.ClipMessage(s), "\n", "; ") }

// postfixLines are the main.cf settings that plug sluice into Postfix.
func postfixLines(listen string) string {
	spec := listen
	if network, addr, err := socket.ParseSpec(listen); err == nil && network == "tcp" {
		if h, p, err := net.SplitHostPort(addr); err == nil {
			spec = "inet:" + net.JoinHostPort(h, p)
		}
	}
	return "smtpd_milters = " + spec + " ; milter_default_action = tempfail ; milter_protocol = 6"
}
