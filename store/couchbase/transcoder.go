package couchbase

import (
	"fmt"

	"github.com/couchbase/gocb/v2"
)

// passthrough hands documents over as the bytes they are, whatever their
// format flags, so that a document someone wrote as binary or non-JSON
// reaches the watcher (which dead-letters it) instead of failing in the SDK.
// It writes raw JSON.
type passthrough struct{}

func (passthrough) Decode(b []byte, _ uint32, out interface{}) error {
	p, ok := out.(*[]byte)
	if !ok {
		return fmt.Errorf("passthrough transcoder decodes into *[]byte, not %T", out)
	}
	*p = append([]byte(nil), b...)
	return nil
}

func (passthrough) Encode(v interface{}) ([]byte, uint32, error) {
	return gocb.NewRawJSONTranscoder().Encode(v)
}
