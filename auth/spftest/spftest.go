// Package spftest runs the OpenSPF RFC 7208 test suite against anything
// that writes Received-SPF and Authentication-Results: auth.Checker in unit
// tests, the whole milter behind an MTA in end-to-end tests.
package spftest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/authres"
	"gopkg.in/yaml.v3"

	"sluice/test/dnstest"
)

// Case is one test of the suite.
type Case struct {
	Scenario    string // the description of the document it belongs to
	Name        string
	Description string
	Spec        []string
	Helo        string
	Host        string // the client address
	MailFrom    string // "" is the null sender
	Results     []string
	Explanation string
}

// Optional reports whether the suite allows several results for the case
// (the RFC leaves the choice to implementations).
func (c Case) Optional() bool { return len(c.Results) > 1 }

// Scenario is one document of the suite: zone data and the cases that run
// against it.
type Scenario struct {
	Description string
	Zone        *dnstest.Zone
	Cases       []Case // in name order
}

// Load reads a suite file.
func Load(path string) ([]Scenario, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("spftest: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out []Scenario
	for n := 1; ; n++ {
		var doc struct {
			Description string
			Tests       map[string]struct {
				Description string
				Spec        any
				Helo        string
				Host        string
				MailFrom    string `yaml:"mailfrom"`
				Result      any
				Explanation string
			}
			ZoneData map[string]any `yaml:"zonedata"`
		}
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("spftest: %s: document %d: %w", path, n, err)
		}
		z, err := dnstest.SuiteZone(doc.ZoneData)
		if err != nil {
			return nil, fmt.Errorf("spftest: %s: %q: %w", path, doc.Description, err)
		}
		s := Scenario{Description: doc.Description, Zone: z}
		for name, t := range doc.Tests {
			s.Cases = append(s.Cases, Case{
				Scenario: doc.Description, Name: name, Description: strings.TrimSpace(t.Description),
				Spec: strs(t.Spec), Helo: t.Helo, Host: t.Host, MailFrom: t.MailFrom,
				Results: strs(t.Result), Explanation: t.Explanation,
			})
		}
		sort.Slice(s.Cases, func(i, j int) bool { return s.Cases[i].Name < s.Cases[j].Name })
		out = append(out, s)
	}
	return out, nil
}

func strs(v any) []string {
	switch v := v.(type) {
	case []any:
		var out []string
		for _, e := range v {
			out = append(out, fmt.Sprint(e))
		}
		return out
	case nil:
		return nil
	default:
		return []string{fmt.Sprint(v)}
	}
}

// Field is a header field as the system under test added it.
type Field struct {
	Name, Value string
}

// CheckFunc runs one case — a session from c.Host saying HELO c.Helo and
// MAIL FROM c.MailFrom — and returns the header fields added to the
// message. The DNS server given to Run serves the case's zone meanwhile.
type CheckFunc func(t *testing.T, c Case) ([]Field, error)

// Options say what to run and expect.
type Options struct {
	// Path is the suite file.
	Path string
	// Server is the DNS server the system under test asks; Run loads each
	// scenario's zone into it. The zones have TTL 0, so a caching
	// resolver never carries answers from one scenario into the next; its
	// query rate cap must allow a few hundred queries a second.
	Server *dnstest.Server
	// AuthservID is the authserv-id expected in Authentication-Results.
	AuthservID string
	// Known maps the names of cases expected to fail to the reason. Nil
	// means KnownFailures. A known failure that passes is an error too,
	// so the list stays true.
	Known map[string]string
}

// Outcome is what became of one case.
type Outcome struct {
	Case
	Received string // the result in Received-SPF
	AuthRes  string // the spf result in Authentication-Results
	Pass     bool
	Problem  string // why it did not pass
}

// Run runs every case of the suite as a subtest and returns the outcomes.
// A case passes when both headers carry one of the allowed results (and
// Authentication-Results names the identity that was checked). A failing
// case that Known does not list fails the test.
func Run(t *testing.T, opts Options, check CheckFunc) []Outcome {
	t.Helper()
	scenarios, err := Load(opts.Path)
	if err != nil {
		t.Fatal(err)
	}
	known := opts.Known
	if known == nil {
		known = KnownFailures
	}
	var outcomes []Outcome
	for _, s := range scenarios {
		opts.Server.SetZone(s.Zone)
		for _, c := range s.Cases {
			o := Outcome{Case: c}
			ran := false
			t.Run(c.Name, func(t *testing.T) {
				ran = true
				fields, err := check(t, c)
				if err != nil {
					o.Problem = err.Error()
				} else {
					o.judge(fields, opts.AuthservID)
				}
				reason, isKnown := known[c.Name]
				switch {
				case !o.Pass && isKnown:
					t.Logf("known failure: %s (%s)", o.Problem, reason)
				case !o.Pass:
					t.Errorf("%s: %s", c.Description, o.Problem)
				case isKnown:
					t.Errorf("passes now (Received-SPF %s); remove it from the known failures", o.Received)
				}
			})
			if ran { // not filtered out by -run
				outcomes = append(outcomes, o)
			}
		}
	}
	return outcomes
}

func (o *Outcome) judge(fields []Field, id string) {
	var spfs, ars []string
	for _, f := range fields {
		switch {
		case strings.EqualFold(f.Name, "Received-SPF"):
			spfs = append(spfs, f.Value)
		case strings.EqualFold(f.Name, "Authentication-Results"):
			ars = append(ars, f.Value)
		}
	}
	if len(spfs) != 1 {
		o.Problem = fmt.Sprintf("%d Received-SPF fields, want 1", len(spfs))
		return
	}
	o.Received = strings.ToLower(firstWord(spfs[0]))
	var spf *authres.SPFResult
	for _, v := range ars {
		got, results, err := authres.Parse(v)
		if err != nil || !strings.EqualFold(got, id) {
			continue
		}
		for _, r := range results {
			if r, ok := r.(*authres.SPFResult); ok {
				spf = r
			}
		}
	}
	if spf == nil {
		o.Problem = fmt.Sprintf("no Authentication-Results with authserv-id %s and an spf result in %q", id, ars)
		return
	}
	o.AuthRes = string(spf.Value)
	switch {
	case o.Received != o.AuthRes:
		o.Problem = fmt.Sprintf("Received-SPF says %s, Authentication-Results says %s", o.Received, o.AuthRes)
	case !slices.Contains(o.Results, o.Received):
		o.Problem = fmt.Sprintf("result %s, want %s", o.Received, strings.Join(o.Results, " or "))
	case o.MailFrom != "" && spf.From == "":
		o.Problem = "Authentication-Results has no smtp.mailfrom"
	case o.MailFrom == "" && spf.Helo == "":
		o.Problem = "Authentication-Results has no smtp.helo for the null sender"
	default:
		o.Pass = true
	}
}

func firstWord(s string) string {
	f := strings.Fields(s)
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// Summary is "N of M cases pass" and one line per failing case.
func Summary(outcomes []Outcome, known map[string]string) string {
	if known == nil {
		known = KnownFailures
	}
	var b strings.Builder
	passed := 0
	for _, o := range outcomes {
		if o.Pass {
			passed++
		}
	}
	fmt.Fprintf(&b, "%d of %d cases pass\n", passed, len(outcomes))
	for _, o := range outcomes {
		if o.Pass {
			continue
		}
		opt := ""
		if o.Optional() {
			opt = " (optional)"
		}
		fmt.Fprintf(&b, "FAIL %s%s [%s]: %s; known: %s\n", o.Name, opt, o.Scenario, o.Problem, known[o.Name])
	}
	return b.String()
}
