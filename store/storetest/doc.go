// Package storetest is the contract every store implementation passes: run
// it from the implementation's tests with a function that opens a store.
// Keys are unique per run and counts are compared as differences, so the
// contract also runs against a shared, non-empty Couchbase cluster.
package storetest
