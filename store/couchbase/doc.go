// Package couchbase is the store on Couchbase Server 7.x, in the sample's
// layout: bucket orders (scope _default, collections inbound, retry and
// deadletter, plus ordermail's attempts, off the feed) and bucket metadata
// for feed checkpoints and leases.
//
// Documents go through gocb (KV with CAS, the sweep and counts as N1QL with
// named parameters); a write whose answer times out is read back to learn
// whether it was made. The change feed is a DCP stream per owned vBucket
// from gocbcore's DCP agent, with one checkpoint document per vBucket in
// the metadata bucket, saved apart from the streams (a --from-now start is
// saved before anything is streamed). Streams that end, are refused or go
// unanswered are reopened from their checkpoint; a rollback restarts from
// the server's point on the branch that covers it; a dropped collection
// fails the feed unless it was created again. The instances of a feed
// share its vBuckets by heartbeats in a members document (members.go) and
// hand them over through the checkpoint documents, which name the owner
// and its epoch and are written only by CAS (handover.go); --instance i/n
// gives a fixed split instead. Only this package imports
// gocb and gocbcore: their errors are mapped to the store's.
//
// The integration tests run against cbtest, an in-process Couchbase, or
// against the cluster ORDERMAIL_TEST_COUCHBASE names.
package couchbase
