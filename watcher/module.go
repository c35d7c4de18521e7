package watcher

import (
	"log/slog"

	"github.com/ordermail/ordermail/store"
	"go.uber.org/fx"
)

// Module provides the *Watcher and runs it with the app.
var Module = fx.Module("watcher",
	fx.Provide(func(cfg Config, st store.Store, mail Sender, log *slog.Logger) (*Watcher, error) {
		return New(cfg, st, mail, log, nil)
	}),
	fx.Invoke(func(lc fx.Lifecycle, w *Watcher) {
		lc.Append(fx.Hook{OnStart: w.Start, OnStop: w.Stop})
	}),
)
