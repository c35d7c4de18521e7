// Package redact takes secrets out of strings before they reach a log line,
// an error or a stored document: the password and the query values of a
// URL, and any known secret value.
package redact
