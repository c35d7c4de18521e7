package console

import (
	"fmt"
	"html/template"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ordermail/ordermail/watcher"
)

// window is how far back the chart looks.
const window = time.Hour

// sample is the watcher's counters at one time.
type sample struct {
	at time.Time
	s  watcher.Stats
}

// sampler keeps a sample of the watcher's counters a minute, the last
// hour's, in memory: the chart's only source, at no cost to the store.
type sampler struct {
	stats func() watcher.Stats
	mu    sync.Mutex
	ring  []sample // oldest first
}

func newSampler(stats func() watcher.Stats) *sampler { return &sampler{stats: stats} }

// take records the counters at now and forgets samples older than the
// window, but for one: the start of the window's first interval.
func (s *sampler) take(now time.Time) {
	st := s.stats()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ring = append(s.ring, sample{at: now, s: st})
	cut := 0
	for cut+1 < len(s.ring) && now.Sub(s.ring[cut+1].at) >= window {
		cut++
	}
	s.ring = append(s.ring[:0], s.ring[cut:]...)
}

// interval is what happened between two samples.
type interval struct {
	from, to                         time.Time
	sent, failed, held, deadLettered int64
}

// intervals are the last hour's, oldest first, the last one running from
// the latest sample to now.
func (s *sampler) intervals(now time.Time) []interval {
	cur := sample{at: now, s: s.stats()}
	s.mu.Lock()
	ring := append([]sample(nil), s.ring...)
	s.mu.Unlock()
	ring = append(ring, cur)
	var out []interval
	for i := 1; i < len(ring); i++ {
		a, b := ring[i-1], ring[i]
		if !b.at.After(a.at) || now.Sub(b.at) >= window {
			continue
		}
		out = append(out, interval{from: a.at, to: b.at,
			sent:         max(b.s.Sent-a.s.Sent, 0),
			failed:       max(b.s.SendFailures-a.s.SendFailures, 0),
			held:         max(b.s.Held-a.s.Held, 0),
			deadLettered: max(b.s.DeadLettered-a.s.DeadLettered, 0),
		})
	}
	return out
}

// Chart is the last hour of sends, drawn.
type Chart struct {
	SVG                              template.HTML
	Sent, Failed, Held, DeadLettered int64
	Since                            time.Time // the first sample's time, when less than an hour ago
}

// Geometry of the chart, in SVG units.
const (
	chartW, chartH             = 960, 210
	plotL, plotR, plotT, plotB = 44, 944, 10, 180
	slots                      = 60 // minutes, the running one last
)

// chart draws the intervals ending at now as one stacked bar (sent, failed,
// held back) a minute of the clock, the running minute last, each with a
// <title> for a tooltip: no script is needed. An interval counts in the
// minute it starts in: the sampler samples on the minute.
func chart(ivs []interval, now time.Time) Chart {
	c := Chart{}
	cur := now.Truncate(time.Minute)
	first := cur.Add(-(slots - 1) * time.Minute)
	var bins [slots]interval
	for i := range bins {
		bins[i].from = first.Add(time.Duration(i) * time.Minute)
	}
	for _, iv := range ivs {
		i := int(iv.from.Truncate(time.Minute).Sub(first) / time.Minute)
		if i < 0 || i >= slots {
			continue
		}
		b := &bins[i]
		b.sent += iv.sent
		b.failed += iv.failed
		b.held += iv.held
		b.deadLettered += iv.deadLettered
		if c.Since.IsZero() || iv.from.Before(c.Since) {
			c.Since = iv.from
		}
	}
	if len(ivs) > 0 && ivs[0].from.Before(first) {
		c.Since = time.Time{} // a whole hour of samples
	}
	var top int64
	for _, b := range bins {
		c.Sent += b.sent
		c.Failed += b.failed
		c.Held += b.held
		c.DeadLettered += b.deadLettered
		top = max(top, b.sent+b.failed+b.held)
	}
	top = niceCeil(top)
	slotW := float64(plotR-plotL) / slots
	y := func(v int64) float64 { return plotB - float64(plotB-plotT)*float64(v)/float64(top) }
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %d %d" role="img" aria-label="sends a minute over the last hour: %d sent, %d failed, %d held back">`,
		chartW, chartH, c.Sent, c.Failed, c.Held)
	for _, v := range []int64{0, top / 2, top} {
		fmt.Fprintf(&b, `<line class="grid" x1="%d" x2="%d" y1="%s" y2="%s"/>`, plotL, plotR, f(y(v)), f(y(v)))
		fmt.Fprintf(&b, `<text class="axis" x="%d" y="%s" text-anchor="end">%d</text>`, plotL-6, f(y(v)+4), v)
	}
	for _, i := range []int{0, 15, 30, 45, slots - 1} {
		anchor := "middle"
		if i == slots-1 {
			anchor = "end"
		}
		fmt.Fprintf(&b, `<text class="axis" x="%s" y="%d" text-anchor="%s">%s</text>`,
			f(plotL+slotW*(float64(i)+0.5)), chartH-8, anchor, bins[i].from.UTC().Format("15:04"))
	}
	for i, bin := range bins {
		x0, w := plotL+slotW*float64(i)+1, slotW-2
		tip := fmt.Sprintf("%s UTC: %d sent, %d failed", bin.from.UTC().Format("15:04"), bin.sent, bin.failed)
		if i == slots-1 {
			tip = fmt.Sprintf("%s UTC (so far): %d sent, %d failed", bin.from.UTC().Format("15:04"), bin.sent, bin.failed)
		}
		if bin.held > 0 {
			tip += fmt.Sprintf(", %d held back", bin.held)
		}
		if bin.deadLettered > 0 {
			tip += fmt.Sprintf(", %d dead-lettered", bin.deadLettered)
		}
		fmt.Fprintf(&b, `<g><title>%s</title>`, template.HTMLEscapeString(tip))
		fmt.Fprintf(&b, `<rect class="hit" x="%s" y="%d" width="%s" height="%d"/>`, f(x0), plotT, f(w), plotB-plotT)
		base := int64(0)
		for _, part := range []struct {
			class string
			n     int64
		}{{"sent", bin.sent}, {"failed", bin.failed}, {"held", bin.held}} {
			if part.n > 0 {
				fmt.Fprintf(&b, `<rect class="%s" x="%s" y="%s" width="%s" height="%s"/>`, part.class, f(x0), f(y(base+part.n)), f(w), f(y(base)-y(base+part.n)))
				base += part.n
			}
		}
		b.WriteString(`</g>`)
	}
	b.WriteString(`</svg>`)
	c.SVG = template.HTML(b.String()) // built here from numbers and escaped text only
	return c
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten (at least 10), so
// that the axis reads well.
func niceCeil(v int64) int64 {
	for p := int64(10); ; p *= 10 {
		for _, m := range []int64{1, 2, 5} {
			if v <= m*p {
				return m * p
			}
		}
	}
}
