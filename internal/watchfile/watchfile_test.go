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
	look := func(n int) time.Time { return now.Add(time.Duration(n) * ReloadEvery) }
	b, _, err = f.Read(look(1))
	require.NoError(t, err)
	assert.Equal(t, "one", string(b), "a change is taken once seen at two looks in a row")
	b, changed, err = f.Read(look(2))
	require.NoError(t, err)
	assert.Equal(t, "two", string(b))
	assert.Equal(t, look(2), changed)

	// Rewritten in place, in two writes, a look between them: the half is
	// never taken.
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	require.NoError(t, err)
	_, err = w.WriteString("thr")
	require.NoError(t, err)
	b, _, err = f.Read(look(3))
	require.NoError(t, err)
	assert.Equal(t, "two", string(b), "half-written")
	_, err = w.WriteString("ee")
	require.NoError(t, err)
	require.NoError(t, w.Close())
	b, _, _ = f.Read(look(4))
	assert.Equal(t, "two", string(b), "changed since the last look")
	b, changed, err = f.Read(look(5))
	require.NoError(t, err)
	assert.Equal(t, "three", string(b))
	assert.Equal(t, look(5), changed)

	swap(" \n")
	_, _, err = f.Read(look(6))
	require.NoError(t, err, "emptied: the content as it was until the next look")
	_, _, err = f.Read(look(7))
	require.EqualError(t, err, "cb-password-file: "+path+" is empty")
	require.NoError(t, os.Remove(path))
	_, _, err = f.Read(look(8))
	require.ErrorContains(t, err, "cb-password-file: ", "no good content to keep: an error at once")
	assert.NotContains(t, err.Error(), "two")
	require.NoError(t, os.WriteFile(path, []byte("four"), 0o600))
	b, _, err = f.Read(look(9))
	require.NoError(t, err)
	assert.Equal(t, "four", string(b), "after an error, taken at once")
	require.NoError(t, os.Remove(path))
	_, _, err = f.Read(look(10))
	require.NoError(t, err, "removed: the content as it was until the next look")
	_, _, err = f.Read(look(11))
	require.ErrorIs(t, err, os.ErrNotExist)

	assert.Nil(t, New("cb-password-file", ""), "no file named: nothing to watch")
}
