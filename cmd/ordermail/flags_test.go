package main

import (
	"io"
	"testing"
	"time"

	"github.com/ordermail/ordermail/app"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The Couchbase cache settings reach the store's configuration, with the
// defaults README.md gives.
func TestStoreFlagsSetTheCountsCaches(t *testing.T) {
	parse := func(args ...string) app.StoreConfig {
		var c app.StoreConfig
		fs := newFlagSet("x", io.Discard)
		storeFlags(fs, &c)
		require.NoError(t, fs.Parse(args))
		return c
	}
	c := parse()
	assert.Equal(t, 5*time.Second, c.Couchbase.CountsTTL)
	assert.Equal(t, time.Minute, c.Couchbase.OrderCountsTTL)
	c = parse("--cb-counts-ttl", "2s", "--cb-order-counts-ttl", "10m")
	assert.Equal(t, 2*time.Second, c.Couchbase.CountsTTL)
	assert.Equal(t, 10*time.Minute, c.Couchbase.OrderCountsTTL)
}

// --allowed-hosts given twice, or with a list, names every host given.
func TestHostListAddsUp(t *testing.T) {
	var names []string
	l := hostList{&names}
	require.NoError(t, l.Set("localhost, ops.example.com"))
	require.NoError(t, l.Set("metrics.internal"))
	assert.Equal(t, []string{"localhost", "ops.example.com", "metrics.internal"}, names)
	assert.Equal(t, "localhost,ops.example.com,metrics.internal", l.String())
}
