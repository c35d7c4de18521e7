package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"testing"

	"github.com/ordermail/ordermail/fixtures"
	"github.com/stretchr/testify/require"
)

func writeJSONL(t *testing.T, path string, docs []fixtures.Doc) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	enc := json.NewEncoder(f)
	for _, d := range docs {
		require.NoError(t, enc.Encode(map[string]any{"id": d.Key, "doc": d.Value}))
	}
}

// runBinary runs ordermail to the end and returns what it printed.
func runBinary(args ...string) (string, error) {
	out, err := exec.Command(binary, args...).CombinedOutput()
	return string(out), err
}
