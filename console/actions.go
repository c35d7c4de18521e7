package console

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
)

// maxForm bounds a form's body: a few thousand selected keys at most.
const maxForm = 1 << 20

// actionTimeout bounds one action; redriving every dead letter of a large
// store is the longest.
const actionTimeout = 5 * time.Minute

// loginData is the login page.
type loginData struct {
	page
	Back string
	Err  string
	// Clear is why no login is offered: the token would cross a network
	// unencrypted (inTheClear).
	Clear string
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	d := loginData{page: c.pageFor(r, "Log in", ""), Back: localPath(r.URL.Query().Get("back"))}
	if d.LoggedIn {
		http.Redirect(w, r, d.Back, http.StatusSeeOther)
		return
	}
	if c.inTheClear(r) {
		d.Clear = inTheClearText
	}
	c.render(w, "login", http.StatusOK, d)
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if c.ReadOnly() {
		c.refuse(w, r, http.StatusForbidden, readOnlyText)
		return
	}
	if !c.readForm(w, r) {
		return
	}
	d := loginData{page: c.pageFor(r, "Log in", ""), Back: localPath(r.PostForm.Get("back"))}
	// The limit first: every refusal below is logged, and a client must
	// not fill the log at its own pace.
	if !c.loginLimit(r).Allow() {
		d.Err = "Too many attempts: wait a few seconds and try again."
		c.render(w, "login", http.StatusTooManyRequests, d)
		return
	}
	if c.inTheClear(r) {
		var ignored []any
		if strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https") {
			// A proxy's word from a peer that is none of the trusted.
			ignored = []any{"ignored", "X-Forwarded-Proto from " + r.RemoteAddr + ", neither on this host nor in --admin-trusted-proxies"}
		}
		c.log.Warn("console login refused: it came over the network unencrypted; reach the console over HTTPS or on loopback",
			append([]any{"remote", c.client(r)}, ignored...)...)
		d.Clear = inTheClearText
		c.render(w, "login", http.StatusForbidden, d)
		return
	}
	want := c.token()
	if want == nil {
		d.Err = "The admin token file holds no token a login can use now (see the service's log)."
		c.render(w, "login", http.StatusServiceUnavailable, d)
		return
	}
	given := sha256.Sum256([]byte(strings.TrimSpace(r.PostForm.Get("token"))))
	if subtle.ConstantTimeCompare(given[:], want[:]) != 1 {
		c.log.Warn("console login refused: wrong admin token", "remote", c.client(r))
		d.Err = "That is not the admin token."
		c.render(w, "login", http.StatusUnauthorized, d)
		return
	}
	id, ok := c.startSession(want)
	if !ok {
		d.Err = "The admin token changed just now: log in with the new one."
		c.render(w, "login", http.StatusUnauthorized, d)
		return
	}
	c.setSessionCookie(w, id, c.overHTTPS(r))
	c.sessions.setFlash(id, flash{Msg: "Logged in. Actions are enabled."})
	c.log.Info("console login", "remote", c.client(r))
	http.Redirect(w, r, d.Back, http.StatusSeeOther)
}

const readOnlyText = "This console is read-only: ordermail was started without an admin token " +
	"(--admin-token-file PATH or ORDERMAIL_ADMIN_TOKEN)."

// actionFunc is an action, its session checked; sid is the session's id.
type actionFunc func(w http.ResponseWriter, r *http.Request, sid string)

// action lets a POST through only with an admin token configured, a live
// session and the session's CSRF token; requests from other sites were
// refused before (CrossOriginProtection).
func (c *Console) action(h actionFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c.ReadOnly() {
			c.refuse(w, r, http.StatusForbidden, readOnlyText)
			return
		}
		if !c.readForm(w, r) {
			return
		}
		if c.token() == nil { // a token changed ends every session
			// Emptied or removed (a leak answered by deleting it): the
			// sessions made with the old token act no more.
			c.refuse(w, r, http.StatusServiceUnavailable, "The admin token file holds no token: actions are off until it does.")
			return
		}
		sid := c.sessionID(r)
		sess, ok := c.sessions.get(sid)
		if !ok {
			c.refuse(w, r, http.StatusForbidden, "Log in first: actions need the admin token.")
			return
		}
		if !equal(r.PostForm.Get("csrf"), sess.csrf) {
			c.refuse(w, r, http.StatusForbidden, "Refused: the form's CSRF token is not your session's. Reload the page and try again.")
			return
		}
		c.actMu.Lock()
		if c.stopping {
			c.actMu.Unlock()
			c.refuse(w, r, http.StatusServiceUnavailable, "ordermail is stopping: try again once it runs.")
			return
		}
		c.acting.Add(1)
		c.actMu.Unlock()
		defer c.acting.Done()
		// The request's values, not its end: the action outlives a
		// browser gone; Stop ends it, and waits for it.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), actionTimeout)
		defer cancel()
		defer context.AfterFunc(c.life, cancel)()
		h(w, r.WithContext(ctx), sid)
	})
}

// bulkAction is the bulk redrive or purge under way: what, since when.
type bulkAction struct {
	mu    sync.Mutex
	what  string
	since time.Time
}

// start takes the bulk action's turn for what, unless one is under way:
// then it says which, and since when.
func (b *bulkAction) start(what string, now time.Time) (busy string, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.what != "" {
		return b.said(now), false
	}
	b.what, b.since = what, now
	return "", true
}

func (b *bulkAction) end() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.what = ""
}

// under says the bulk action under way, "" when none is.
func (b *bulkAction) under(now time.Time) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.what == "" {
		return ""
	}
	return b.said(now)
}

func (b *bulkAction) said(now time.Time) string {
	return fmt.Sprintf("%s is under way, started %s ago", b.what, now.Sub(b.since).Round(time.Second))
}

// startBulk takes the bulk action's turn, or finishes the request saying
// which is under way and that nothing was done.
func (c *Console) startBulk(w http.ResponseWriter, r *http.Request, sid, action, what, nothing string) bool {
	busy, ok := c.bulk.start(what, c.now())
	if !ok {
		c.finish(w, r, sid, action, fmt.Errorf("%s on this console: wait for it to end, then look again", busy), "%s", nothing)
	}
	return ok
}

// finish records what an action did, for the page it leads back to, and
// goes there.
func (c *Console) finish(w http.ResponseWriter, r *http.Request, sid, action string, err error, msg string, args ...any) {
	f := flash{Msg: fmt.Sprintf(msg, args...)}
	if err != nil {
		f.Err = true
		if f.Msg != "" {
			f.Msg += " "
		}
		f.Msg += "Error: " + err.Error()
	}
	c.log.Info("console action", "action", action, "result", f.Msg, "remote", c.client(r))
	c.sessions.setFlash(sid, f)
	http.Redirect(w, r, localPath(r.PostForm.Get("back")), http.StatusSeeOther)
}

// readForm parses r's form, of maxForm at most, and answers 400 saying
// what was wrong when it cannot.
func (c *Console) readForm(w http.ResponseWriter, r *http.Request) bool {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	err := r.ParseForm()
	if _, big := errors.AsType[*http.MaxBytesError](err); big {
		c.refuse(w, r, http.StatusBadRequest, fmt.Sprintf("The form is larger than %d KiB: select fewer dead letters at once.", maxForm>>10))
		return false
	}
	if err != nil {
		c.refuse(w, r, http.StatusBadRequest, "The form could not be read: "+err.Error())
		return false
	}
	return true
}

// localPath is p when it is a path of this console, else "/": a form
// cannot send an operator elsewhere.
func localPath(p string) string {
	if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") || strings.ContainsAny(p, "\\\r\n") {
		return "/"
	}
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "" || u.Host != "" {
		return "/"
	}
	return p
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, sid string) {
	c.sessions.delete(sid)
	c.clearSessionCookie(w, c.overHTTPS(r))
	c.log.Info("console logout", "remote", c.client(r))
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (c *Console) pause(w http.ResponseWriter, r *http.Request, sid string) {
	stopped, was, err := ops.StopRetries(r.Context(), c.st)
	switch {
	case stopped && errors.Is(err, ops.ErrKept):
		// Paused all the same: said first, what was not kept after.
		c.finish(w, r, sid, "pause", nil, "Retries paused: %s deleted. Retry documents wait; first sends go on. "+
			"But %v. To resume with its settings (%s), run retries start with them.", order.ControlKey, err, was)
	case err != nil:
		c.finish(w, r, sid, "pause", err, "Retries could not be paused.")
	case stopped && was != (order.Control{}):
		c.finish(w, r, sid, "pause", nil, "Retries paused: %s deleted. Retry documents wait; first sends go on. "+
			"Its settings (%s) are kept: Resume, here or on any instance, or retries start without flags, gives them back.", order.ControlKey, was)
	case stopped:
		c.finish(w, r, sid, "pause", nil, "Retries paused: %s deleted. Retry documents wait; first sends go on.", order.ControlKey)
	default:
		c.finish(w, r, sid, "pause", nil, "Retries were paused already.")
	}
}

func (c *Console) resume(w http.ResponseWriter, r *http.Request, sid string) {
	started, set, err := ops.ResumeRetries(r.Context(), c.st)
	resumed := fmt.Sprintf("Retries resumed: %s created. ", order.ControlKey)
	if set != (order.Control{}) {
		resumed = fmt.Sprintf("Retries resumed: %s created with the settings the pause removed (%s). ", order.ControlKey, set)
	}
	switch {
	case started && err != nil:
		// Armed all the same: said first, the leftover after.
		c.finish(w, r, sid, "resume", nil, "%sThe waiting retries go out as they are due. But %v.", resumed, err)
	case err != nil:
		c.finish(w, r, sid, "resume", err, "Retries could not be resumed.")
	case started:
		c.finish(w, r, sid, "resume", nil, "%sThe waiting retries go out as they are due.", resumed)
	default:
		c.finish(w, r, sid, "resume", nil, "Retries were armed already.")
	}
}

// errNoKey answers a retry action whose form names no key.
var errNoKey = errors.New("the form names no retry's key")

func (c *Console) runRetry(w http.ResponseWriter, r *http.Request, sid string) {
	key := keyOf(r.PostForm.Get("key"))
	if key == "" {
		c.finish(w, r, sid, "run retry", errNoKey, "No retry was run.")
		return
	}
	flagged, err := ops.RunRetryNow(r.Context(), c.st, key)
	switch {
	case err != nil:
		c.finish(w, r, sid, "run retry", err, "The retry of %s was not run.", key)
	case flagged:
		if held, _ := c.mail.HeldBack(); held {
			// Said so, lest the operator wait for a send that the
			// breaker (or the configuration gate) holds back and
			// puts off again.
			c.finish(w, r, sid, "run retry", nil, "The retry of %s is flagged, but sends are held back now (%s): "+
				"it is put off again and goes out once the email service answers.", key, c.heldWhy())
			return
		}
		c.finish(w, r, sid, "run retry", nil, "The retry of %s is flagged: it is sent within a poll interval, paused or not.", key)
	default:
		c.finish(w, r, sid, "run retry", nil, "The retry of %s was flagged already: it is written again, so that it is sent "+
			"even if its flag went unhandled, and once if it is being sent.", key)
	}
}

// heldWhy names what holds sends back: the configuration gate or the
// circuit breaker.
func (c *Console) heldWhy() string {
	if why := c.mail.Misconfigured(); why != "" {
		return "the email service refuses ordermail's configuration: " + why
	}
	return "the circuit breaker is " + c.mail.BreakerState()
}

const dropWarning = "Dropping a retry deletes it: nothing sends this order's confirmation again, and the order " +
	"stays unconfirmed (and counted so) until the order document itself changes."

func (c *Console) dropRetry(w http.ResponseWriter, r *http.Request, sid string) {
	key := keyOf(r.PostForm.Get("key"))
	if key == "" {
		c.finish(w, r, sid, "drop retry", errNoKey, "No retry was dropped.")
		return
	}
	if r.PostForm.Get("confirm") != "yes" {
		// The version the list or the order's page showed is the one
		// dropped (else the one there now, read for this confirmation):
		// one that changes meanwhile (a new order's retry under the key,
		// another's redrive) is left, and said.
		cas := r.PostForm.Get("cas")
		if n, err := strconv.ParseUint(cas, 10, 64); err != nil || n == 0 {
			ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
			v, err := ops.RetryVersion(ctx, c.st, key)
			cancel()
			if err != nil {
				c.finish(w, r, sid, "drop retry", err, "No retry was dropped.")
				return
			}
			cas = strconv.FormatUint(v, 10)
		}
		c.confirm(w, r, dropConfirmation(key, cas))
		return
	}
	cas, err := strconv.ParseUint(r.PostForm.Get("cas"), 10, 64)
	if err != nil || cas == 0 {
		c.finish(w, r, sid, "drop retry", fmt.Errorf("the retry's version shown is missing or not a number: confirm again"), "No retry was dropped.")
		return
	}
	if !c.tokenAgain(w, r, func() confirmData { return dropConfirmation(key, r.PostForm.Get("cas")) }) {
		return
	}
	if err := ops.DropRetry(r.Context(), c.st, key, cas); err != nil {
		c.finish(w, r, sid, "drop retry", err, "The retry of %s was not dropped.", key)
		return
	}
	c.finish(w, r, sid, "drop retry", nil, "Dropped the retry of %s: its order stays unconfirmed.", key)
}

// selection is what a dead-letter action applies to.
type selection struct {
	ids    []string
	all    bool
	reason string
}

func (s selection) String() string {
	switch {
	case s.all:
		return "every dead letter"
	case s.reason != "":
		return "the dead letters of reason " + s.reason
	case len(s.ids) == 1:
		return "the dead letter of " + ops.Shown(s.ids[0])
	}
	return fmt.Sprintf("%d selected dead letters", len(s.ids))
}

// selected reads a selection: one (a row's button), the checked ids,
// all, or a reason.
func selected(r *http.Request) (selection, error) {
	if one := r.PostForm.Get("one"); one != "" {
		return selection{ids: []string{keyOf(one)}}, nil
	}
	switch scope := r.PostForm.Get("scope"); scope {
	case "selected":
		var ids []string
		for _, v := range r.PostForm["id"] {
			ids = append(ids, keyOf(v))
		}
		if len(ids) == 0 {
			return selection{}, fmt.Errorf("no dead letter is selected: tick some first")
		}
		return selection{ids: ids}, nil
	case "all":
		return selection{all: true}, nil
	case "reason":
		reason := r.PostForm.Get("reason")
		if reason == "" {
			return selection{}, fmt.Errorf("no reason is given: filter the list by one first")
		}
		if err := ops.CheckDeadLetterReason(reason); err != nil {
			return selection{}, err
		}
		return selection{reason: reason}, nil
	default:
		return selection{}, fmt.Errorf("nothing is selected (scope %q)", scope)
	}
}

// deadLetterCount is the dead letters' count for a confirmation's heading,
// read within a page's bound (an action's own is minutes); not ok when the
// store does not give it in time.
func (c *Console) deadLetterCount(r *http.Request) (int, bool) {
	ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
	defer cancel()
	n, err := c.st.Counts(ctx)
	return n.DeadLetters, err == nil
}

func (c *Console) redrive(w http.ResponseWriter, r *http.Request, sid string) {
	sel, err := selected(r)
	if err != nil {
		c.finish(w, r, sid, "redrive", err, "Nothing was redriven.")
		return
	}
	if sel.all || sel.reason != "" {
		show := func() confirmData { return c.redriveConfirmation(r, sel) }
		if r.PostForm.Get("confirm") != "yes" {
			c.confirm(w, r, show())
			return
		}
		if !c.tokenAgain(w, r, show) || !c.startBulk(w, r, sid, "redrive", "a redrive of "+sel.String(), "Nothing was redriven.") {
			return
		}
		defer c.bulk.end()
	}
	var n int
	switch {
	case sel.reason != "":
		n, err = ops.RedriveByReason(r.Context(), c.st, c.now(), sel.reason)
	case sel.all:
		n, err = ops.Redrive(r.Context(), c.st, c.now(), nil, true)
	default:
		n, err = ops.RedriveShown(r.Context(), c.st, c.now(), sel.ids, shownAt(r, c.now()))
	}
	if n == 0 && err != nil {
		c.finish(w, r, sid, "redrive", err, "Nothing was redriven.")
		return
	}
	c.finish(w, r, sid, "redrive", err, "Redrove %d of %s: each is a retry due now, with a fresh attempt budget.", n, sel)
}

func (c *Console) purge(w http.ResponseWriter, r *http.Request, sid string) {
	sel, err := selected(r)
	if err != nil {
		c.finish(w, r, sid, "purge", err, "Nothing was purged.")
		return
	}
	bulk := sel.all || sel.reason != ""
	if r.PostForm.Get("confirm") != "yes" {
		c.confirm(w, r, c.purgeConfirmation(r, sel, c.now()))
		return
	}
	// Shown again on a wrong token: as of the page first shown.
	if !c.tokenAgain(w, r, func() confirmData { return c.purgeConfirmation(r, sel, shownAt(r, c.now())) }) {
		return
	}
	if bulk {
		if !c.startBulk(w, r, sid, "purge", "a purge of "+sel.String(), "Nothing was purged.") {
			return
		}
		defer c.bulk.end()
	}
	var n int
	if sel.reason != "" {
		n, err = ops.PurgeByReason(r.Context(), c.st, sel.reason, shownAt(r, c.now()))
	} else {
		n, err = ops.Purge(r.Context(), c.st, sel.ids, sel.all, shownAt(r, c.now()))
	}
	if n == 0 && err != nil {
		c.finish(w, r, sid, "purge", err, "Nothing was purged.")
		return
	}
	if bulk {
		c.finish(w, r, sid, "purge", err, "Purged %d of %s; any dead-lettered after the page was shown are left.", n, sel)
		return
	}
	c.finish(w, r, sid, "purge", err, "Purged %d of %s.", n, sel)
}

// dropConfirmation is the step before dropping the retry of key, at
// version cas.
func dropConfirmation(key, cas string) confirmData {
	return confirmData{Heading: "Drop the retry of " + ops.Shown(key) + "?", Text: dropWarning,
		Action: "/retries/drop", Button: "Drop the retry", Danger: true, Keys: []string{key},
		Fields: []field{{"key", key}, {"cas", cas}}, Token: true}
}

// redriveConfirmation is the step before a redrive of every dead letter,
// or of every one of a reason.
func (c *Console) redriveConfirmation(r *http.Request, sel selection) confirmData {
	if sel.reason != "" {
		// As for all: every one of the reason, whatever else the list
		// filtered by (a key prefix) and however many came since.
		return confirmData{Heading: "Redrive every “" + sel.reason + "” dead letter?",
			Text: "Every dead letter of this reason, not only those the list showed (a key prefix does not narrow it; those dead-lettered since are taken too), " +
				"becomes a retry due now with a fresh attempt budget, and is sent at once, even while retries are paused.",
			Action: "/deadletters/redrive", Button: "Redrive them", Fields: []field{{"scope", "reason"}, {"reason", sel.reason}}, Token: true}
	}
	// Every dead letter, whatever the list showed: one filtered by a
	// prefix or a reason is no narrower, and what a redrive sends cannot
	// be held back after it.
	d := confirmData{Heading: "Redrive every dead letter?",
		Text: "Every dead letter, not only those a filter shows, becomes a retry due now with a fresh attempt budget, " +
			"and is sent at once, even while retries are paused: a pause does not hold back what a redrive has made due.",
		Action: "/deadletters/redrive", Button: "Redrive them all", Fields: []field{{"scope", "all"}}, Token: true}
	if n, ok := c.deadLetterCount(r); ok {
		d.Heading = fmt.Sprintf("Redrive every dead letter (%d)?", n)
	}
	return d
}

// purgeConfirmation is the step before a purge of sel, shown as of asof:
// those dead-lettered after it are not in its count, and are left; a
// filter does not narrow all, nor a key prefix a reason.
func (c *Console) purgeConfirmation(r *http.Request, sel selection, asof time.Time) confirmData {
	d := confirmData{Heading: "Purge " + sel.String() + "?",
		Text:   "Purging deletes dead letters for good: their orders stay unconfirmed, and nothing sends them again unless an order itself changes.",
		Action: "/deadletters/purge", Button: "Purge for good", Danger: true, Token: true}
	at := field{"asof", strconv.FormatInt(asof.UnixMilli(), 10)}
	switch {
	case sel.all:
		d.Text = "Every dead letter, not only those a filter shows, is deleted for good: their orders stay unconfirmed, " +
			"and nothing sends them again unless an order itself changes. Dead letters written after this page was shown are left."
		d.Fields = []field{{"scope", "all"}, at}
		if n, ok := c.deadLetterCount(r); ok {
			d.Heading = fmt.Sprintf("Purge every dead letter (%d)?", n)
		}
	case sel.reason != "":
		d.Heading = "Purge every “" + sel.reason + "” dead letter?"
		d.Text = "Every dead letter of this reason, not only those the list showed (a key prefix does not narrow it), is deleted for good: " +
			"their orders stay unconfirmed, and nothing sends them again unless an order itself changes. Dead letters written after this page was shown are left."
		d.Fields = []field{{"scope", "reason"}, {"reason", sel.reason}, at}
	default:
		// The operator chose these as the list or the order's page
		// showed them: one dead-lettered again since (redriven and
		// failed anew) is not what was chosen, and is left.
		d.Text += " One dead-lettered again since the list showed it is left."
		d.Fields = []field{{"scope", "selected"}, {"asof", strconv.FormatInt(shownAt(r, c.now()).UnixMilli(), 10)}}
		for _, id := range sel.ids {
			d.Fields = append(d.Fields, field{"id", id})
		}
		d.Keys = sel.ids
	}
	return d
}

// tokenAgain says whether a confirmation carries the admin token, asked
// again for what cannot be undone (a purge, a drop) and for a redrive of
// every dead letter or of a reason: a session cookie alone, which a
// browser also sends to any other service on the console's host whatever
// its port, must not lose orders. Otherwise it shows the confirmation
// again (show), saying why.
func (c *Console) tokenAgain(w http.ResponseWriter, r *http.Request, show func() confirmData) bool {
	why, status := "That is not the admin token: nothing was done.", http.StatusUnauthorized
	want := c.token()
	given := strings.TrimSpace(r.PostForm.Get("token"))
	switch {
	case given == "": // no guess: not counted
		why = "The admin token is asked again for this: nothing was done."
	case !c.loginLimit(r).Allow():
		why, status = "Too many attempts: wait a few seconds and try again.", http.StatusTooManyRequests
	case want == nil:
		why, status = "The admin token file holds no token: actions are off until it does.", http.StatusServiceUnavailable
	default:
		sum := sha256.Sum256([]byte(given))
		if subtle.ConstantTimeCompare(sum[:], want[:]) == 1 {
			return true
		}
		c.log.Warn("console action refused: wrong admin token", "path", r.URL.Path, "remote", c.client(r))
	}
	d := show()
	d.Err, d.status = why, status
	c.confirm(w, r, d)
	return false
}

// shownAt is when the page the operator acted from was made: its form's
// asof, else (a form posted without one) now.
func shownAt(r *http.Request, now time.Time) time.Time {
	if ms, err := strconv.ParseInt(r.PostForm.Get("asof"), 10, 64); err == nil && ms < now.UnixMilli() {
		return time.UnixMilli(ms)
	}
	return now
}

// confirmData is the step before an action that cannot be undone.
type confirmData struct {
	page
	Heading, Text string
	Action        string  // where the confirmed form posts
	Fields        []field // what it posts again
	Keys          []string
	Button        string
	Danger        bool
	Back          string
	Token         bool   // the admin token is asked again (tokenAgain)
	Err           string // why the confirmation is shown again
	status        int    // its status; 200 when 0
}

type field struct{ Name, Value string }

// confirm shows the confirmation page of an action; its form posts the
// same fields again with confirm=yes.
func (c *Console) confirm(w http.ResponseWriter, r *http.Request, d confirmData) {
	d.page = c.pageFor(r, "Confirm", "")
	d.Back = localPath(r.PostForm.Get("back"))
	if len(d.Keys) > 50 {
		d.Keys = append(d.Keys[:50:50], fmt.Sprintf("… and %d more", len(d.Keys)-50))
	}
	c.render(w, "confirm", cmp.Or(d.status, http.StatusOK), d)
}
