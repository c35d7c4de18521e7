package embedded_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/stretchr/testify/require"
)

// BenchmarkWriteThenFeed writes documents and reads them back from the feed,
// acknowledging each: the store's share of every order.
func BenchmarkWriteThenFeed(b *testing.B) {
	ctx := context.Background()
	st, err := embedded.Open(ctx, embedded.Config{Path: filepath.Join(b.TempDir(), "o.db")})
	require.NoError(b, err)
	defer st.Close()
	sub, err := st.Subscribe(ctx, "bench", []string{"inbound"}, store.FeedOptions{})
	require.NoError(b, err)
	defer sub.Close(ctx)
	doc := []byte(`{"email":"a@example.com","paymentStatus":"paid","items":[{"name":"Swedish Meatballs 500g","amount":2,"unitPrice":9.95}]}`)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := st.Upsert(ctx, "inbound", fmt.Sprint("order_", i), doc); err != nil {
			b.Fatal(err)
		}
		ev, err := sub.Next(ctx)
		if err != nil {
			b.Fatal(err)
		}
		ev.Ack()
	}
}
