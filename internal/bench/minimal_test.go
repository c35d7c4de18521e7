package bench

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMinimalPipelineDeliversAndCommitsEveryOrder: the minimal pipeline
// sends each order once under its own key, and commits what the service
// would: the order marked confirmed and its attempt record. A transient
// failure is sent again, as by the ceiling.
func TestMinimalPipelineDeliversAndCommitsEveryOrder(t *testing.T) {
	m, err := mockmail.New(mockmail.Config{FailRate: 0.2, Seed: 3})
	require.NoError(t, err)
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	bodies := generate(200, 5, false)
	dir := t.TempDir()

	res, err := runMinimal(context.Background(), dir, target{url: srv.URL}, bodies, 4, "m:")
	require.NoError(t, err)
	assert.Positive(t, res.perSecond)

	delivered := m.Delivered()
	assert.Len(t, delivered, len(bodies), "each order delivered")
	for key, n := range delivered {
		assert.Equal(t, 1, n, "%s delivered once", key)
	}
	assert.Positive(t, m.Stats().Failures, "at 20%% some sends failed and were sent again")

	st, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(dir, "minimal.db")})
	require.NoError(t, err)
	defer st.Close()
	counts, err := st.Counts(context.Background())
	require.NoError(t, err)
	assert.Equal(t, len(bodies), counts.OrdersPaid)
	assert.Equal(t, len(bodies), counts.OrdersConfirmed)
	for _, i := range []int{0, 99, 199} {
		doc, err := st.Get(context.Background(), order.Attempts, "m:"+strconv.Itoa(i))
		require.NoError(t, err, "order %d's attempt record", i)
		rec, err := order.DecodeAttempts(doc.Value)
		require.NoError(t, err)
		assert.Equal(t, "sent", rec.Result)
	}
}
