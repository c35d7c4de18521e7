// Package mockmail is the mock email service of the sample's manual test: it
// answers POST /sendConfirmation with 200 or, at a set rate, with a failure
// status (503 by default; the sample's mock answers 406, which ordermail
// classifies as permanent), after an optional latency. Unlike the
// sample's mock it is idempotent, as a real email API is: a request whose
// Idempotency-Key was already delivered is answered 200 again and counted as
// a duplicate request, not delivered twice. GET /stats reports the counts.
//
// For `ordermail bench` it also keeps per-key timings: GET /timings serves
// when each key was first requested and delivered, and a summary of how long
// senders waited after a failure before trying the key again; POST /reset
// forgets every key, timing and count (with the credentials sends need,
// when it wants any).
package mockmail
