package main

import (
	"flag"
	"io"
	"os"
	"regexp"
	"strings"
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

// The compose file publishes every port on the host's loopback only: it
// holds the cluster's administrator password and an open console.
func TestTheComposeFilePublishesOnLoopbackOnly(t *testing.T) {
	compose, err := os.ReadFile("../../docker-compose.yml")
	require.NoError(t, err)
	var published, open []string
	inPorts := false
	for _, line := range strings.Split(string(compose), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "ports:"):
			inPorts = true
		case inPorts && strings.HasPrefix(trimmed, "- "):
			port := strings.Trim(strings.TrimPrefix(trimmed, "- "), `"'`)
			published = append(published, port)
			if !strings.HasPrefix(port, "127.0.0.1:") {
				open = append(open, port)
			}
		default:
			inPorts = false
		}
	}
	require.NotEmpty(t, published, "the compose file publishes no port: has its shape changed?")
	assert.Empty(t, open, "ports published on every interface")
	// Its listeners take every address of the container: only the names
	// allowed are answered.
	assert.Contains(t, string(compose), `"--allowed-hosts", "localhost,`)
	// A stop lets the sends in flight finish (up to 1.25 x --mail-timeout
	// + 5s): more than Docker's default 10s.
	assert.Contains(t, string(compose), "stop_grace_period: 30s")
}
