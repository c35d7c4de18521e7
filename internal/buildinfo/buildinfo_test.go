package buildinfo

import "testing"

// A build without a VCS stamp (an image built from a context without .git)
// reports the commit the linker was told.
func TestRevisionFromTheLinker(t *testing.T) {
	if Read().Revision != "" && revision == "" {
		t.Skip("this test binary carries a VCS stamp, which wins")
	}
	old := revision
	t.Cleanup(func() { revision = old })
	revision = "0123456789abcdef"
	if got := Read().Revision; got != "0123456789abcdef" {
		t.Fatalf("revision %q, want the linker's", got)
	}
}
