package watcher

import (
	"testing"

	"github.com/ordermail/ordermail/store"
)

func BenchmarkDecide(b *testing.B) {
	st := store.State{Order: store.Doc{Key: "order_140", CAS: 1, Incarnation: 1, Value: []byte(`{"email":"customer@example.com","paymentStatus":"paid",` +
		`"confirmationEmailSent":false,"items":[{"name":"Swedish Meatballs 500g","amount":2,"unitPrice":9.95}]}`)}}
	c := Change{Collection: "inbound", Key: "order_140"}
	lim := Limits{MaxOrderBytes: 1 << 20}
	b.ReportAllocs()
	for range b.N {
		if Decide(c, st, now, lim).Action != Send {
			b.Fatal("wrong decision")
		}
	}
}

// BenchmarkSettleSent is the outcome of a delivered first send: the order
// marked confirmed, on the revision the plan was made on.
func BenchmarkSettleSent(b *testing.B) {
	st := store.State{Order: store.Doc{Key: "order_140", CAS: 1, Incarnation: 1, Value: []byte(`{"email":"customer@example.com","paymentStatus":"paid",` +
		`"confirmationEmailSent":false,"items":[{"name":"Swedish Meatballs 500g","amount":2,"unitPrice":9.95}]}`)}}
	lim := Limits{MaxOrderBytes: 1 << 20, AtomicOutcomes: true}
	p := Decide(Change{Collection: "inbound", Key: "order_140"}, st, now, lim)
	if p.Action != Send {
		b.Fatal("wrong decision")
	}
	b.ReportAllocs()
	for range b.N {
		if out := Settle(p, st, nil, now, lim, 0.5); len(out.Writes) != 1 {
			b.Fatal("wrong outcome")
		}
	}
}
