// Package later formats a value when a message is printed, not when it is
// passed: the failure message of a wait (testify's Eventually) then shows
// what was last seen, not what was there before the wait.
package later

import "fmt"

// Value is printed, with %v or %s, as what its function returns then.
type Value func() any

func (v Value) String() string { return fmt.Sprint(v()) }
