// Package mailer sends order confirmations to the email REST service: a POST
// of the order JSON to <base URL>/sendConfirmation with an Idempotency-Key
// header. Answers other than 200 come back as *StatusError carrying the status.
// The mock email service used by tests, the demo and `ordermail mockmail` is
// in the sub-package mockmail.
package mailer
