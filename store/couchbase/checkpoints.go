package couchbase

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/ordermail/ordermail/store"
)

// metaCheckpoints keeps one document per feed and vBucket in the metadata
// bucket, so that instances owning different vBuckets never write the same
// document, and a vBucket's checkpoint is saved whatever happens to the
// others.
type metaCheckpoints struct{ s *Store }

func checkpointKey(name string, vb uint16) string {
	return "checkpoint:" + name + ":" + strconv.Itoa(int(vb))
}

// Load reads the checkpoints of vbs, many at once.
func (m metaCheckpoints) Load(ctx context.Context, name string, vbs []uint16) (map[uint16]position, error) {
	out := map[uint16]position{}
	var mu sync.Mutex
	errs := parallel(ctx, vbs, 32, func(ctx context.Context, vb uint16) error {
		d, err := m.s.Get(ctx, store.Meta, checkpointKey(name, vb))
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		var p position
		if err := json.Unmarshal(d.Value, &p); err != nil {
			return fmt.Errorf("checkpoint %s: %w", checkpointKey(name, vb), err)
		}
		mu.Lock()
		out[vb] = p
		mu.Unlock()
		return nil
	})
	if err := joinErrs(errs, len(vbs)); err != nil {
		return nil, err
	}
	return out, nil
}

func (m metaCheckpoints) Save(ctx context.Context, name string, vb uint16, p position) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	_, err = m.s.Upsert(ctx, store.Meta, checkpointKey(name, vb), b)
	return err
}
