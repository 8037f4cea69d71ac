package auth

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"

	"sluice/conf"
	"sluice/policy"
)

// decode reads auth's part of a file the way the loader does: strict.
func decode(t *testing.T, text string) *Config {
	t.Helper()
	var cfg Config
	d := toml.NewDecoder(strings.NewReader(text))
	d.DisallowUnknownFields()
	if err := d.Decode(&cfg); err != nil {
		t.Fatalf("decode: %v", err)
	}
	cfg.Defaults()
	return &cfg
}

// The example tables of docs/auth.md are the ones the example config
// loads, and they load.
func TestDocsExampleTables(t *testing.T) {
	doc, err := os.ReadFile("../docs/auth.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sender_access", "client_access.cidr", "helo_checks"} {
		want, err := os.ReadFile("testdata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(doc), "```text file=/etc/sluice/"+name+"\n"+string(want)+"```") {
			t.Errorf("docs/auth.md does not show testdata/%s as it is", name)
		}
	}
	cfg := decode(t, string(must(os.ReadFile("testdata/auth.toml"))))
	if _, err := New(cfg, nil, WithResolver(newFake())); err != nil {
		t.Errorf("the example config's tables: %v", err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestExampleConfig(t *testing.T) {
	text, err := os.ReadFile("testdata/auth.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := decode(t, string(text))
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	k := cfg.Checks
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"dns timeout", cfg.DNS.Timeout.D(), 3 * time.Second},
		{"spf fail", *cfg.SPF.Fail, policy.ActionTag},
		{"spf skip_authenticated", *cfg.SPF.SkipAuthenticated, true},
		{"spf reply", cfg.SPF.Reply.Fail.Code(), "550"},
		{"require_fqdn_sender", *k.RequireFQDNSender.Action, policy.ActionReject},
		{"sender_domain_exists temperror", *k.SenderDomainExists.TempError, policy.ActionTempfail},
		{"helo_syntax mode", k.HeloSyntax.Mode, policy.ModeTag},
		{"helo_not_ours names", len(k.HeloNotOurs.Names), 2},
		{"client_rdns", k.ClientRDNS.Require, "fcrdns"},
		{"client_rdns action", *k.ClientRDNS.Action, policy.ActionTempfail},
		{"client_rdns temperror default", *k.ClientRDNS.TempError, policy.ActionTempfail},
		{"dnsbl zone", k.DNSBL[0].Zone, "zen.example"},
		{"dnsbl codes", len(k.DNSBL[1].Codes), 2},
		{"sender_access", k.SenderAccess.File, "testdata/sender_access"},
		{"helo_access", k.HeloAccess.File, "testdata/helo_access"},
		{"client_access", len(k.ClientAccess), 2},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	c, err := newChecker(cfg, nil, newFake(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if c.senderAccess.table.Len() != 7 || c.heloAccess.table.Len() != 2 {
		t.Error("access tables not loaded")
	}
}

func TestShortForms(t *testing.T) {
	cfg := decode(t, `
[checks]
sender_domain_exists = "tag"
helo_not_ours = "tempfail"
client_rdns = "exists"
dnsbl = ["zen.example", { zone = "bl.example", action = "tag" }]
`)
	k := cfg.Checks
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"sender_domain_exists", *k.SenderDomainExists.Action, policy.ActionTag},
		{"sender_domain_exists temperror follows a soft action", *k.SenderDomainExists.TempError, policy.ActionTag},
		{"helo_not_ours", *k.HeloNotOurs.Action, policy.ActionTempfail},
		{"client_rdns", k.ClientRDNS.Require, "exists"},
		{"client_rdns action", *k.ClientRDNS.Action, policy.ActionReject},
		{"dnsbl short", k.DNSBL[0].Zone + "/" + k.DNSBL[0].Action.String(), "zen.example/reject"},
		{"dnsbl table", k.DNSBL[1].Zone + "/" + k.DNSBL[1].Action.String(), "bl.example/tag"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	old := hostname
	hostname = func() (string, error) { return "host.example.test", nil }
	defer func() { hostname = old }()
	cfg := decode(t, "[spf]\nenabled = true\n")
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.AuthservID != "host.example.test" {
		t.Errorf("authserv_id default %q", cfg.AuthservID)
	}
	for _, a := range []*policy.Action{cfg.SPF.Fail, cfg.SPF.SoftFail, cfg.SPF.Neutral, cfg.SPF.None, cfg.SPF.TempError, cfg.SPF.PermError} {
		if *a != policy.ActionTag {
			t.Errorf("SPF results must default to tag, got %s", *a)
		}
	}
	c, err := newChecker(cfg, nil, newFake(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Enabled() || c.AuthservID() != "host.example.test" {
		t.Error("checker from defaults")
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		text, path, msg string
	}{
		{`authserv_id = "mx example"`, "authserv_id", "not a valid authserv-id"},
		{"authserv_id = \"a;b\"", "authserv_id", "not a valid authserv-id"},
		{"[dns]\ntimeout = \"1m\"", "dns.timeout", "above"},
		{"[dns]\nservers = [\"ns.example\"]", "dns.servers.0", "IP address"},
		{"[spf]\nfail = \"hold\"", "spf.fail", "not for checks"},
		{"[spf]\ntimeout = \"1m\"", "spf.timeout", "25s"},
		{"[spf]\nfail = \"tempfail\"\n[spf.reply]\nfail = \"550 5.7.23 no\"", "spf.reply.fail", "permanent but the action is tempfail"},
		{"[spf.reply]\ntemperror = \"451 4.7.24 later\"", "", ""}, // tag: a reply that is never sent is fine
		{"[checks]\nrequire_fqdn_sender = \"delay\"", "checks.require_fqdn_sender.action", "not for checks"},
		{"[checks]\nhelo_syntax = { action = \"reject\", reply = \"451 4.5.2 later\" }", "checks.helo_syntax.reply", "temporary but the action is reject"},
		{"[checks]\nsender_domain_exists = { temperror = \"hold\" }", "checks.sender_domain_exists.temperror", "not for checks"},
		{"[checks]\nclient_rdns = \"maybe\"", "checks.client_rdns.require", "exists or fcrdns"},
		{"[checks]\nhelo_not_ours = { names = [\"ok.example\", \"bad name\"] }", "checks.helo_not_ours.names.1", "neither a host name nor an address"},
		{"[[checks.dnsbl]]\nzone = \"zen.example\"\n[[checks.dnsbl]]\nzone = \"ZEN.example.\"", "checks.dnsbl.1.zone", "already listed as dnsbl 0"},
		{"[[checks.dnsbl]]\nzone = \"\"", "checks.dnsbl.0.zone", "not a DNS zone"},
		{"[[checks.dnsbl]]\nzone = \"zen.example\"\ncodes = [\"127.0.0.2\", \"10.0.0.1\"]", "checks.dnsbl.0.codes.1", "outside 127.0.0.0/8"},
		{"[checks]\nsender_access = { mode = \"tag\" }", "checks.sender_access.file", "no file"},
		{"[checks]\nhelo_access = \"lmdb:/etc/postfix/helo\"", "checks.helo_access.file", "unknown table type \"lmdb:\""},
		{"[checks]\nsender_access = \"cidr:/etc/postfix/senders\"", "checks.sender_access.file", "use it in client_access"},
		{"[checks]\nclient_access = \"hash:/etc/postfix/clients\"", "checks.client_access.0.file", "a client table is cidr:"},
		{"[[checks.client_access]]\nfile = \"cidr:/a\"\n[[checks.client_access]]\nmode = \"tag\"", "checks.client_access.1.file", "no file"},
		{"[checks]\nclient_access = [\"cidr:/a\", \"regexp:/b\"]", "", ""},
	} {
		cfg := decode(t, tc.text)
		if cfg.AuthservID == "" {
			cfg.AuthservID = "mx.example.test"
		}
		err := cfg.Validate()
		if tc.path == "" {
			if err != nil {
				t.Errorf("%q: %v", tc.text, err)
			}
			continue
		}
		var ce *conf.Error
		if !errors.As(err, &ce) || strings.Join(ce.Path, ".") != tc.path || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: error %v, want one at %s containing %q", tc.text, err, tc.path, tc.msg)
		}
	}
}

// An action that is no action at all is refused when the file is read,
// by policy's parser, wherever a check takes one.
func TestUnknownActionsAreRefused(t *testing.T) {
	for _, text := range []string{
		"[spf]\nfail = \"bounce\"",
		"[checks]\nrequire_fqdn_sender = \"drop\"",
		"[checks]\nsender_domain_exists = { temperror = \"later\" }",
		"[[checks.dnsbl]]\nzone = \"zen.example\"\naction = \"explode\"",
	} {
		var cfg Config
		err := toml.NewDecoder(strings.NewReader(text)).Decode(&cfg)
		if err == nil || !strings.Contains(err.Error(), "unknown action") {
			t.Errorf("%q: %v, want an unknown action", text, err)
		}
	}
}

// client_access takes one table's file, a list of files, or tables of
// their own with a mode each.
func TestClientAccessForms(t *testing.T) {
	for _, tc := range []struct {
		text string
		want AccessTables
	}{
		{"[checks]\nclient_access = \"cidr:/etc/sluice/cn.cidr\"", AccessTables{{File: "cidr:/etc/sluice/cn.cidr"}}},
		{"[checks]\nclient_access = [\"/a\", \"regexp:/b\"]", AccessTables{{File: "/a"}, {File: "regexp:/b"}}},
		{"[[checks.client_access]]\nfile = \"/a\"\n[[checks.client_access]]\nfile = \"/b\"\nmode = \"dry-run\"",
			AccessTables{{File: "/a"}, {File: "/b", Mode: policy.ModeDryRun}}},
	} {
		cfg := decode(t, tc.text)
		if fmt.Sprint(cfg.Checks.ClientAccess) != fmt.Sprint(tc.want) {
			t.Errorf("%q: %+v, want %+v", tc.text, cfg.Checks.ClientAccess, tc.want)
		}
	}
}

func TestUnknownKeysAreRefused(t *testing.T) {
	var cfg Config
	d := toml.NewDecoder(strings.NewReader("[checks]\nrequire_fqdn_sender = { acton = \"reject\" }\n"))
	d.DisallowUnknownFields()
	if err := d.Decode(&cfg); err == nil {
		t.Error("a misspelt key was accepted")
	}
}
