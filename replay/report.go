package replay

import (
	"slices"
	"strings"
	"time"

	"sluice/config"
	"sluice/maillog"
	"sluice/smtp"
)

// Report is what a replay found. Its JSON form is `sluice replay -json`.
type Report struct {
	Config string `json:"config"`
	// Mode is the config's own mode; the replay decides in dry-run.
	Mode string `json:"mode"`
	// From and To bound the period replayed: the first and the last line
	// read, or -since and -until.
	From time.Time `json:"from"`
	To   time.Time `json:"to"`

	Lines   int64 `json:"lines"`
	Skipped int64 `json:"skipped"`
	Ignored int64 `json:"ignored"`
	Late    int64 `json:"late"`

	Sessions        int64 `json:"sessions"`
	PartialSessions int64 `json:"partial_sessions"`
	Messages        int64 `json:"messages"`
	Recipients      int64 `json:"recipients"`
	Partial         int64 `json:"partial"`
	Unseen          int64 `json:"unseen_mail_commands"`

	// MTARefused is every command the MTA refused by its own checks;
	// MTARefusedAt by stage. Milters' refusals, holds and discards are
	// apart.
	MTARefused    int64            `json:"mta_refused"`
	MTARefusedAt  map[string]int64 `json:"mta_refused_at"`
	MilterRefused int64            `json:"milter_refused"`
	Held          int64            `json:"held"`
	Discarded     int64            `json:"discarded"`

	// Checks says what became of the sender checks: a log does not say
	// what DNS answered, so SPF and [checks] are not replayed.
	Checks string `json:"checks"`

	Rules []RuleReport `json:"rules"`
}

// RuleReport is one rule's part.
type RuleReport struct {
	Rule  string `json:"rule"`
	Count string `json:"count"` // what the rule counts
	Stage string `json:"stage"` // where it counts
	// Events is how many events the rule's stage saw in all (sessions,
	// messages, recipients); Crossed how many crossed the rule, and Share
	// Crossed/Events.
	Events  int64   `json:"events"`
	Crossed int64   `json:"crossed"`
	Share   float64 `json:"share"`
	Would   Would   `json:"would"`
	// Keys is how many distinct keys crossed; KeysCapped says that more
	// crossed than the report could track (-max_keys), so Keys is a
	// lower bound.
	Keys       int64    `json:"keys"`
	KeysCapped bool     `json:"keys_capped,omitempty"`
	Top        []Key    `json:"top"`
	Hourly     []Hourly `json:"hourly"`
}

// Would counts crossings by the action the rule asks for.
type Would struct {
	Tempfail   int64 `json:"tempfail"`
	Reject     int64 `json:"reject"`
	Hold       int64 `json:"hold"`
	Delay      int64 `json:"delay"`
	Disconnect int64 `json:"disconnect"`
	Tag        int64 `json:"tag"`
}

func (w *Would) add(a smtp.Action) {
	switch a {
	case smtp.ActionTempfail:
		w.Tempfail++
	case smtp.ActionReject:
		w.Reject++
	case smtp.ActionHold:
		w.Hold++
	case smtp.ActionDelay:
		w.Delay++
	case smtp.ActionDisconnect:
		w.Disconnect++
	case smtp.ActionTag:
		w.Tag++
	}
}

// Total is every crossing.
func (w Would) Total() int64 {
	return w.Tempfail + w.Reject + w.Hold + w.Delay + w.Disconnect + w.Tag
}

// Key is one key that crossed: how often, and when first and last.
type Key struct {
	Key   string    `json:"key"`
	Count int64     `json:"count"`
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
}

// Hourly is the crossings of one hour.
type Hourly struct {
	Hour  time.Time `json:"hour"`
	Count int64     `json:"count"`
}

// topN is how many keys a rule's report names.
const topN = 10

// tally counts as the replay goes.
type tally struct {
	config  string
	mode    string
	rules   []*ruleTally
	byName  map[string]*ruleTally
	events  [smtp.Data + 1]int64
	keys    int // tracked keys, all rules together
	maxKeys int
}

type ruleTally struct {
	name, count string
	stage       smtp.Stage
	staged      bool // stage taken from a crossing
	would       Would
	keys        map[string]*keyTally
	untracked   int64 // keys beyond maxKeys
	capped      bool
	hours       map[int64]int64 // hour (Unix seconds) -> crossings
}

type keyTally struct {
	count       int64
	first, last int64
}

// newTally counts for the rules of c, tracking at most maxKeys keys.
func newTally(c *config.Config, maxKeys int) *tally {
	t := &tally{config: c.Name(), mode: c.PolicyConfig.Mode.String(), byName: make(map[string]*ruleTally), maxKeys: max(maxKeys, 1)}
	for _, r := range c.LimitsConfig.Rules {
		rt := &ruleTally{name: r.Name, count: r.Count, stage: countStage(r.Count), keys: make(map[string]*keyTally), hours: make(map[int64]int64)}
		t.rules = append(t.rules, rt)
		t.byName[r.Name] = rt
	}
	return t
}

// countStage is where a rule of this count counts, unless its key is
// known only later.
func countStage(count string) smtp.Stage {
	switch count {
	case "messages":
		return smtp.Mail
	case "recipients":
		return smtp.Rcpt
	case "bytes":
		return smtp.Data
	}
	return smtp.Connect
}

// stage counts one stage and the outcomes of its decision.
func (t *tally) stage(st smtp.Stage, now int64, outcomes []smtp.Outcome) {
	t.events[st]++
	for _, o := range outcomes {
		if o.Mode != smtp.ModeDryRun {
			continue
		}
		rt := t.byName[o.Source]
		if rt == nil {
			rt = &ruleTally{name: o.Source, stage: st, keys: make(map[string]*keyTally), hours: make(map[int64]int64)}
			t.rules = append(t.rules, rt)
			t.byName[o.Source] = rt
		}
		if !rt.staged {
			rt.stage, rt.staged = st, true
		}
		rt.would.add(o.Asked)
		rt.hours[now/int64(time.Hour)*int64(time.Hour)/1e9]++
		k := rt.keys[o.Key]
		if k == nil {
			if t.keys >= t.maxKeys {
				rt.capped = true
				continue
			}
			t.keys++
			k = &keyTally{first: now}
			rt.keys[o.Key] = k
		}
		k.count++
		k.last = now
	}
}

func (t *tally) build(st *maillog.Stats, since, until int64) *Report {
	from, to := st.First, st.Last
	if since != 0 {
		from = since
	}
	if until != 0 {
		to = until - 1
	}
	if to < from {
		to = from
	}
	rep := &Report{
		Config: t.config, Mode: t.mode,
		From: time.Unix(0, from).UTC(), To: time.Unix(0, to).UTC(),
		Lines: st.Lines, Skipped: st.Skipped, Ignored: st.Ignored, Late: st.Late,
		Sessions: st.Sessions, PartialSessions: st.PartialSessions, Messages: st.Messages,
		Recipients: t.events[smtp.Rcpt], Partial: st.Partial, Unseen: st.Unseen,
		MTARefused: st.MTARefusedTotal(), MTARefusedAt: map[string]int64{},
		Held: st.Held, Discarded: st.Discarded,
		Checks: "skipped: a log does not say what DNS answered, so SPF and [checks] were not replayed",
		Rules:  []RuleReport{},
	}
	for s, n := range st.MTARefused {
		if n > 0 {
			rep.MTARefusedAt[smtp.Stage(s).String()] = n
		}
	}
	for _, n := range st.MilterRefused {
		rep.MilterRefused += n
	}
	hours := hoursBetween(from, to)
	for _, rt := range t.rules {
		rr := RuleReport{
			Rule: rt.name, Count: rt.count, Stage: rt.stage.String(),
			Events: t.events[rt.stage], Would: rt.would, Crossed: rt.would.Total(),
			Keys: int64(len(rt.keys)), KeysCapped: rt.capped, Top: []Key{},
		}
		if rr.Events > 0 {
			rr.Share = float64(rr.Crossed) / float64(rr.Events)
		}
		for k, v := range rt.keys {
			rr.Top = append(rr.Top, Key{Key: k, Count: v.count, First: time.Unix(0, v.first).UTC(), Last: time.Unix(0, v.last).UTC()})
		}
		slices.SortFunc(rr.Top, func(a, b Key) int {
			if a.Count != b.Count {
				return int(b.Count - a.Count)
			}
			return strings.Compare(a.Key, b.Key)
		})
		if len(rr.Top) > topN {
			rr.Top = rr.Top[:topN]
		}
		rr.Hourly = make([]Hourly, len(hours))
		for i, h := range hours {
			rr.Hourly[i] = Hourly{Hour: time.Unix(h, 0).UTC(), Count: rt.hours[h]}
		}
		rep.Rules = append(rep.Rules, rr)
	}
	return rep
}

// hoursBetween lists the hours (Unix seconds) from the one of from to the
// one of to.
func hoursBetween(from, to int64) []int64 {
	h := int64(time.Hour)
	first, last := from/h*h/1e9, to/h*h/1e9
	var out []int64
	for x := first; x <= last; x += 3600 {
		out = append(out, x)
	}
	return out
}
