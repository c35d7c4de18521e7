package main

import (
	"flag"
	"io"
	"os"
	"regexp"
	"testing"

	"github.com/peterbourgon/ff/v3/ffcli"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// README.md names every setting: each flag of each command is written
// there as --name (in the settings table, or in the text of its command).
func TestTheREADMENamesEveryFlag(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	var missing []string
	walk(rootCommand(io.Discard, io.Discard), func(c *ffcli.Command) {
		c.FlagSet.VisitAll(func(f *flag.Flag) {
			if !regexp.MustCompile(`--` + regexp.QuoteMeta(f.Name) + `([^a-z0-9-]|$)`).Match(readme) {
				missing = append(missing, c.Name+" --"+f.Name)
			}
		})
	})
	assert.Empty(t, missing, "flags README.md does not name")
}
