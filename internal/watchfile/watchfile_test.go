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
	now := time.Now()
	look := func(n int) time.Time { return now.Add(time.Duration(n) * ReloadEvery) }
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
	b, changed, err = f.Read(look(1))
	require.NoError(t, err)
	assert.Equal(t, "two", string(b), "a file renamed over it is taken at once")
	assert.Equal(t, look(1), changed)

	// Rewritten in place, in two writes, a look between them: the half is
	// never taken. (The modification times are set as if each write had
	// come just before the look.)
	touched := func(at time.Time) { require.NoError(t, os.Chtimes(path, at, at)) }
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	require.NoError(t, err)
	_, err = w.WriteString("thr")
	require.NoError(t, err)
	touched(look(2).Add(-100 * time.Millisecond))
	b, _, err = f.Read(look(2))
	require.NoError(t, err)
	assert.Equal(t, "two", string(b), "half-written")
	_, err = w.WriteString("ee")
	require.NoError(t, err)
	require.NoError(t, w.Close())
	touched(look(3).Add(-100 * time.Millisecond))
	b, _, _ = f.Read(look(3))
	assert.Equal(t, "two", string(b), "changed since the last look, just now")
	b, changed, err = f.Read(look(4))
	require.NoError(t, err)
	assert.Equal(t, "three", string(b), "left alone since the last look")
	assert.Equal(t, look(4), changed)
	// Rewritten in place and left alone since: taken at the first look,
	// however long after it comes (a quiet service reads it at its next
	// send).
	require.NoError(t, os.WriteFile(path, []byte("four"), 0o600))
	touched(look(20).Add(-Settle))
	b, _, err = f.Read(look(20))
	require.NoError(t, err)
	assert.Equal(t, "four", string(b))
	// A new file renamed over it just now (a writer that removes and
	// writes anew, in several writes): kept out until left alone too.
	swap("fre")
	touched(look(21).Add(-100 * time.Millisecond))
	b, _, _ = f.Read(look(21))
	assert.Equal(t, "four", string(b), "replaced just now")
	b, _, _ = f.Read(look(22))
	assert.Equal(t, "fre", string(b), "left alone since the last look")

	swap(" \n")
	_, _, err = f.Read(look(25))
	require.EqualError(t, err, "cb-password-file: "+path+" is empty")
	require.NoError(t, os.Remove(path))
	_, _, err = f.Read(look(26))
	require.ErrorContains(t, err, "cb-password-file: ")
	assert.NotContains(t, err.Error(), "four")
	require.NoError(t, os.WriteFile(path, []byte("five"), 0o600))
	touched(look(27))
	b, _, err = f.Read(look(27))
	require.NoError(t, err)
	assert.Equal(t, "five", string(b), "after an error, taken at once")
	require.NoError(t, os.Remove(path))
	_, _, err = f.Read(look(28))
	require.ErrorIs(t, err, os.ErrNotExist, "gone: taken at once")

	assert.Nil(t, New("cb-password-file", ""), "no file named: nothing to watch")
}
