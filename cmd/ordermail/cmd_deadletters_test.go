package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDeadLettersListOverManyPages: the list is printed as the store reads
// it, a page at a time; over more than two of its pages (and of the
// table's blocks of listRows) it is still every dead letter, once, in key
// order, in both forms.
func TestDeadLettersListOverManyPages(t *testing.T) {
	t.Parallel()
	const n = 2*listRows + 201
	path := filepath.Join(t.TempDir(), "o.db")
	st, err := embedded.Open(context.Background(), embedded.Config{Path: path})
	require.NoError(t, err)
	var writes []store.Write
	for i := range n {
		k := fmt.Sprintf("order_%05d", i)
		writes = append(writes, store.Write{Op: store.OpInsert, Collection: order.DeadLetter, Key: k,
			Value: order.DeadLetterDoc{DocID: k, Reason: order.ReasonPermanent, LastStatus: 400, Attempts: 1}.Encode()})
	}
	_, err = st.Apply(context.Background(), writes)
	require.NoError(t, err)
	require.NoError(t, st.Close())
	storeURL := "file:" + path

	out, _, err := cli(t, "deadletters", "list", "--store", storeURL, "--json")
	require.NoError(t, err)
	var dls []struct {
		ID string `json:"id"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &dls), "one JSON array")
	require.Len(t, dls, n)
	for i, d := range dls {
		require.Equal(t, fmt.Sprintf("order_%05d", i), d.ID)
	}

	out, _, err = cli(t, "deadletters", "list", "--store", storeURL)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	require.Len(t, lines, n+1, "a heading and a row each")
	assert.True(t, strings.HasPrefix(lines[0], "ID "), lines[0])
	for i, l := range lines[1:] {
		require.Regexp(t, fmt.Sprintf(`^order_%05d\s+permanent_error\s+400\s+1\s+0\s`, i), l)
	}
}

// TestDeadLettersListOfNoneIsAnEmptyArray: scripts read [] rather than
// nothing.
func TestDeadLettersListOfNoneIsAnEmptyArray(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "o.db")
	st, err := embedded.Open(context.Background(), embedded.Config{Path: path})
	require.NoError(t, err)
	require.NoError(t, st.Close())
	out, _, err := cli(t, "deadletters", "list", "--store", "file:"+path, "--json")
	require.NoError(t, err)
	assert.Equal(t, "[]\n", out)
}
