package timer

import (
	"log/slog"

	"github.com/ordermail/ordermail/store"
	"go.uber.org/fx"
)

// Module provides the *Timer and runs it with the app.
var Module = fx.Module("timer",
	fx.Provide(func(cfg Config, st store.Store, log *slog.Logger) (*Timer, error) {
		return New(cfg, st, log, nil)
	}),
	fx.Invoke(func(lc fx.Lifecycle, t *Timer) {
		lc.Append(fx.StartStopHook(t.Start, t.Stop))
	}),
)
