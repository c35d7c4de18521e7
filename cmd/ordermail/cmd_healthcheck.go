package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"
)

// healthcheckCommand asks a running service whether it is healthy: the
// container image has no shell and no curl, so its HEALTHCHECK runs this.
func healthcheckCommand(stdout io.Writer) *ffcli.Command {
	fs := newFlagSet("healthcheck", io.Discard)
	url := fs.String("url", "http://127.0.0.1:9464/healthz", "URL to GET; any 2xx answer is healthy; default: /healthz of ORDERMAIL_METRICS_LISTEN when set")
	timeout := fs.Duration("timeout", 3*time.Second, "bound on the request")
	return &ffcli.Command{
		Name:       "healthcheck",
		ShortUsage: "ordermail healthcheck [--url URL] [--timeout D]",
		ShortHelp:  "GET a health endpoint; exit 0 on a 2xx answer, 1 otherwise (for HEALTHCHECK)",
		FlagSet:    fs,
		Exec: func(ctx context.Context, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if !flagGiven(fs, "url") {
				if listen, ok := os.LookupEnv("ORDERMAIL_METRICS_LISTEN"); ok && listen != "" {
					// The container's settings name the service's metrics
					// address once: its health check asks there.
					u, err := healthURL(listen)
					if err != nil {
						return err
					}
					*url = u
				}
			}
			if *timeout <= 0 {
				return usageErrorf("timeout: %s is not positive", *timeout)
			}
			if u, err := neturl.Parse(*url); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return usageErrorf("url: %q is not an http:// or https:// URL", *url)
			}
			ctx, cancel := context.WithTimeout(ctx, *timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
			if err != nil {
				return fmt.Errorf("url: %w", err)
			}
			// A health endpoint answers itself; a redirect is not health.
			client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			resp, err := client.Do(req)
			if err != nil {
				return fmt.Errorf("unhealthy: %w", err)
			}
			defer resp.Body.Close()
			io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			if resp.StatusCode < 200 || resp.StatusCode > 299 {
				return fmt.Errorf("unhealthy: %s answered %s", *url, resp.Status)
			}
			_, err = fmt.Fprintln(stdout, "healthy:", *url, "answered", resp.Status)
			return err
		},
	}
}

// flagGiven says whether the command line set the flag name.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// healthURL is the /healthz of a service listening on listen (host:port),
// asked on loopback when it listens on every address.
func healthURL(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("ORDERMAIL_METRICS_LISTEN: %q is not host:port: %w", listen, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz", nil
}
