// Package alert tells people when a limit restricts, refuses or holds an
// account's mail: signed webhooks and mail, sent off the SMTP path.
//
// The engine hands each Event to a Dispatcher, which never blocks: it
// keeps one alert per (target, rule, key, event) per `every` (across the
// fleet when the store is shared), queues it, and workers send it with
// retries and backoff. A full queue or a dead target is logged (sampled)
// and counted; no SMTP reply ever waits for an alert.
package alert

import (
	"net"
	"net/mail"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"sluice/conf"
)

// Config is one [[alert]] table.
type Config struct {
	// Rules are the limit rules the alert is about; empty: all.
	Rules []string `toml:"rules"`
	// On are the events it is about: restrict, refuse, hold; empty: all.
	On []string `toml:"on"`
	// Every alert of one (rule, key, event) is sent once per Every.
	Every conf.Duration `toml:"every"` // default 1h

	// Webhook is an https URL (http only to a loopback address) that gets
	// the event as a JSON POST; Secret, when set, signs the body with
	// HMAC-SHA256 in X-Sluice-Signature. CAFile adds trusted roots.
	Webhook string `toml:"webhook"`
	Secret  string `toml:"secret"`
	CAFile  string `toml:"ca_file"`

	// Mail is an address that gets a plain-text message through the
	// local MTA's sendmail binary; NotifySender sends it to the SASL user
	// or the sender too, when that is an address of LocalDomains.
	Mail         string   `toml:"mail"`
	NotifySender bool     `toml:"notify_sender"`
	LocalDomains []string `toml:"local_domains"`
	SendmailPath string   `toml:"sendmail_path"` // default /usr/sbin/sendmail
	From         string   `toml:"from"`          // the alert's sender; default the Mail address

	Timeout conf.Duration `toml:"timeout"` // one attempt; default 10s
}

// DefaultSendmail is where the local MTA's sendmail binary usually is.
const DefaultSendmail = "/usr/sbin/sendmail"

// Kinds of event an alert can be about.
const (
	KindRestrict = "restrict" // a key was restricted (or would be, in tag or dry-run mode)
	KindRefuse   = "refuse"   // a rule asked to refuse an event
	KindHold     = "hold"     // a rule asked to hold a message
)

var kinds = []string{KindRestrict, KindRefuse, KindHold}

// Defaults fills what the table left out.
func (c *Config) Defaults() {
	if c.Every == 0 {
		c.Every = conf.Duration(time.Hour)
	}
	if len(c.On) == 0 {
		c.On = kinds
	}
	if c.Mail != "" && c.SendmailPath == "" {
		c.SendmailPath = DefaultSendmail
	}
	if c.Timeout == 0 {
		c.Timeout = conf.Duration(10 * time.Second)
	}
}

// Validate checks the table against the rules in the config.
func (c *Config) Validate(rules map[string]bool) error {
	for i, r := range c.Rules {
		if !rules[r] {
			return conf.In(conf.Errorf(conf.Index(i), "no [[limit]] named %q", r), "rules")
		}
	}
	for i, k := range c.On {
		if !slices.Contains(kinds, k) {
			return conf.In(conf.Errorf(conf.Index(i), "unknown event %q (want restrict, refuse or hold)", k), "on")
		}
	}
	if c.Every < conf.Duration(time.Second) {
		return conf.Errorf("every", "%s is below 1s", c.Every.D())
	}
	if c.Timeout < conf.Duration(time.Second) || c.Timeout > conf.Duration(time.Minute) {
		return conf.Errorf("timeout", "%s: want 1s to 1m", c.Timeout.D())
	}
	switch {
	case c.Webhook == "" && c.Mail == "":
		return conf.Errorf("webhook", "an [[alert]] needs a target: webhook = \"https://...\" or mail = \"postmaster@example.com\"")
	case c.Webhook != "" && c.Mail != "":
		return conf.Errorf("mail", "one target per [[alert]]: give the webhook and the mail a table each")
	}
	if c.Webhook != "" {
		return c.validateWebhook()
	}
	return c.validateMail()
}

func (c *Config) validateWebhook() error {
	u, err := url.Parse(c.Webhook)
	if err != nil || u.Host == "" {
		return conf.Errorf("webhook", "%q is not a URL", c.Webhook)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !loopback(u.Hostname()) {
			return conf.Errorf("webhook", "%q: alerts name accounts; send them over https (http only to a loopback address)", c.Webhook)
		}
	default:
		return conf.Errorf("webhook", "%q: want an https URL", c.Webhook)
	}
	if c.CAFile != "" {
		if _, err := loadRoots(c.CAFile); err != nil {
			return conf.Errorf("ca_file", "%v", err)
		}
	}
	for _, k := range []struct {
		key   string
		given bool
	}{{"notify_sender", c.NotifySender}, {"local_domains", len(c.LocalDomains) > 0}, {"sendmail_path", c.SendmailPath != ""}, {"from", c.From != ""}} {
		if k.given {
			return conf.Errorf(k.key, "only for a mail alert")
		}
	}
	return nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c *Config) validateMail() error {
	for _, k := range []struct {
		key, v string
	}{{"mail", c.Mail}, {"from", c.From}} {
		if k.v == "" {
			continue
		}
		if a, err := mail.ParseAddress(k.v); err != nil || a.Name != "" || a.Address != k.v || strings.HasPrefix(k.v, "-") {
			return conf.Errorf(k.key, "%q: want a bare address, e.g. postmaster@example.com", k.v)
		}
	}
	if c.Secret != "" || c.CAFile != "" {
		return conf.Errorf(map[bool]string{true: "secret", false: "ca_file"}[c.Secret != ""], "only for a webhook alert")
	}
	if c.NotifySender && len(c.LocalDomains) == 0 {
		return conf.Errorf("local_domains", "notify_sender needs the domains whose users may be told (local_domains = [\"example.com\"])")
	}
	for i, d := range c.LocalDomains {
		if d == "" || strings.ContainsAny(d, "@ \t") {
			return conf.In(conf.Errorf(conf.Index(i), "%q is not a domain", d), "local_domains")
		}
	}
	fi, err := os.Stat(c.SendmailPath)
	if err != nil {
		return conf.Errorf("sendmail_path", "%v (the local MTA's sendmail binary sends alert mail)", err)
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return conf.Errorf("sendmail_path", "%s is not an executable", c.SendmailPath)
	}
	return nil
}

// Event is what an alert says.
type Event struct {
	Time        time.Time `json:"time"`
	Host        string    `json:"host"`
	Event       string    `json:"event"` // restrict, refuse, hold
	Rule        string    `json:"rule"`
	Key         string    `json:"key"`
	Action      string    `json:"action"` // what the rule asked for
	Mode        string    `json:"mode"`   // enforce, tag, dry-run: as applied
	Detail      string    `json:"counts,omitempty"`
	Limit       string    `json:"limit,omitempty"`
	Restricted  bool      `json:"restricted,omitempty"`
	Until       time.Time `json:"restricted_until,omitzero"` // zero: until released, when Restricted
	ClientIP    string    `json:"client_ip,omitempty"`
	Helo        string    `json:"helo,omitempty"`
	Sender      string    `json:"sender,omitempty"`
	SASLUser    string    `json:"sasl_user,omitempty"`
	QueueID     string    `json:"queue_id,omitempty"`
	RcptDomains []string  `json:"rcpt_domains,omitempty"` // the last few of the session
	Release     string    `json:"release,omitempty"`      // the command that lifts the restriction
}

// ReleaseCommand is the command that lifts key's restriction under rule,
// quoted for a POSIX shell: a key holds what a client wrote.
func ReleaseCommand(rule, key string) string {
	return "sluice counters release " + shellQuote(key) + " -rule " + shellQuote(rule)
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// dedupKey is the (rule, key, event) a target sends one alert per Every
// for.
func dedupKey(ev *Event) string {
	return ev.Rule + "\x00" + ev.Key + "\x00" + ev.Event
}
