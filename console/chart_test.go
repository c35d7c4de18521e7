package console

import (
	"strings"
	"testing"
	"time"

	"github.com/ordermail/ordermail/watcher"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSamplerAndChart(t *testing.T) {
	t.Parallel()
	var cur watcher.Stats
	s := newSampler(func() watcher.Stats { return cur })
	start := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	// Two hours of a minute each: 10 sent and 1 failed a minute, one
	// dead letter in the last minute.
	for m := range 121 {
		cur.Sent, cur.SendFailures = int64(10*m), int64(m)
		if m == 120 {
			cur.DeadLettered = 1
		}
		s.take(start.Add(time.Duration(m) * time.Minute))
	}
	now := start.Add(120*time.Minute + 30*time.Second)
	cur.Sent += 5 // the running half minute

	ivs := s.intervals(now)
	require.Len(t, ivs, 61, "60 whole minutes and the running one")
	assert.LessOrEqual(t, len(s.ring), 62, "older samples are forgotten")
	last := ivs[len(ivs)-1]
	assert.Equal(t, int64(5), last.sent)
	assert.Equal(t, now, last.to)

	c := chart(ivs, now)
	// The minutes 13:01 to 14:00, the last running: 59 whole ones and 30s.
	assert.Equal(t, int64(59*10+5), c.Sent)
	assert.Equal(t, int64(59), c.Failed)
	assert.Equal(t, int64(1), c.DeadLettered)
	assert.True(t, c.Since.IsZero(), "a whole hour of samples")
	svg := string(c.SVG)
	assert.True(t, strings.HasPrefix(svg, "<svg"))
	assert.Equal(t, 59, strings.Count(svg, `class="failed"`))
	assert.Equal(t, 60, strings.Count(svg, `class="sent"`))
	assert.Equal(t, 60, strings.Count(svg, `<title>`))
	assert.Contains(t, svg, "<title>13:59 UTC: 10 sent, 1 failed, 1 dead-lettered</title>")
	assert.Contains(t, svg, "<title>14:00 UTC (so far): 5 sent, 0 failed</title>")
	assert.Contains(t, svg, ">13:01</text>")
	assert.Contains(t, svg, ">20</text>", "the axis tops at a round number")
}

func TestChartOfANewProcess(t *testing.T) {
	t.Parallel()
	s := newSampler(func() watcher.Stats { return watcher.Stats{} })
	start := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	s.take(start)
	s.take(start.Add(50 * time.Second))
	c := chart(s.intervals(start.Add(70*time.Second)), start.Add(70*time.Second))
	assert.Equal(t, start, c.Since)
	assert.Zero(t, c.Sent)
	assert.NotContains(t, string(c.SVG), `class="sent"`)
}

func TestNiceCeil(t *testing.T) {
	t.Parallel()
	for give, want := range map[int64]int64{0: 10, 7: 10, 11: 20, 20: 20, 21: 50, 51: 100, 999: 1000, 1001: 2000} {
		assert.Equal(t, want, niceCeil(give), "niceCeil(%d)", give)
	}
}
