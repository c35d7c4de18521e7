package couchbase

import (
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/couchbase/cbtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The key a confirmation went out under is written with the order's mark,
// in the same guarded write, and stays with the document through a
// full-body write of the order system (a copy it read before the mark,
// written back): the watcher marks that copy again, not mailed again.
// Deleted, the document takes it along: an order created again under the
// key has none, and is a new order.
func TestTheKeyAConfirmationWentOutUnderStaysWithTheOrder(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	ctx := ctxFor(t, 30*time.Second)
	paid := []byte(`{"email": "a@b.c", "paymentStatus": "paid", "note": "fish & chips"}`)
	cas, err := s.Insert(ctx, order.Inbound, "o", paid)
	require.NoError(t, err)
	st, err := s.State(ctx, "o")
	require.NoError(t, err)
	assert.Empty(t, st.Order.Sent, "no confirmation yet")
	assert.Equal(t, paid, st.Order.Value, "the body as written")

	marked := order.MarkDecodedConfirmed(paid)
	mark := store.Write{Op: store.OpReplace, Collection: order.Inbound, Key: "o", Value: marked, CAS: cas, Sent: "confirmation:o@1"}
	stale := mark
	stale.CAS = cas + 1
	_, err = s.Apply(ctx, []store.Write{stale})
	require.ErrorIs(t, err, store.ErrCASMismatch, "the mark is guarded")
	got, err := s.Apply(ctx, []store.Write{mark})
	require.NoError(t, err)
	st, err = s.State(ctx, "o")
	require.NoError(t, err)
	assert.Equal(t, "confirmation:o@1", st.Order.Sent)
	assert.JSONEq(t, string(marked), string(st.Order.Value))
	assert.Equal(t, got[0], st.Order.CAS, "the CAS of the write made")
	plain, err := s.Get(ctx, order.Inbound, "o")
	require.NoError(t, err)
	assert.JSONEq(t, string(marked), string(plain.Value), "a plain read sees the body alone")

	_, err = s.Upsert(ctx, order.Inbound, "o", paid) // the order system's copy
	require.NoError(t, err)
	st, err = s.State(ctx, "o")
	require.NoError(t, err)
	assert.Equal(t, paid, st.Order.Value)
	assert.Equal(t, "confirmation:o@1", st.Order.Sent, "a full-body write keeps it")

	require.NoError(t, s.Remove(ctx, order.Inbound, "o", 0))
	_, err = s.Insert(ctx, order.Inbound, "o", paid)
	require.NoError(t, err)
	st, err = s.State(ctx, "o")
	require.NoError(t, err)
	assert.Empty(t, st.Order.Sent, "an order created again is another order")
}

// An order whose body is not JSON is read whole (the watcher dead-letters
// it as malformed), and a key kept there by something else than ordermail
// is said, not trusted.
func TestAnOrderReadWithItsSentKeyIsReadWhole(t *testing.T) {
	cfg, _ := fakeCluster(t, cbtest.Options{})
	s := openStore(t, cfg)
	ctx := ctxFor(t, 30*time.Second)
	_, err := s.Upsert(ctx, order.Inbound, "bin", []byte("not json"))
	require.NoError(t, err)
	st, err := s.State(ctx, "bin")
	require.NoError(t, err)
	assert.Equal(t, "not json", string(st.Order.Value))
	_, err = s.Upsert(ctx, order.Inbound, "empty", []byte{})
	require.NoError(t, err)
	st, err = s.State(ctx, "empty")
	require.NoError(t, err, "an empty body is read, for the watcher to dead-letter as malformed")
	assert.True(t, st.Order.Found())
	assert.Empty(t, st.Order.Value)

	_, err = s.colls[order.Inbound].MutateIn("odd", []gocb.MutateInSpec{
		gocb.UpsertSpec(sentPath, 42, &gocb.UpsertSpecOptions{IsXattr: true, CreatePath: true}),
		gocb.ReplaceSpec("", map[string]string{"paymentStatus": "paid"}, nil),
	}, &gocb.MutateInOptions{Context: ctx, StoreSemantic: gocb.StoreSemanticsUpsert})
	require.NoError(t, err)
	_, err = s.State(ctx, "odd")
	require.ErrorContains(t, err, "is not ordermail's")
}

// A mark whose answer timed out is read back as any write is, and judged
// on what was written: the body as gocb sends a sub-document value
// (compacted, & escaped), not as the watcher gave it, which would have
// taken the mark made late for a guard failed.
func TestAnAmbiguousMarkIsReadBack(t *testing.T) {
	cfg, srv := fakeCluster(t, cbtest.Options{})
	cfg.Timeout = time.Second // how long the write waits on the hung node
	ambiguous := make(chan store.Write, 10)
	s := openStore(t, cfg, func(s *Store) { s.onAmbiguous = func(w store.Write) { ambiguous <- w } })
	ctx := ctxFor(t, 30*time.Second)
	paid := []byte(`{"email": "a@b.c", "paymentStatus": "paid", "note": "fish & chips"}`)
	cas, err := s.Insert(ctx, order.Inbound, "o", paid)
	require.NoError(t, err)

	srv.HangNode(0)
	t.Cleanup(func() { srv.ResumeNode(0) })
	done := make(chan error, 1)
	go func() {
		_, err := s.Apply(ctx, []store.Write{{Op: store.OpReplace, Collection: order.Inbound, Key: "o",
			Value: order.MarkDecodedConfirmed(paid), CAS: cas, Sent: "confirmation:o@1"}})
		done <- err
	}()
	select {
	case <-ambiguous:
	case err := <-done:
		t.Fatalf("Apply returned before its write timed out: %v", err)
	case <-ctx.Done():
		t.Fatal("the write did not time out")
	}
	srv.ResumeNode(0)
	require.NoError(t, <-done, "made late: judged made")
	st, err := s.State(ctx, "o")
	require.NoError(t, err)
	assert.Equal(t, "confirmation:o@1", st.Order.Sent)
}
