// Package buildinfo is what the binary knows of its build: the module
// version and the commit, from the VCS stamp the Go toolchain records in a
// git checkout. A build without one (an image built from a context that
// holds no .git) is given the commit by the linker:
//
//	go build -ldflags "-X github.com/ordermail/ordermail/internal/buildinfo.revision=$(git rev-parse HEAD)"
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// revision is the commit the linker was told, for a build without a VCS
// stamp; the stamp wins.
var revision string

// Info is the build of this binary.
type Info struct {
	Version   string // the module's version; "(devel)" for a local build
	Revision  string // the commit; "" when not recorded
	Time      string // the commit's time, from the VCS stamp
	Modified  bool   // uncommitted changes were built
	GoVersion string
}

// Read reads the build of this binary.
func Read() Info {
	b := Info{Version: "(devel)", Revision: revision, GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	if bi.Main.Version != "" {
		b.Version = bi.Main.Version
	}
	if bi.GoVersion != "" {
		b.GoVersion = bi.GoVersion
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.time":
			b.Time = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}
