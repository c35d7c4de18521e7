// Package mailer sends order confirmations to the email REST service: a POST
// of the order JSON to <base URL>/sendConfirmation with an Idempotency-Key
// header. Any 2xx answer is success. Every failure comes back as a
// *SendError with its class:
//
//   - Transient: worth trying again later. No answer (refused, reset,
//     timeout), an answer whose status is in RetryStatuses (3xx allowed), or
//     a send held back by the circuit breaker or the rate limit (NotAttempted).
//   - Permanent: trying again won't help. Any other answer, 3xx included:
//     redirects are never followed, so an order is posted once per send and
//     only where configured.
//   - Configuration: the service refuses ordermail's setup, not the order
//     (401, 403, a certificate the client does not trust, a client
//     certificate refused, a settings file that cannot be read): sends are
//     held back, no attempt counted, nothing dead-lettered, until a probe
//     gets through.
//   - Invalid: the request cannot be made for this order (an idempotency key
//     no header can carry; see CheckHeaderValue). No request was made.
//
// A SendError carries the status, Retry-After, the answer's media type and
// size and an identifier-like "code" that repeats no word of the order,
// never the answer's body: its Error and Reason are free of customer data
// and of the URL's credentials, so Reason can be stored with the order.
//
// A rate limit and a circuit breaker protect the service. The breaker counts
// transient failures and failures without an answer; a permanent answer
// shows the service is up, and Invalid sends and our own cancellation are
// not counted. Connections are kept alive and reused (Config.Conns).
//
// The mock email service used by tests, the demo and `ordermail mockmail` is
// in the sub-package mockmail.
package mailer
