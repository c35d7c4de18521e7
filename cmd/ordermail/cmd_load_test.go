package main

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// alwaysChanged answers every guarded replace as if the document had just
// changed.
type alwaysChanged struct {
	store.Store
	replaces int
}

func (s *alwaysChanged) Replace(context.Context, string, string, []byte, uint64) (uint64, error) {
	s.replaces++
	return 0, store.ErrCASMismatch
}

// TestPayGivesUpOnAnOrderThatKeepsChanging: marking an order paid reads
// it again when it changed under the write, a bounded number of times.
func TestPayGivesUpOnAnOrderThatKeepsChanging(t *testing.T) {
	t.Parallel()
	st, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(t.TempDir(), "o.db")})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	_, err = st.Insert(context.Background(), order.Inbound, "o1", []byte(`{"paymentStatus":"pending"}`))
	require.NoError(t, err)
	changing := &alwaysChanged{Store: st}
	err = markPaid(context.Background(), changing, "o1")
	assert.ErrorContains(t, err, "pay o1: the order changed under each of 10 tries")
	assert.Equal(t, maxPayTries, changing.replaces)
}
