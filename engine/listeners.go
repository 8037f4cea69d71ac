package engine

import (
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"sluice/limits"
	"sluice/smtp"
)

// listenerSessions is how many sessions the engine watches before it
// says which listener names the rules wait for in vain.
const listenerSessions = 100

// maxListeners bounds the distinct names remembered: a handful of
// services is normal, and the names come from the MTA, not the client.
const maxListeners = 16

// listenerWatch notices a rule that waits for a listener name the MTA
// never sends. Postfix's {daemon_name} is $myhostname unless master.cf
// names the service (-o milter_macro_daemon_name=...), so a rule with
// match.listener = ["smtpd"] silently never applies on a default setup.
// Over the first sessions of an engine it collects the names that come;
// then it warns, once, of each name a rule matches that none of them had,
// with the names that did come, and of rules counted per listener when no
// session had a name at all.
type listenerWatch struct {
	named map[string][]string // listener name -> the rules that match it
	keyed []string            // rules counted per listener
	log   *zap.Logger

	done atomic.Bool
	mu   sync.Mutex
	n    int
	seen map[string]int // name -> sessions, "" for none
}

func newListenerWatch(lim *limits.Engine, log *zap.Logger) *listenerWatch {
	named, keyed := lim.Listeners()
	if len(named) == 0 && len(keyed) == 0 {
		return nil
	}
	return &listenerWatch{named: named, keyed: keyed, log: log, seen: make(map[string]int)}
}

// see counts one session's listener name. Past the watch it costs one
// atomic load.
func (w *listenerWatch) see(name string) {
	if w == nil || w.done.Load() {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done.Load() {
		return
	}
	if _, ok := w.seen[name]; ok || len(w.seen) < maxListeners {
		w.seen[name]++
	}
	if w.n++; w.n < listenerSessions && !w.allSeen() {
		return
	}
	w.done.Store(true)
	w.report()
}

// allSeen reports whether every name the rules want has come, and a name
// at all when rules count per listener: nothing is left to warn of.
func (w *listenerWatch) allSeen() bool {
	for name := range w.named {
		if w.seen[name] == 0 {
			return false
		}
	}
	return len(w.keyed) == 0 || len(w.seen) > 1 || w.seen[""] == 0
}

func (w *listenerWatch) report() {
	var seen []string
	for name := range w.seen {
		if name != "" {
			seen = append(seen, smtp.Printable(name, 100))
		}
	}
	sort.Strings(seen)
	const hint = "Postfix sends {daemon_name} = $myhostname unless master.cf names the service (-o milter_macro_daemon_name=NAME); Sendmail sends the Name= of DAEMON_OPTIONS"
	var missing []string
	for name := range w.named {
		if w.seen[name] == 0 {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	for _, name := range missing {
		w.log.Warn("match.listener names a listener no session came on: the rules that match it have not applied",
			zap.String("listener", name), zap.Strings("rules", w.named[name]), zap.Strings("seen", seen),
			zap.Int("sessions", w.n), zap.String("hint", hint))
	}
	if len(w.keyed) > 0 && len(seen) == 0 {
		w.log.Warn("rules count per listener, but no session had a listener name ({daemon_name}): they have counted nothing",
			zap.Strings("rules", slices.Clone(w.keyed)), zap.Int("sessions", w.n), zap.String("hint", hint))
	}
}
