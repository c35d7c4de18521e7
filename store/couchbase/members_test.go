package couchbase

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
)

func names(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("host-%d/%d/x%d", i, 1000+i, 7*i))
	}
	return out
}

// Issue 11: the assignment of 1024 vBuckets is balanced (loads differ by
// at most one) and moves few vBuckets when a member joins or goes: within
// 30% of the least possible (the vBuckets the newcomer takes, or those the
// leaver had).
func TestAssignmentIsBalancedAndMovesLittle(t *testing.T) {
	const n = 1024
	for m := 1; m <= 8; m++ {
		members := names(m)
		a := assignment(members, n)
		load := map[string]int{}
		for _, o := range a {
			load[o]++
		}
		lo, hi := n, 0
		for _, name := range members {
			lo, hi = min(lo, load[name]), max(hi, load[name])
		}
		assert.LessOrEqual(t, hi-lo, 1, "%d members: loads %v", m, load)
		assert.Equal(t, a, assignment(members, n), "the same list, the same answer")

		// One more member joins.
		joined := assignment(names(m+1), n)
		moved := 0
		for vb := range a {
			if a[vb] != joined[vb] {
				moved++
			}
		}
		least := n / (m + 1)
		t.Logf("%d -> %d members: %d vBuckets move (least possible %d)", m, m+1, moved, least)
		assert.LessOrEqual(t, moved, least*13/10, "%d -> %d members", m, m+1)

		// The first one goes.
		if m > 1 {
			gone := assignment(members[1:], n)
			moved := 0
			for vb := range a {
				if a[vb] != gone[vb] {
					moved++
				}
			}
			t.Logf("%d -> %d members (one goes): %d vBuckets move (least possible %d)", m, m-1, moved, load[members[0]])
			assert.LessOrEqual(t, moved, load[members[0]]*13/10, "%d -> %d members", m, m-1)
		}
	}
}
