package watcher

import "testing"

func BenchmarkDecide(b *testing.B) {
	c := Change{Collection: "inbound", Key: "order_140", Value: []byte(`{"email":"customer@example.com","paymentStatus":"paid",` +
		`"confirmationEmailSent":false,"items":[{"name":"Swedish Meatballs 500g","amount":2,"unitPrice":9.95}]}`)}
	b.ReportAllocs()
	for range b.N {
		if Decide(c, 1<<20).Action != SendOrder {
			b.Fatal("wrong decision")
		}
	}
}
