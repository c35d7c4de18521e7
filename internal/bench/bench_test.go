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

func TestKeysParseBackAndScatter(t *testing.T) {
	for _, scattered := range []bool{false, true} {
		b := &bench{cfg: Config{Seed: 7, Scatter: scattered}, keyPrefix: "bench-x-"}
		keys := make([]string, 1000)
		for i := range keys {
			keys[i] = b.key('d', i)
			kind, n, ok := b.parseKey("confirmation:" + keys[i] + "@12")
			if !ok || kind != 'd' || n != i {
				t.Fatalf("scatter %v: %s parsed as %c %d %v", scattered, keys[i], kind, n, ok)
			}
		}
		// Keys in write order are in key order, or, scattered, about half
		// of the neighbours are out of it.
		inOrder := 0
		for i := 1; i < len(keys); i++ {
			if keys[i-1] < keys[i] {
				inOrder++
			}
		}
		if !scattered && inOrder != len(keys)-1 {
			t.Errorf("numbered keys: %d of %d neighbours in order", inOrder, len(keys)-1)
		}
		if scattered && (inOrder < 400 || inOrder > 600) {
			t.Errorf("scattered keys: %d of %d neighbours in order, want about half", inOrder, len(keys)-1)
		}
	}
}
