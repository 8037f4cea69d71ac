package policy

import (
	"fmt"

	"sluice/conf"
)

// ResultAction is what a check does with one of its results: the action
// the config maps it to, the check's mode, and the reply a refusal sends
// (the config's, or one made from the check's default text).
type ResultAction struct {
	Action Action
	Mode   Mode
	Reply  *Reply // nil unless Action refuses
	Text   string // the default reply text, a template
}

// NewResultAction checks that the action is one of allowed and that a
// custom reply fits it, and makes the default reply for a refusal: code
// 550 or 451 with the enhanced status enh ("7.1" becomes 5.7.1 or 4.7.1)
// and text.
func NewResultAction(a Action, mode Mode, custom *Reply, enh, text string, allowed ...Action) (ResultAction, error) {
	ok := false
	for _, x := range allowed {
		ok = ok || x == a
	}
	if !ok {
		return ResultAction{}, fmt.Errorf("action %s is not for this check (want one of %v)", a, allowed)
	}
	r := ResultAction{Action: a, Mode: mode, Reply: custom, Text: text}
	if !a.Refuses() {
		r.Reply = nil
		return r, nil
	}
	if custom != nil {
		return r, custom.Fits(a)
	}
	class := "550 5."
	if a == ActionTempfail {
		class = "451 4."
	}
	reply, err := ParseReply(class + enh + " " + text)
	if err != nil {
		return ResultAction{}, err
	}
	r.Reply = reply
	return r, nil
}

// Verdict is the verdict of a result mapped to r, or nil when r asks for
// nothing. The check writes its own header (Authentication-Results), so
// the verdict makes no tag header.
func (r *ResultAction) Verdict(source, key, detail string) *Verdict {
	if r.Action == ActionNone {
		return nil
	}
	return &Verdict{Source: source, Action: r.Action, Mode: r.Mode, Reply: r.Reply, Text: r.Text,
		Key: key, Detail: detail, OwnHeader: true}
}

// ResultConfig is one result of a check as its table writes it: the key
// ("fail"), its action and optional reply, and the check's defaults for
// the reply (enhanced status code and text).
type ResultConfig struct {
	Key       string
	Action    *Action
	Reply     *Reply
	Enh, Text string
}

// ResultActions compiles a check's results, each to one of allowed;
// errors name the key ("fail", "reply.fail").
func ResultActions(mode Mode, allowed []Action, rs ...ResultConfig) (map[string]ResultAction, error) {
	out := make(map[string]ResultAction, len(rs))
	for _, r := range rs {
		if r.Action == nil {
			return nil, conf.Errorf(r.Key, "no action")
		}
		ra, err := NewResultAction(*r.Action, mode, r.Reply, r.Enh, r.Text, allowed...)
		if err != nil {
			if r.Reply != nil && r.Action.Refuses() {
				return nil, conf.In(err, "reply", r.Key)
			}
			return nil, conf.Errorf(r.Key, "%v", err)
		}
		out[r.Key] = ra
	}
	return out, nil
}
