package embedded

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCheckpointsAreMadeOffTheWriter: writes of some 3,000 pages, fewer
// than the writer's own checkpoints wait for, reach the database file by
// checkpointLoop's checkpoints.
func TestCheckpointsAreMadeOffTheWriter(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	ctx := context.Background()
	body := strings.Repeat("x", 2000)
	for from := 0; from < 6000; from += 500 {
		var writes []store.Write
		for i := from; i < from+500; i++ {
			writes = append(writes, store.Write{Op: store.OpUpsert, Collection: order.Inbound, Key: fmt.Sprintf("o%05d", i),
				Value: fmt.Appendf(nil, `{"email":"a@b.c","note":%q}`, body)})
		}
		_, err := s.Apply(ctx, writes)
		require.NoError(t, err)
	}
	// In WAL mode the database file grows only as checkpoints copy pages
	// into it, and the writer's own wait for 10,000.
	size := func() int64 {
		fi, err := os.Stat(s.cfg.Path)
		if err != nil {
			return -1
		}
		return fi.Size()
	}
	if !assert.Eventually(t, func() bool { return size() >= 2500*4096 }, time.Minute, 10*time.Millisecond) {
		t.Fatalf("the database file holds %d bytes of about 3,000 pages (12MB) written", size())
	}
}
