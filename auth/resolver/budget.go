package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
)

// ErrBudget is the error (through errors.Is) of a lookup made after the
// budget of its context was used up. It is permanent: the same work would
// use it up again.
var ErrBudget = errors.New("DNS answer budget used up")

// budget is what a context's lookups may still read, in bytes of answers
// as answer.cost counts them (cached answers included: reading one is
// work too). Lookups of one check may run at once, hence the atomic.
type budget struct {
	size int64
	left atomic.Int64
}

type budgetKey struct{}

// WithBudget returns a context whose lookups may read n bytes of answers
// in all, counted as the cache counts them; a lookup that would go past it
// fails with ErrBudget, and so does every lookup after it. SPF's lookup
// limits (RFC 7208 §4.6.4) bound how many queries a sender's zone may
// cause; a budget bounds how much they may bring back.
func WithBudget(ctx context.Context, n int) context.Context {
	b := &budget{size: int64(n)}
	b.left.Store(int64(n))
	return context.WithValue(ctx, budgetKey{}, b)
}

func budgetOf(ctx context.Context) *budget {
	b, _ := ctx.Value(budgetKey{}).(*budget)
	return b
}

// take charges n bytes, and reports whether they were within the budget;
// a nil budget has no bound.
func (b *budget) take(n int) bool {
	return b == nil || b.left.Add(-int64(n)) >= 0
}

// spent reports whether nothing is left.
func (b *budget) spent() bool { return b != nil && b.left.Load() <= 0 }

func (b *budget) error(name string) error {
	return &net.DNSError{Err: fmt.Sprintf("%v: the answers exceed the %d bytes one check may read", ErrBudget, b.size),
		Name: name, UnwrapErr: ErrBudget}
}
