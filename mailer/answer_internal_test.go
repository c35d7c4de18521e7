package mailer

import (
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Sends refused at once on many goroutines read their answers' codes at
// once: the accents' transformer, one shared, panicked (slice bounds out
// of range) and took the process down.
func TestAnswerCodesReadAtOnce(t *testing.T) {
	t.Parallel()
	order := []byte(`{"email":"zoë@example.com","name":"Zoë Brontë ` + strings.Repeat("é", 200) + `"}`)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 200 {
				assert.Equal(t, "unknown_recipient", answerCode([]byte(`{"code":"unknown_recipient"}`), order))
				assert.Empty(t, answerCode([]byte(`{"code":"zoe_unknown"}`), order))
			}
		})
	}
	wg.Wait()
}
