package config

import (
	"fmt"
	"time"

	"go.uber.org/zap"

	"sluice/alert"
	"sluice/auth"
	"sluice/auth/dkim"
	"sluice/auth/dmarc"
	"sluice/auth/resolver"
	"sluice/conf"
	"sluice/engine"
	"sluice/limits"
	"sluice/limits/counter"
	"sluice/lists"
)

// Runtime is what an engine built from a config runs on and reports to:
// the parts that outlive a reload.
type Runtime struct {
	Store    counter.Store
	Fallback counter.Store // for on_store_error = "local"; may be nil
	// Recorder is told of store failures the rules answered; nil: the
	// store itself when it counts them.
	Recorder limits.StoreErrorRecorder
	Log      *zap.Logger
	Observer engine.Observer
	// Lists are the lists in force, kept when their files cannot be read
	// again at a reload; nil at start, where a file that cannot be read
	// is an error.
	Lists *lists.Set
	// NoDNS leaves out the checks that ask DNS — SPF, client_rdns, dnsbl,
	// sender_domain_exists, DKIM and DMARC — and keeps the access tables
	// and the checks of what the client said (sluice explain -no-dns, and
	// its repetitions).
	NoDNS bool
	// NoChecks leaves every check out — access tables, SPF, DKIM, DMARC:
	// a replayed log does not say what they answered then.
	NoChecks bool
	// Now is the clock the engine reads; nil: time.Now.
	Now func() time.Time
	// Alerts are told what limits restrict, refuse and hold; used only
	// when the file has [[alert]] tables.
	Alerts alert.Notifier
}

// Built is an engine and what went into it.
type Built struct {
	Engine *engine.Engine
	Lists  *lists.Set
	// Kept are the errors of lists that could not be read again and were
	// kept as they were (only at a reload).
	Kept []error
}

// Build reads the list files and access tables and builds the engine.
func (c *Config) Build(rt Runtime) (*Built, error) {
	set, kept, err := c.BuildLists(rt.Lists)
	if err != nil {
		return nil, err
	}
	var (
		checker  *auth.Checker
		verifier *dkim.Verifier
		dmarcs   *dmarc.Evaluator
	)
	if !rt.NoChecks {
		// A table's DELAY is bounded by max_delay, as every pause is.
		opts := []auth.Option{auth.WithMaxDelay(c.PolicyConfig.MaxDelay.D())}
		switch {
		case rt.NoDNS:
			opts = append(opts, auth.WithoutDNS())
		case c.DKIM.Enabled || c.DMARC.Enabled:
			// One resolver, one cache: the sender checks, the DKIM keys
			// and the DMARC records.
			res, err := resolver.New(&c.DNS, rt.Log)
			if err != nil {
				return nil, err
			}
			opts = append(opts, auth.WithResolver(res))
			if c.DKIM.Enabled {
				if verifier, err = dkim.New(&c.DKIM, res, c.DNS.CheckBytes, rt.Log); err != nil {
					return nil, fmt.Errorf("dkim: %w", err)
				}
			}
			if c.DMARC.Enabled {
				if dmarcs, err = dmarc.New(&c.DMARC, res, c.DNS.CheckBytes); err != nil {
					return nil, fmt.Errorf("dmarc: %w", err)
				}
			}
		}
		if checker, err = auth.New(&c.AuthConfig, rt.Log, opts...); err != nil {
			return nil, err
		}
	}
	eng, err := engine.New(engine.Options{
		Config: c.EngineConfig,
		Policy: c.PolicyConfig,
		Rules:  &c.LimitsConfig,
		Lists:  set,
		Counting: limits.Options{
			Store: rt.Store, Fallback: rt.Fallback, Recorder: rt.Recorder, OnStoreError: c.Store.OnStoreError,
		},
		Auth:         checker,
		DKIM:         verifier,
		DMARC:        dmarcs,
		Log:          rt.Log,
		Observer:     rt.Observer,
		AcceptAtMail: true,
		Now:          rt.Now,
		Alerts:       c.alerts(rt.Alerts),
	})
	if err != nil {
		return nil, err
	}
	return &Built{Engine: eng, Lists: set, Kept: kept}, nil
}

// alerts is n when the file has [[alert]] tables, else nil: the engine
// then builds no alert at all.
func (c *Config) alerts(n alert.Notifier) alert.Notifier {
	if len(c.Alerts) == 0 {
		return nil
	}
	return n
}

// BuildLists reads the [lists] files; prev, when given, is the set in
// force, whose lists are kept (and their errors returned) when their
// files cannot be read. An error names the file and the config line.
func (c *Config) BuildLists(prev *lists.Set) (*lists.Set, []error, error) {
	set, kept, err := c.Lists.Build(prev)
	if err != nil {
		return nil, nil, c.Locate(conf.In(err, "lists"))
	}
	return set, kept, nil
}
