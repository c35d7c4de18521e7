package watcher

import (
	"log/slog"

	"github.com/ordermail/ordermail/store"
	"go.uber.org/fx"
)

// Module provides the *Watcher. Its owner starts and stops it: the app
// starts it only once this process may consume the feed.
var Module = fx.Module("watcher",
	fx.Provide(func(cfg Config, st store.Store, mail Sender, log *slog.Logger) (*Watcher, error) {
		return New(cfg, st, mail, log, nil)
	}),
)
