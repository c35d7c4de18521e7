package bench

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestAfterWritesCountsOnlyDeliveriesAfterTheLastWrite(t *testing.T) {
	const ms = int64(1e6)
	for _, tc := range []struct {
		name          string
		delivered     []int64
		lastWrite     int64
		wantN         int
		wantPerSecond float64
	}{
		{"none after", []int64{1 * ms, 2 * ms}, 5 * ms, 0, 0},
		{"one at the write itself is not after it", []int64{5 * ms, 15 * ms}, 5 * ms, 1, 100},
		// Three deliveries in the 30ms after the last write: 100 a second.
		{"some after", []int64{1 * ms, 2 * ms, 20 * ms, 30 * ms, 40 * ms}, 10 * ms, 3, 100},
		{"all after", []int64{1010 * ms, 1020 * ms}, 1000 * ms, 2, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, perSecond := afterWrites(tc.delivered, tc.lastWrite)
			assert.Equal(t, tc.wantN, n)
			assert.InDelta(t, tc.wantPerSecond, perSecond, 1e-9)
		})
	}
}
