package watcher

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
)

// A logger whose attributes wait for a line writes the same lines as one
// that formats them at With.
func TestLazyAttributesWriteWhatWithWould(t *testing.T) {
	noTime := func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	lines := func(log *slog.Logger) {
		log = log.With("component", "watcher")
		ev := log.With("collection", "inbound", "key", "o1")
		ev.Debug("not written")
		ev.Info("decided", "reason", "paid")
		send := ev.With("attempt", 2)
		send.Warn("send failed", "status", 503)
		send.WithGroup("mail").With("try", 1).Info("in a group", "x", "y")
		log.Info("no event")
	}
	var direct, lazy bytes.Buffer
	opts := &slog.HandlerOptions{ReplaceAttr: noTime}
	lines(slog.New(slog.NewTextHandler(&direct, opts)))
	lines(slog.New(lazyAttrs{h: slog.NewTextHandler(&lazy, opts)}))
	assert.Equal(t, direct.String(), lazy.String())
	assert.Contains(t, lazy.String(), `level=WARN msg="send failed" component=watcher collection=inbound key=o1 attempt=2 status=503`)
	assert.NotContains(t, lazy.String(), "not written")
}
