// Package bench is `ordermail bench`: it runs the real service and the mock
// email service as processes of their own on a fresh embedded store, writes
// paid orders, and measures how fast and how evenly they are confirmed, from
// the store's counts and the mock's per-key timings. The figures are
// measured, never derived from the settings.
package bench
