package order_test

import (
	"testing"

	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/order"
)

// BenchmarkDecodeOrder decodes the generated orders the bench writes: each
// order is decoded three times on its way (the order system's write, the
// watcher, the outcome's write).
func BenchmarkDecodeOrder(b *testing.B) {
	var docs [][]byte
	for _, d := range fixtures.Generate(100, 1) {
		v, err := order.SetPaymentStatus(d.Value, order.StatusPaid)
		if err != nil {
			b.Fatal(err)
		}
		docs = append(docs, v)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := order.DecodeOrder(docs[i%len(docs)]); err != nil {
			b.Fatal(err)
		}
	}
}
