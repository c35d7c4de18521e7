// Command check loads alerting rules files as Prometheus does, with its own
// parser (the expressions, and the annotations' templates), and says what is
// wrong with them. A module of its own, so that ordermail does not depend on
// Prometheus: scripts/check-alerts.sh runs it.
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: check RULES.yml...")
		os.Exit(2)
	}
	bad := 0
	for _, path := range os.Args[1:] {
		groups, errs := rulefmt.ParseFile(path, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
		for _, err := range errs {
			fmt.Fprintln(os.Stderr, err)
		}
		if len(errs) > 0 {
			bad++
			continue
		}
		n := 0
		for _, g := range groups.Groups {
			n += len(g.Rules)
		}
		fmt.Printf("%s: %d rules in %d groups, as Prometheus loads them\n", path, n, len(groups.Groups))
	}
	if bad > 0 {
		os.Exit(1)
	}
}
