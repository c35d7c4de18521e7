package embedded_test

import (
	"path/filepath"
	"testing"

	"github.com/ordermail/ordermail/store/embedded"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestProcessLockIsExclusive(t *testing.T) {
	db := filepath.Join(t.TempDir(), "o.db")
	a, b := embedded.NewProcessLock(db), embedded.NewProcessLock(db)
	ok, err := a.TryLock()
	require.NoError(t, err)
	assert.True(t, ok)
	// flock locks belong to open files: a second open file is refused,
	// as a second process would be.
	ok, err = b.TryLock()
	require.NoError(t, err)
	assert.False(t, ok)
	require.NoError(t, a.Unlock())
	ok, err = b.TryLock()
	require.NoError(t, err)
	assert.True(t, ok, "free once released")
	require.NoError(t, b.Unlock())
	assert.Equal(t, db+".lock", a.Path())
}
