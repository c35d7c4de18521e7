// Package mockmail is the mock email service of the sample's manual test: it
// answers POST /sendConfirmation with 200 or, at a set rate, with a failure
// status (503 by default; the sample's mock answers 406, which ordermail
// classifies as permanent), after an optional latency. Unlike the
// sample's mock it is idempotent, as a real email API is: a request whose
// Idempotency-Key was already delivered is answered 200 again and counted as
// a duplicate request, not delivered twice. GET /stats reports the counts.
package mockmail
