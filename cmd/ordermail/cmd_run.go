package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/ordermail/ordermail/app"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func runCommand(stderr io.Writer) *ffcli.Command {
	fs := newFlagSet("run", stderr)
	cfg := app.Config{}
	var logs logFlags
	storeFlag(fs, &cfg.Store)
	serviceFlags(fs, &cfg, serviceDefaults{interval: time.Second, quantum: 15 * time.Second,
		backoffMin: time.Second, backoffMax: 10 * time.Minute, breakerCooldown: 30 * time.Second})
	logs.register(fs, "info")
	return &ffcli.Command{
		Name:       "run",
		ShortUsage: "ordermail run --store file:PATH --mail-url URL [flags]",
		ShortHelp:  "run the service until SIGINT or SIGTERM",
		FlagSet:    fs,
		Options:    envOptions,
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			log, err := logs.logger(stderr)
			if err != nil {
				return err
			}
			if err := checkServiceFlags(&cfg); err != nil {
				return err
			}
			a := app.New(cfg, log)
			if err := a.Start(ctx); err != nil {
				return fmt.Errorf("start: %w", err)
			}
			log.Info("ordermail running", "store", cfg.Store, "mail_url", cfg.Mail.URL)
			<-ctx.Done()
			log.Info("shutting down")
			stopCtx, cancel := context.WithTimeout(context.Background(), a.StopTimeout())
			defer cancel()
			if err := a.Stop(stopCtx); err != nil {
				return fmt.Errorf("stop: %w", err)
			}
			return nil
		},
	}
}
