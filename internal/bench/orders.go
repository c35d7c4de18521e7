package bench

import (
	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/order"
)

// generate returns n paid order documents, confirmed ones for history: the
// fixtures' generated orders, the same for the same seed.
func generate(n int, seed uint64, confirmed bool) [][]byte {
	docs := fixtures.Generate(n, seed)
	out := make([][]byte, n)
	for i, d := range docs {
		v, err := order.SetPaymentStatus(d.Value, order.StatusPaid)
		if err == nil && confirmed {
			v, err = order.MarkConfirmed(v)
		}
		if err != nil {
			panic(err) // the generator writes JSON objects
		}
		out[i] = v
	}
	return out
}
