package watchfile

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A file swapped as a Kubernetes secret is (a new file renamed over the
// old) is read again at the next look after ReloadEvery, not before; an
// empty or missing file is an error naming the setting and the path, never
// the content it had.
func TestAFileIsReadAgainWhenItChanges(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "secret")
	require.NoError(t, os.WriteFile(path, []byte("one"), 0o600))
	f := New("cb-password-file", path)
	now := time.Unix(1_800_000_000, 0)
	b, changed, err := f.Read(now)
	require.NoError(t, err)
	assert.Equal(t, "one", string(b))
	assert.Equal(t, now, changed)

	swap := func(content string) {
		tmp := filepath.Join(dir, "new")
		require.NoError(t, os.WriteFile(tmp, []byte(content), 0o600))
		require.NoError(t, os.Rename(tmp, path))
	}
	swap("two")
	b, _, err = f.Read(now.Add(ReloadEvery / 2))
	require.NoError(t, err)
	assert.Equal(t, "one", string(b), "looked at once per ReloadEvery")
	later := now.Add(ReloadEvery)
	b, changed, err = f.Read(later)
	require.NoError(t, err)
	assert.Equal(t, "two", string(b))
	assert.Equal(t, later, changed)

	swap(" \n")
	_, _, err = f.Read(later.Add(ReloadEvery))
	require.EqualError(t, err, "cb-password-file: "+path+" is empty")
	require.NoError(t, os.Remove(path))
	_, _, err = f.Read(later.Add(2 * ReloadEvery))
	require.ErrorContains(t, err, "cb-password-file: ")
	assert.NotContains(t, err.Error(), "two")

	assert.Nil(t, New("cb-password-file", ""), "no file named: nothing to watch")
}
