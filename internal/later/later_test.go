package later_test

import (
	"fmt"
	"testing"

	"github.com/ordermail/ordermail/internal/later"
)

func TestValueIsReadWhenPrinted(t *testing.T) {
	n := 1
	v := later.Value(func() any { return n })
	n = 2
	if got := fmt.Sprintf("seen %v", v); got != "seen 2" {
		t.Fatalf("got %q, want the value at printing, %q", got, "seen 2")
	}
}
