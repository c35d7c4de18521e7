// Package mailer sends order confirmations to the email REST service: a POST
// of the order JSON to <base URL>/sendConfirmation with an Idempotency-Key
// header. Every failure comes back as a *SendError, classified transient or
// permanent, with the status and Retry-After; a rate limit and a circuit
// breaker protect the service.
// The mock email service used by tests, the demo and `ordermail mockmail` is
// in the sub-package mockmail.
package mailer
