package engine

import (
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"sluice/alert"
	"sluice/limits"
	"sluice/policy"
	"sluice/smtp"
)

// logEvent logs what limits did beyond a verdict: a key restricted now,
// or one that would be if its rule were enforced.
func (s *Session) logEvent(st smtp.Stage, ev limits.Event) {
	msg := "restricted"
	if ev.Kind == limits.EventWouldRestrict {
		msg = "would restrict"
	}
	until := "released"
	if !ev.Until.IsZero() {
		until = ev.Until.UTC().Format(time.RFC3339)
	}
	s.e.log.Warn(msg, zap.String("rule", ev.Rule), zap.String("key", smtp.Printable(ev.Key, maxLogValue)),
		zap.String("until", until), zap.Int64("count", ev.Count), zap.String("limit", ev.Limit),
		zap.String("action", ev.Action.String()), zap.Stringer("stage", st),
		zap.String("client_ip", ipString(s.f.ClientIP)), zap.String("sender", smtp.Printable(s.f.Sender, maxLogValue)),
		zap.String("sasl_user", smtp.Printable(s.f.SASLUser, maxLogValue)))
}

// alert tells the alert targets what limits restricted, and which rules
// asked to refuse or hold, at this stage, in whatever mode they were
// applied (the mode is in the alert: dry-run first is the way to try a
// policy, alerts included).
func (s *Session) alert(d *policy.Decision) {
	now := s.e.now()
	for _, ev := range s.lim.Events() {
		a := s.alertBase(now)
		a.Event, a.Rule, a.Key, a.Limit = alert.KindRestrict, ev.Rule, ev.Key, ev.Limit
		a.Action = ev.Action.String()
		a.Mode = s.e.pol.Effective(ev.Mode).String()
		a.Detail = "count=" + strconv.FormatInt(ev.Count, 10)
		a.Restricted, a.Until = ev.Kind == limits.EventRestricted, ev.Until
		if a.Restricted {
			a.Release = alert.ReleaseCommand(ev.Rule, ev.Key)
		}
		s.e.alerts.Notify(a)
	}
	for _, o := range d.Outcomes {
		var kind string
		switch {
		case !s.e.lim.HasRule(o.Source):
			continue
		case o.Verdict.Action.Refuses():
			kind = alert.KindRefuse
		case o.Verdict.Action == smtp.ActionHold:
			kind = alert.KindHold
		default:
			continue
		}
		a := s.alertBase(now)
		a.Event, a.Rule, a.Key, a.Limit, a.Detail = kind, o.Source, o.Key, o.Limit, o.Detail
		a.Action, a.Mode = o.Verdict.Action.String(), o.Mode.String()
		if strings.HasPrefix(o.Detail, "restricted") {
			a.Restricted = true
			if o.RetryAfter > 0 {
				// The store and the engine read their clocks apart.
				a.Until = now.Add(o.RetryAfter).Round(time.Second)
			}
			a.Release = alert.ReleaseCommand(o.Source, o.Key)
		}
		s.e.alerts.Notify(a)
	}
}

func (s *Session) alertBase(now time.Time) alert.Event {
	return alert.Event{Time: now, ClientIP: ipString(s.f.ClientIP), Helo: s.f.Helo, Sender: s.f.Sender,
		SASLUser: s.f.SASLUser, QueueID: s.f.QueueID, RcptDomains: slices.Clone(s.rcptDomains)}
}
