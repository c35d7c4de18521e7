package cbtest

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The server counts the KV operations and statements it was asked for,
// so that a test can count the work a store does.
func TestWorkCountsOperationsAndStatements(t *testing.T) {
	s, c, b := queryServer(t)
	inbound := b.Scope("_default").Collection("inbound")
	s.ResetWork()
	for _, k := range []string{"a", "b"} {
		_, err := inbound.Upsert(k, map[string]any{"paymentStatus": "paid"}, nil)
		require.NoError(t, err)
	}
	_, err := inbound.Get("a", nil)
	require.NoError(t, err)
	const count = "SELECT RAW COUNT(*) FROM `orders`.`_default`.`inbound` AS o WHERE o.paymentStatus = \"paid\""
	for range 3 {
		rows, err := queryRows[float64](t, c, count, nil)
		require.NoError(t, err)
		assert.Equal(t, []float64{2}, rows)
	}
	w := s.Work()
	assert.Equal(t, map[string]int{"set": 2, "get": 1}, w.KV)
	assert.Equal(t, map[string]int{count: 3}, w.Statements)
	assert.Equal(t, 3, w.StatementsWith("COUNT(*)"))
	assert.Zero(t, w.StatementsWith("UPDATE"))

	s.ResetWork()
	assert.Equal(t, Work{}, s.Work())
}
