package app_test

import (
	"testing"
	"time"

	"github.com/ordermail/ordermail/mailer/mockmail"
)

// BenchmarkOrdersEndToEnd measures paid orders confirmed per second through
// the whole service: embedded store, feed, watcher, mailer, the mock on
// loopback, and the outcome written back. One op is one order.
func BenchmarkOrdersEndToEnd(b *testing.B) {
	r := newRunOn(b, backends[0], mockmail.Config{})
	a, st := r.start(b)
	defer stop(b, a)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	keys := r.placeOrders(b, st, b.N)
	waitConfirmed(b, st, keys)
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "orders/s")
}
