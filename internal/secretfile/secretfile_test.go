package secretfile_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ordermail/ordermail/internal/secretfile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWriteReplacesWhatIsThere: a file anyone may read, and a link to a
// file of the user's, are replaced by a new private file; the link's
// target is left as it was.
func TestWriteReplacesWhatIsThere(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "token")
	require.NoError(t, os.WriteFile(open, []byte("old"), 0o644))
	require.NoError(t, os.Chmod(open, 0o644))
	target := filepath.Join(t.TempDir(), "notes")
	require.NoError(t, os.WriteFile(target, []byte("mine"), 0o644))
	link := filepath.Join(dir, "secret")
	require.NoError(t, os.Symlink(target, link))

	for _, p := range []string{open, link, filepath.Join(dir, "new")} {
		require.NoError(t, secretfile.Write(p, "s3cret"))
		fi, err := os.Lstat(p)
		require.NoError(t, err)
		assert.True(t, fi.Mode().IsRegular(), "%s: %s", p, fi.Mode())
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), p)
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		assert.Equal(t, "s3cret\n", string(b))
	}
	b, err := os.ReadFile(target)
	require.NoError(t, err)
	assert.Equal(t, "mine", string(b), "the link was not written through")
}
