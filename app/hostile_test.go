package app_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/ordermail/ordermail/fixtures"
	"github.com/ordermail/ordermail/internal/syncbuf"
	"github.com/ordermail/ordermail/mailer/mockmail"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type logBuffer = syncbuf.Buffer

// TestHostileDocuments loads the hostile corpus, then good orders behind it:
// each hostile document gets a log line with its key and reason and the
// right outcome, the service keeps running, and the good orders go out.
func TestHostileDocuments(t *testing.T) {
	cases, err := fixtures.Hostile()
	require.NoError(t, err)
	r := newScriptedRun(t, mockmail.Config{})
	logs := &logBuffer{}
	r.log = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, st := r.start(t)
	defer stop(t, a)
	ctx := context.Background()

	for _, c := range cases {
		_, err := st.Upsert(ctx, c.Collection, c.Key, c.Value)
		require.NoError(t, err, c.Name)
	}
	good := []string{"good_1", "good_2", "good_3"}
	placeNamed(t, st, good...)

	deadLetter := func(key string) (order.DeadLetterDoc, bool) { return deadLetter(t, st, key) }
	require.Eventually(t, func() bool {
		for _, c := range cases {
			if _, ok := deadLetter(c.Key); c.Want == "dead_letter" && !ok {
				return false
			}
			if c.Want == "confirmed" && !confirmed(t, st, c.Key) {
				return false
			}
		}
		for _, k := range good {
			if !confirmed(t, st, k) {
				return false
			}
		}
		return true
	}, 60*time.Second, 20*time.Millisecond, "not every hostile document reached its outcome")

	for _, c := range cases {
		t.Run(c.Key, func(t *testing.T) {
			switch c.Want {
			case "dead_letter":
				d, ok := deadLetter(c.Key)
				require.True(t, ok)
				assert.Equal(t, c.Reason, d.Reason, c.Name)
				assert.NotEmpty(t, d.LastError, "the dead letter says what was wrong")
				// The line follows the commit that made the dead letter visible.
				assert.Eventually(t, func() bool {
					return len(logs.Lines(`"msg":"dead-lettered"`, `"key":"`+c.Key+`"`, `"reason":"`+c.Reason+`"`)) > 0
				}, 10*time.Second, 10*time.Millisecond, "a log line names the key and the reason")
				if c.Collection == order.Retry {
					_, err := st.Get(ctx, order.Retry, c.Key)
					assert.ErrorIs(t, err, store.ErrNotFound, "the unreadable retry document moved to the dead letters")
				} else {
					doc, err := st.Get(ctx, order.Inbound, c.Key)
					require.NoError(t, err)
					assert.Equal(t, c.Value, doc.Value, "the order itself is left as it was")
				}
			case "ignored":
				// Nothing else shows that the event was handled: wait for it.
				assert.Eventually(t, func() bool {
					return len(logs.Lines(`"msg":"ignore"`, `"key":"`+c.Key+`"`, `"reason":"not paid"`)) > 0
				}, 10*time.Second, 10*time.Millisecond, "a debug line says the unpaid order was ignored")
				_, dead := deadLetter(c.Key)
				assert.False(t, dead)
			case "confirmed":
				assert.True(t, confirmed(t, st, c.Key))
			case "control":
				assert.Len(t, logs.Lines(`"msg":"ignoring the settings in allow_retrys"`, `parsecs`), 1,
					"reported once, and the timer went on with its settings")
			}
		})
	}
	// The orphaned retry document without fireRetry was dead-lettered only
	// because the timer swept it: the nonsense allow_retrys did not stop it.
	_, swept := deadLetter("hostile_orphan_unflagged")
	assert.True(t, swept)
	assert.Empty(t, logs.Lines(`"level":"ERROR"`, `panic`))
	st2 := r.mock.Stats()
	assert.Equal(t, len(good)+1, st2.Deliveries, "the good orders and the one with a huge number")
}
