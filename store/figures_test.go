package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// figures answers Counts and Backlog as a busy store read a moment apart
// would.
type figures struct {
	store.Store
	c store.Counts
	b store.Backlog
}

func (f figures) Counts(context.Context) (store.Counts, error) { return f.c, nil }
func (f figures) Backlog(context.Context, time.Time, time.Duration) (store.Backlog, error) {
	return f.b, nil
}

func TestReadFiguresAgree(t *testing.T) {
	tests := []struct {
		name    string
		c       store.Counts
		due     int
		wantDue int
	}{
		{"as read", store.Counts{RetryDocs: 100, RetryFlagged: 40}, 60, 60},
		{"settled between the reads", store.Counts{RetryDocs: 100, RetryFlagged: 40}, 30, 40},
		{"written between the reads", store.Counts{RetryDocs: 100, RetryFlagged: 40}, 120, 100},
		{"none", store.Counts{}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, b, err := store.ReadFigures(context.Background(), figures{c: tt.c, b: store.Backlog{Due: tt.due}}, time.Now(), time.Second)
			require.NoError(t, err)
			assert.Equal(t, tt.c, c)
			assert.Equal(t, tt.wantDue, b.Due)
		})
	}
}
