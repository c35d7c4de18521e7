// Package app assembles the ordermail service from its packages' fx modules:
// the store named by a URL, the mailer, the watcher and the timer. The
// commands and the end-to-end tests build the same app with New.
package app
