package limits

import (
	"fmt"
	"time"

	"sluice/conf"
	"sluice/policy"
)

// A rule with restrict_for puts a key that crosses it in a penalty box:
// for a while ("24h"), until the next midnight ("today", in
// restrict_timezone) or until an admin releases it ("until_released").
// Every later event of the key at the rule's stage gets restrict_action
// (hold by default: nothing is lost, and the admin can look) even after
// the window has room again. The restriction lives in the store, beside
// the counters: every host sharing it sees it, and the memory store keeps
// it in its snapshot. A release gives the key a grace until the end of
// the current window (and of the day, for "today"), as Microsoft 365
// does: it is not restricted again at once.

// restriction is a rule's compiled restrict_* keys.
type restriction struct {
	text     string // restrict_for as written
	forever  bool   // until released
	today    bool   // until the next midnight in loc
	d        time.Duration
	loc      *time.Location
	action   policy.Action
	reply    *policy.Reply
	on       bool // set by New: the rule is enforced, so crossings restrict
	blocking bool // set by New: a restricted event is refused
}

func (c *rule) compileRestrict(r *Rule) error {
	if r.RestrictFor == "" {
		for _, k := range []struct {
			key   string
			given bool
		}{{"restrict_action", r.RestrictAction != nil}, {"restrict_reply", r.RestrictReply != nil}, {"restrict_timezone", r.RestrictTimezone != ""}} {
			if k.given {
				return conf.Errorf(k.key, "only with restrict_for (how long a key that crosses the rule stays restricted)")
			}
		}
		return nil
	}
	switch {
	case c.count == countConcurrent:
		return conf.Errorf("restrict_for", "a concurrent limit is crossed only while connections are open: it restricts nothing")
	case len(c.keyer.dims) == 0:
		return conf.Errorf("restrict_for", "a rule without a key (per) has nothing to restrict")
	}
	x := &restriction{text: r.RestrictFor, action: policy.ActionHold, loc: time.UTC}
	switch r.RestrictFor {
	case "until_released":
		x.forever = true
	case "today":
		x.today = true
	default:
		d, err := conf.ParseDuration(r.RestrictFor)
		if err != nil || d <= 0 {
			return conf.Errorf("restrict_for", "%q: want a duration (\"24h\", \"2d\"), \"today\" or \"until_released\"", r.RestrictFor)
		}
		x.d = d
	}
	if r.RestrictTimezone != "" {
		if !x.today {
			return conf.Errorf("restrict_timezone", "only with restrict_for = \"today\" (the midnight it ends at)")
		}
		loc, err := time.LoadLocation(r.RestrictTimezone)
		if err != nil {
			return conf.Errorf("restrict_timezone", "%q: not a time zone this system knows (e.g. \"UTC\", \"Europe/Paris\")", r.RestrictTimezone)
		}
		x.loc = loc
	}
	if a := r.RestrictAction; a != nil {
		switch *a {
		case policy.ActionNone:
			return conf.Errorf("restrict_action", "\"none\" would restrict nothing; leave restrict_for out")
		case policy.ActionDelay:
			return conf.Errorf("restrict_action", "delay needs a pause of its own; use hold, tag, tempfail or reject")
		}
		x.action = *a
	}
	if r.RestrictReply != nil {
		if err := r.RestrictReply.Fits(x.action); err != nil {
			return conf.Errorf("restrict_reply", "%v", err)
		}
		x.reply = r.RestrictReply
	}
	c.restrict = x
	return nil
}

// until is when a restriction set at now ends, Unix ns; 0 until released.
func (x *restriction) until(now time.Time) int64 {
	switch {
	case x.forever:
		return 0
	case x.today:
		return nextMidnight(now, x.loc).UnixNano()
	}
	return now.Add(x.d).UnixNano()
}

func nextMidnight(now time.Time, loc *time.Location) time.Time {
	t := now.In(loc)
	return time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc)
}

// grace is when a release at now lets the key be restricted again: the
// end of the rule's longest window, and of the day for "today".
func (c *rule) grace(now time.Time) time.Time {
	var longest time.Duration
	for _, w := range c.windows {
		longest = max(longest, w.period)
	}
	g := now.Add(longest)
	if c.restrict != nil && c.restrict.today {
		g = maxTime(g, nextMidnight(now, c.restrict.loc))
	}
	return g
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Default replies of a restricted key (Microsoft 365 answers "550 5.1.8
// Access denied, bad outbound sender").
const restrictedText = "Access denied, bad outbound sender: {key} is restricted ({rule})"

// restrictedVerdict is the verdict for an event of a restricted key.
func (c *rule) restrictedVerdict(key string, retry time.Duration, count int64) policy.Verdict {
	x := c.restrict
	detail := "restricted until released"
	if retry > 0 {
		detail = "restricted for " + retry.Round(time.Second).String()
	}
	return policy.Verdict{
		Source: c.name, Action: x.action, Mode: c.mode, Reply: x.reply, Text: restrictedText,
		Key: key, Limit: c.limit, RetryAfter: retry, Detail: fmt.Sprintf("%s count=%d", detail, count),
	}
}

// EventKind is what happened to a key that an alert may be about.
type EventKind uint8

const (
	// EventRestricted: the key crossed the rule and is restricted now.
	EventRestricted EventKind = iota + 1
	// EventWouldRestrict: the key crossed a rule with restrict_for that
	// is not enforced (tag or dry-run mode): nothing was restricted.
	EventWouldRestrict
)

// Event is something a check did beyond its verdicts, for alerts.
type Event struct {
	Kind   EventKind
	Action policy.Action // restrict_action
	Mode   policy.Mode   // the rule's own mode
	Rule   string
	Key    string    // dimension key
	Limit  string    // as in force for the key
	Count  int64     // the count that crossed
	Until  time.Time // end of the restriction; zero: until released
}
