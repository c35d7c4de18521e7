// Package store is the one interface the rest of ordermail depends on: key-value
// documents with CAS on named collections, an ordered, durable, at-least-once
// change feed with named checkpoints, and the retry sweep. Implementations live
// in their own packages, named after their technology (embedded, couchbase);
// storetest holds the contract every implementation must pass.
package store
