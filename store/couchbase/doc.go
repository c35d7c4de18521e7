// Package couchbase is the store on Couchbase Server 7.x, in the sample's
// layout: bucket orders (scope _default, collections inbound, retry and
// deadletter) and bucket metadata for feed checkpoints and leases.
//
// Documents go through gocb (KV with CAS, the sweep and counts as N1QL with
// named parameters); the change feed is a DCP stream per owned vBucket from
// gocbcore's DCP agent, with per-vBucket checkpoints in the metadata bucket.
// Only this package imports gocb and gocbcore: their errors are mapped to
// the store's own.
package couchbase
