package embedded_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/store/storetest"
	"github.com/stretchr/testify/require"
)

func TestContract(t *testing.T) {
	var mu sync.Mutex
	dirs := map[*testing.T]string{}
	storetest.Run(t, func(t *testing.T) store.Store {
		mu.Lock()
		dir, ok := dirs[t]
		if !ok {
			dir = t.TempDir()
			dirs[t] = dir
		}
		mu.Unlock()
		s, err := embedded.Open(context.Background(), embedded.Config{Path: filepath.Join(dir, "db", "ordermail.db")})
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		return s
	})
}
