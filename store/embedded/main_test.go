package embedded

import (
	"testing"

	"go.uber.org/goleak"
)

// A store starts its writer, its file check and its checkpoint loop: Close
// must leave none of them running.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
