package dkim

import (
	"sluice/conf"
	"sluice/policy"
)

// Config is the [dkim] table.
type Config struct {
	Enabled bool `toml:"enabled"`
	// SkipAuthenticated skips SMTP AUTH clients (default true): their
	// mail is ours, signed later if at all.
	SkipAuthenticated *bool `toml:"skip_authenticated"`
	// MaxSignatures is how many DKIM-Signature fields of a message are
	// verified, from the top (default 5); the rest are left out.
	MaxSignatures int `toml:"max_signatures"`
	// MaxBytes caps the body bytes fed to the verifier (default 64 MiB).
	// The body streams through as the MTA sends it, so this bounds CPU,
	// not memory; a longer message is verified up to the cap, and a
	// signature its cut body fails is neutral, saying so.
	MaxBytes int64       `toml:"max_bytes"`
	Mode     policy.Mode `toml:"mode"`
	// The action when no signature passes and one fails, could not be
	// checked for now (a key lookup that timed out), or is broken (no
	// key, a malformed signature, a weak algorithm): reject, tempfail,
	// tag (default) or none. A message with no signature is none and
	// never acts: DMARC says what an unsigned message is worth.
	Fail      *policy.Action `toml:"fail"`
	TempError *policy.Action `toml:"temperror"`
	PermError *policy.Action `toml:"permerror"`
	Reply     Replies        `toml:"reply"`
}

// Replies are the [dkim.reply] templates.
type Replies struct {
	Fail      *policy.Reply `toml:"fail"`
	TempError *policy.Reply `toml:"temperror"`
	PermError *policy.Reply `toml:"permerror"`
}

// DefaultMaxBytes is max_bytes when the file does not say.
const DefaultMaxBytes = 64 << 20

// Defaults fills what the file left out.
func (c *Config) Defaults() {
	if c.SkipAuthenticated == nil {
		t := true
		c.SkipAuthenticated = &t
	}
	if c.MaxSignatures == 0 {
		c.MaxSignatures = 5
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	for _, a := range []**policy.Action{&c.Fail, &c.TempError, &c.PermError} {
		if *a == nil {
			t := policy.ActionTag
			*a = &t
		}
	}
}

// Validate checks the [dkim] keys.
func (c *Config) Validate() error {
	if c.MaxSignatures < 1 || c.MaxSignatures > 50 {
		return conf.Errorf("max_signatures", "%d: want 1 to 50", c.MaxSignatures)
	}
	if c.MaxBytes < 1024 {
		return conf.Errorf("max_bytes", "%d is below 1024: the value is in bytes (64 MiB: max_bytes = 67_108_864)", c.MaxBytes)
	}
	_, err := c.actions()
	return err
}

var allowed = []policy.Action{policy.ActionReject, policy.ActionTempfail, policy.ActionTag, policy.ActionNone}

func (c *Config) actions() (map[string]policy.ResultAction, error) {
	return policy.ResultActions(c.Mode, allowed,
		policy.ResultConfig{Key: Fail, Action: c.Fail, Reply: c.Reply.Fail, Enh: "7.1", Text: "DKIM signature of {key} did not verify"},
		policy.ResultConfig{Key: TempError, Action: c.TempError, Reply: c.Reply.TempError, Enh: "7.1", Text: "Cannot check the DKIM signature of {key} now; try again later"},
		policy.ResultConfig{Key: PermError, Action: c.PermError, Reply: c.Reply.PermError, Enh: "7.1", Text: "DKIM signature of {key} cannot be checked"},
	)
}
