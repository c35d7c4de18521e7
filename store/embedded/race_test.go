//go:build race

package embedded

// raceDetector: the race detector makes the transpiled SQLite some 25 times
// slower, so the scale tests run without it (go test ./..., as CI does).
const raceDetector = true
