package app

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/timer"
	"github.com/ordermail/ordermail/watcher"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
)

// Config is the whole service's configuration.
type Config struct {
	Store   string // store URL: file:PATH
	Mail    mailer.Config
	Watcher watcher.Config
	Timer   timer.Config
}

// DefaultStore is the embedded store in ./data.
const DefaultStore = "file:" + embedded.DefaultPath

// Validate checks every setting, naming the first one that is wrong.
func (c Config) Validate() error {
	if _, err := parseStoreURL(c.Store); err != nil {
		return err
	}
	for _, v := range []interface{ Validate() error }{c.Mail, c.Watcher, c.Timer} {
		if err := v.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// New builds the service; extra options let the demo and tests reach into it
// (fx.Populate). Start it with Start and stop it with Stop.
func New(cfg Config, log *slog.Logger, extra ...fx.Option) *fx.App {
	fxlog := &fxevent.SlogLogger{Logger: log.With("component", "fx")}
	fxlog.UseLogLevel(slog.LevelDebug)
	mailTimeout := cfg.Mail.Timeout
	if mailTimeout == 0 {
		mailTimeout = 10 * time.Second
	}
	opts := []fx.Option{
		fx.WithLogger(func() fxevent.Logger { return fxlog }),
		// In-flight sends are bounded by the mail timeout; give them that
		// much to finish before they are abandoned for replay.
		fx.StopTimeout(mailTimeout + 5*time.Second),
		fx.Supply(cfg.Mail, cfg.Watcher, cfg.Timer, log),
		fx.Provide(func(lc fx.Lifecycle) (store.Store, error) {
			st, err := OpenStore(context.Background(), cfg.Store)
			if err != nil {
				return nil, err
			}
			lc.Append(fx.StopHook(st.Close))
			return st, nil
		}),
		fx.Provide(func(c *mailer.Client) watcher.Sender { return c }),
		mailer.Module, watcher.Module, timer.Module,
	}
	return fx.New(append(opts, extra...)...)
}

type storeURL struct {
	path string // file:
}

func parseStoreURL(u string) (storeURL, error) {
	if path, ok := strings.CutPrefix(u, "file:"); ok && path != "" {
		return storeURL{path: path}, nil
	}
	return storeURL{}, fmt.Errorf("store: %q is not a store URL; want file:PATH", u)
}

// OpenStore opens the store a URL names.
func OpenStore(ctx context.Context, u string) (store.Store, error) {
	su, err := parseStoreURL(u)
	if err != nil {
		return nil, err
	}
	return embedded.Open(ctx, embedded.Config{Path: su.path})
}
