// Package lease is a time-limited lock held in the store with CAS: one
// holder at a time among all ordermail instances on one store, taken over
// when its holder stops renewing it. The timer sweeps only while it holds its
// lease, so a cluster of instances sweeps once per interval.
package lease
