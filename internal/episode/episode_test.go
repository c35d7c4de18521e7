package episode

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestAnEpisodeIsSaidOnceAndItsEnd(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1000, 0)
	e := New(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), "streams", func() time.Time { return now })
	ctx := context.Background()
	lines := func() []string {
		defer buf.Reset()
		return strings.Split(strings.TrimSpace(buf.String()), "\n")
	}

	e.Fail(ctx, 1, "stream failed", "vb", 1)
	e.Fail(ctx, 2, "stream failed", "vb", 2)
	e.Fail(ctx, 1, "stream failed", "vb", 1)
	l := lines()
	assert.Len(t, l, 3)
	assert.Contains(t, l[0], `level=WARN msg="stream failed (more streams failing are logged at debug level until none is)" vb=1`)
	assert.Contains(t, l[1], `level=DEBUG msg="stream failed" vb=2`)
	assert.Equal(t, 2, e.Failing())

	now = now.Add(RemindEvery - time.Second)
	e.Fail(ctx, 2, "stream failed", "vb", 2)
	assert.Len(t, lines(), 1, "no reminder before RemindEvery")
	now = now.Add(time.Second)
	e.Fail(ctx, 2, "stream failed", "vb", 2)
	l = lines()
	assert.Len(t, l, 2)
	assert.Contains(t, l[1], `level=WARN msg="streams still failing" failing=2 failures=5 for=5m0s last="stream failed" vb=2`,
		"with the failure just now: another begun meanwhile shows")

	e.Mended(ctx, 1)
	e.Mended(ctx, 3) // never failed
	assert.Empty(t, strings.TrimSpace(buf.String()), "one still fails")
	e.Mended(ctx, 2)
	l = lines()
	assert.Len(t, l, 1)
	assert.Contains(t, l[0], `level=INFO msg="streams work again" failures=5 for=5m0s`)

	e.Fail(ctx, 7, "stream failed", "vb", 7)
	assert.Contains(t, lines()[0], "level=WARN", "a new episode is said again")
	e.Clear(ctx)
	assert.Contains(t, lines()[0], `level=INFO msg="streams work again" failures=1 for=0s`)
	assert.Zero(t, e.Failing())
	e.Clear(ctx)
	assert.Empty(t, strings.TrimSpace(buf.String()), "no episode: nothing to end")
}
