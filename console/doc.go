// Package console is the operator's web console of `ordermail run
// --admin-listen ADDR`: an overview of the backlog, the last hour's sends,
// the email service's breaker, whether retries are armed and who sweeps;
// pages of retries and dead letters (by reason, by key prefix, a bounded
// number of documents examined per page); one order's whole story; and the
// operator's actions (redrive, purge, run a retry now, drop it, pause and
// resume retries) through package ops, the same functions as the CLI.
//
// The pages are rendered on the server with html/template and styled by one
// small committed CSS file; there is no JavaScript at all. The chart of the
// last hour is inline SVG drawn on the server from per-minute samples of the
// watcher's counters kept in memory. Everything is embedded with go:embed,
// so the console works offline and behind any firewall, and it weighs a few
// kilobytes a page. A console that shows a few numbers and lists, and posts
// a handful of actions, needs nothing more: confirmations are a page of
// their own, "select all" is an "all" button, and the tooltips of the chart
// are SVG <title>s. No JavaScript also means a Content-Security-Policy that
// allows none (script-src 'none'), which closes the usual door of a
// cross-site script, and nothing to build, vendor or update.
//
// Reading is open to whoever reaches the address (keep it on loopback:
// another address is logged as a warning). Acting takes the admin token,
// from --admin-token-file or ORDERMAIL_ADMIN_TOKEN, never a flag value and
// never logged; without one the console is read-only. Logging in with the
// token sets an HttpOnly, SameSite=Strict cookie holding a random session
// id; every action is a POST carrying the session's CSRF token, from a page
// of the same origin (net/http's CrossOriginProtection checks
// Sec-Fetch-Site and Origin), and no GET changes anything. A purge, a
// drop and a redrive of every dead letter or of a reason ask for the token
// again: browsers send a host's cookies to every port of it.
//
// The console also serves the metrics server's GET /healthz and /readyz,
// so that one address is enough for a load balancer on loopback.
package console
