// Package secretfile writes a secret into a new file only its owner can
// read: for the credentials the demo and the benchmark make up.
package secretfile

import (
	"errors"
	"io/fs"
	"os"
	"syscall"
)

// Write writes secret and a newline to a new file at path, mode 0600. A
// file or a symbolic link already there (a directory the user named may
// hold anything) is replaced, never written through with its mode kept.
func Write(path, secret string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(secret + "\n")
	return errors.Join(err, f.Close())
}
