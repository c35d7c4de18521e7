package console

import (
	"log/slog"

	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/metrics"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/timer"
	"github.com/ordermail/ordermail/watcher"
	"go.uber.org/fx"
)

// params are what the console is built of; the metrics server, when the
// app has one, serves its health checks.
type params struct {
	fx.In
	Config      Config
	Store       store.Store
	Watcher     *watcher.Watcher
	Mail        *mailer.Client
	Timer       *timer.Timer
	TimerConfig timer.Config
	Metrics     *metrics.Server `optional:"true"`
	Log         *slog.Logger
}

// Module provides the *Console and runs it with the app.
var Module = fx.Module("console",
	fx.Provide(func(p params) (*Console, error) {
		d := Deps{Store: p.Store, Watcher: p.Watcher, Mail: p.Mail, Timer: p.Timer, TimerConfig: p.TimerConfig}
		if p.Metrics != nil {
			d.Health = p.Metrics
		}
		return New(p.Config, d, p.Log, nil)
	}),
	fx.Invoke(func(lc fx.Lifecycle, c *Console) {
		lc.Append(fx.Hook{OnStart: c.Start, OnStop: c.Stop})
	}),
)
