package timer

import (
	"log/slog"

	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/store"
	"go.uber.org/fx"
)

// Module provides the *Timer, its sweeps gated by the email service's
// circuit breaker (SetGate), and runs it with the app.
var Module = fx.Module("timer",
	fx.Provide(func(cfg Config, st store.Store, log *slog.Logger, m *mailer.Client) (*Timer, error) {
		t, err := New(cfg, st, log, nil)
		if err != nil {
			return nil, err
		}
		t.SetGate(m)
		return t, nil
	}),
	fx.Invoke(func(lc fx.Lifecycle, t *Timer) {
		lc.Append(fx.StartStopHook(t.Start, t.Stop))
	}),
)
