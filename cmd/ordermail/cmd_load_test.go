package main

import (
	"context"
	"os"
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
	_, err = markPaid(context.Background(), changing, "o1")
	assert.ErrorContains(t, err, "pay o1: the order changed under each of 10 tries")
	assert.Equal(t, maxPayTries, changing.replaces)
}

// Loading orders again leaves those there as they are: written over, a
// confirmed order would be unconfirmed and, paid again, mailed again.
// --replace writes over them, as asked.
func TestLoadLeavesWhatIsThereUnlessToldToReplaceIt(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db := "file:" + filepath.Join(dir, "o.db")
	confirmed := `{"email":"a@example.com","paymentStatus":"paid","confirmationEmailSent":true}`
	require.NoError(t, os.WriteFile(filepath.Join(dir, "o1.json"), []byte(`{"email":"a@example.com","paymentStatus":"pending"}`), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "o2.json"), []byte(`{"email":"b@example.com","paymentStatus":"pending"}`), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "o3.json"), []byte(`{"email":"c@example.com","paymentStatus":"pending"}`), 0o600))
	st, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(dir, "o.db")})
	require.NoError(t, err)
	_, err = st.Insert(context.Background(), order.Inbound, "o1", []byte(confirmed))
	require.NoError(t, err)
	// o3 as a load --pay cut short (Ctrl-C) between its writes and its
	// payments left it: running the load again pays it. It said "marked 0
	// orders paid", exit 0, and left it unpaid for ever.
	_, err = st.Insert(context.Background(), order.Inbound, "o3", []byte(`{"email":"c@example.com","paymentStatus":"pending"}`))
	require.NoError(t, err)
	require.NoError(t, st.Close())

	out, _, err := cli(t, "load", "--store", db, "--collection", "inbound", "--pay",
		filepath.Join(dir, "o1.json"), filepath.Join(dir, "o2.json"), filepath.Join(dir, "o3.json"))
	require.NoError(t, err)
	assert.Contains(t, out, "loaded 1 documents into inbound")
	assert.Contains(t, out, "left 2 documents that were there as they were (--replace writes over them): o1 o3")
	assert.Contains(t, out, "marked 2 orders paid; 1 of those left as they were are not the files' documents", "o1, confirmed since: left alone")
	get := func(key string) string {
		st, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(dir, "o.db")})
		require.NoError(t, err)
		defer st.Close()
		d, err := st.Get(context.Background(), order.Inbound, key)
		require.NoError(t, err)
		return string(d.Value)
	}
	assert.JSONEq(t, confirmed, get("o1"), "the confirmed order is left as it was")
	assert.Contains(t, get("o2"), `"paid"`)
	assert.Contains(t, get("o3"), `"paid"`, "the order an earlier load left unpaid is paid")

	out, _, err = cli(t, "load", "--store", db, "--collection", "inbound", "--replace", filepath.Join(dir, "o1.json"))
	require.NoError(t, err)
	assert.Contains(t, out, "loaded 1 documents into inbound")
	assert.Contains(t, get("o1"), `"pending"`, "--replace writes over it")
}

// What is not a document is refused before anything is written, naming
// the file: a document is a JSON object with a key.
func TestLoadRefusesWhatIsNotADocument(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db := "file:" + filepath.Join(dir, "o.db")
	for name, body := range map[string]string{
		".json":       `{"paymentStatus":"paid"}`,
		"list.json":   `[1,2]`,
		"null.jsonl":  `{"id":"a","doc":null}`,
		"num.jsonl":   `{"id":"b","doc":3}`,
		"empty.jsonl": `{"id":"","doc":{}}`,
	} {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
		_, _, err := cli(t, "load", "--store", db, "--collection", "inbound", path)
		require.Error(t, err, name)
		assert.Contains(t, err.Error(), path, "names the file")
	}
}

// An order the order system already has, another customer's and unpaid
// (or refunded), shares a key with a file's: load without --replace leaves
// it as it is, and --pay leaves it unpaid (paid, the service would mail a
// confirmation for an order nobody paid).
func TestLoadPayLeavesAnOrderItDidNotWrite(t *testing.T) {
	dir := t.TempDir()
	db := "file:" + filepath.Join(dir, "o.db")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "o1.json"), []byte(`{"email":"fixture@example.com","paymentStatus":"pending"}`), 0o600))
	st, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(dir, "o.db")})
	require.NoError(t, err)
	_, err = st.Insert(context.Background(), order.Inbound, "o1", []byte(`{"email":"real@customer.com","paymentStatus":"refunded"}`))
	require.NoError(t, err)
	require.NoError(t, st.Close())

	out, _, err := cli(t, "load", "--store", db, "--collection", "inbound", "--pay", filepath.Join(dir, "o1.json"))
	require.NoError(t, err)
	assert.Contains(t, out, "marked 0 orders paid; 1 of those left as they were are not the files' documents")
	st, err = embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(dir, "o.db")})
	require.NoError(t, err)
	defer st.Close()
	d, err := st.Get(context.Background(), order.Inbound, "o1")
	require.NoError(t, err)
	assert.JSONEq(t, `{"email":"real@customer.com","paymentStatus":"refunded"}`, string(d.Value), "left as it was")
}
