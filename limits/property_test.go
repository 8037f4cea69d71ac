package limits

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"sluice/policy"
)

// TestPropertyCounting holds the engine's bookkeeping — reservations,
// refunds, leaky and strict — to a model over random interleavings of
// sessions: transactions that add recipients, are accepted or aborted,
// refused by the limit or by something else, and sessions that end in the
// middle. The clock stands still, so the store's level is an exact count
// and the model is plain arithmetic:
//
//   - a recipient is admitted when everything counted so far (committed,
//     and reserved by any open transaction) leaves room for one more;
//   - leaky: what is refused, by the limit or by another check, counts
//     nothing; strict: every attempt counts, for good;
//   - count_on = "attempt" commits at once; "accepted" reserves until the
//     end of the message, and gives back on abort or disconnect.
func TestPropertyCounting(t *testing.T) {
	const limit = 5
	sequences, steps := 400, 120
	if testing.Short() {
		sequences = 50
	}
	for _, countOn := range []string{"attempt", "accepted"} {
		for _, strict := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/strict=%v", countOn, strict), func(t *testing.T) {
				for seq := range sequences {
					rng := rand.New(rand.NewPCG(uint64(seq), 3))
					runCountingSequence(t, rng, countOn, strict, limit, steps)
					if t.Failed() {
						t.Fatalf("sequence %d failed", seq)
					}
				}
			})
		}
	}
}

func runCountingSequence(t *testing.T, rng *rand.Rand, countOn string, strict bool, limit, steps int) {
	v := newTestEnv(t, rules(Rule{
		Name: "r", Count: "recipients", Per: "sender", Rate: fmt.Sprintf("%d/1d", limit),
		CountOn: countOn, Strict: strict,
	}), policy.ModeEnforce)
	ctx := context.Background()
	senders := []string{"a@x", "b@x"}
	type sess struct {
		s       *Session
		f       policy.Facts
		pending int // reserved recipients of the open transaction
	}
	var ss [3]*sess
	fresh := func() *sess { return &sess{s: v.e.NewSession()} }
	for i := range ss {
		ss[i] = fresh()
	}
	committed := map[string]int{}
	reserved := func(sender string) int {
		n := 0
		for _, x := range ss {
			if x.f.Sender == sender {
				n += x.pending
			}
		}
		return n
	}
	var trace []string
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf("after %v: "+format, append([]any{trace}, args...)...)
	}
	for range steps {
		i := rng.IntN(len(ss))
		x := ss[i]
		switch op := rng.IntN(10); {
		case op < 2: // MAIL FROM: a new transaction (the old one is over)
			v.e.EndMessage(ctx, x.s, false)
			x.pending = 0
			x.f = policy.Facts{Sender: senders[rng.IntN(len(senders))]}
			trace = append(trace, fmt.Sprintf("s%d MAIL %s", i, x.f.Sender))
		case op < 7: // RCPT TO, refused now and then by another check
			if x.f.Sender == "" {
				continue
			}
			other := rng.IntN(5) == 0
			x.f.Rcpt = "r@y"
			vs, err := v.e.Check(ctx, policy.StageRcpt, &x.f, x.s)
			if err != nil {
				t.Fatal(err)
			}
			refused := vs != nil || other
			v.e.Settle(ctx, x.s, refused)
			trace = append(trace, fmt.Sprintf("s%d RCPT other=%v -> %v", i, other, vs != nil))

			allowed := committed[x.f.Sender]+reserved(x.f.Sender)+1 <= limit
			if (vs == nil) != allowed {
				fail("RCPT: limit crossed %v, model says admitted %v", vs != nil, allowed)
			}
			switch {
			case strict && (!allowed || refused):
				committed[x.f.Sender]++
			case refused:
			case countOn == "accepted":
				x.pending++
			default:
				committed[x.f.Sender]++
			}
		case op < 9: // end of message: accepted, or refused/aborted
			accept := rng.IntN(2) == 0
			v.e.EndMessage(ctx, x.s, accept)
			if accept {
				committed[x.f.Sender] += x.pending
			}
			x.pending = 0
			trace = append(trace, fmt.Sprintf("s%d END accept=%v", i, accept))
		default: // the MTA connection ends
			v.e.Close(ctx, x.s)
			ss[i] = fresh()
			trace = append(trace, fmt.Sprintf("s%d CLOSE", i))
		}
		for _, a := range senders {
			want := int64(committed[a] + reserved(a))
			if got := v.level("r", 0, "sender:"+a); got != want {
				fail("%s counted %d, model %d (committed %d, reserved %d)", a, got, want, committed[a], reserved(a))
				return
			}
		}
	}
}
