package console

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ordermail/ordermail/lease"
	"github.com/ordermail/ordermail/mailer"
	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/timer"
)

// readTimeout bounds the store reads of one page.
const readTimeout = 10 * time.Second

// page is what every page shows.
type page struct {
	Title    string
	Nav      string // overview, retries, deadletters or order
	ReadOnly bool   // no admin token: no actions at all
	LoggedIn bool   // actions are offered
	CSRF     string // the session's, for every form that acts
	Flash    flash
	Here     string // this page's path and query: where an action leads back to
	// ShownAt is when the page was made (Unix ms): a purge from it leaves
	// what was dead-lettered since, which the operator has not seen.
	ShownAt int64
	// Bulk is the bulk redrive or purge under way on this console.
	Bulk string
}

func (c *Console) pageFor(r *http.Request, title, nav string) page {
	p := page{Title: title, Nav: nav, ReadOnly: c.ReadOnly(), Here: r.URL.RequestURI(), ShownAt: c.now().UnixMilli(),
		Bulk: c.bulk.under(c.now())}
	if p.ReadOnly {
		return p
	}
	c.token() // a token changed ends every session
	if id := c.sessionID(r); id != "" {
		if s, ok := c.sessions.get(id); ok {
			p.LoggedIn, p.CSRF = true, s.csrf
			p.Flash = c.sessions.takeFlash(id)
		}
	}
	return p
}

// render writes the page name with data; a template that fails writes
// nothing of itself.
func (c *Console) render(w http.ResponseWriter, name string, status int, data any) {
	var b bytes.Buffer
	if err := c.pages[name].ExecuteTemplate(&b, "layout", data); err != nil {
		c.log.Error("render", "page", name, "error", err)
		http.Error(w, "the page could not be rendered; see the log", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}

// messageData is a page that says one thing.
type messageData struct {
	page
	Heading, Text string
}

func (c *Console) refuse(w http.ResponseWriter, r *http.Request, status int, text string) {
	c.render(w, "message", status, messageData{page: c.pageFor(r, http.StatusText(status), ""),
		Heading: http.StatusText(status), Text: text})
}

// overviewData is the overview page.
type overviewData struct {
	page
	Status   *ops.Status
	StoreErr string
	// Retries is whether retries are armed, read first: a store too slow
	// to count the rest still shows Pause and Resume.
	Retries       *ops.RetryState
	Breaker       string
	Misconfigured string
	Chart         Chart
	Sweeper       *sweeper
	LeaseErr      string
	Self          string // this process, as the lease names it (host/pid)
	SelfSweep     string // its part in sweeping: active, standby, paused, held; "" not known yet
	SelfFeed      bool   // it runs the feed (not a standby)
	Embedded      bool
	Feed          *store.FeedStats
	Reasons       []reasonLink
}

// sweeper is the holder of the timer's lease: the one instance that flags
// due retries.
type sweeper struct {
	Owner     string
	This      bool // this process
	RenewedAt time.Time
	ExpiresAt time.Time
	Expired   bool
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
	defer cancel()
	now := c.now()
	d := overviewData{page: c.pageFor(r, "Overview", "overview"), Embedded: c.embedded,
		Breaker: c.mail.BreakerState(), Misconfigured: c.mail.Misconfigured(),
		Chart: chart(c.samples.intervals(now), now), Self: lease.Process()}
	s, err := ops.ReadStatus(ctx, c.st, now, c.quantum())
	if err != nil {
		d.StoreErr = err.Error()
		if s.Known() {
			d.Retries = &s.RetryState
		}
	} else {
		d.Status, d.Retries = &s, &s.RetryState
		for _, t := range s.TopFailures {
			d.Reasons = append(d.Reasons, reasonLinkOf(t))
		}
	}
	if d.Sweeper, err = c.sweeper(ctx, now); err != nil {
		d.LeaseErr = err.Error()
	}
	if c.tm != nil {
		d.SelfSweep = string(c.tm.Status().Role)
	}
	d.SelfFeed = c.w.Running()
	if fs, ok := c.w.FeedStats(); ok {
		d.Feed = &fs
	}
	c.render(w, "overview", http.StatusOK, d)
}

// quantum is the one in effect: allow_retrys' once the timer has read it,
// else the timer's own as timer.New defaults it.
func (c *Console) quantum() time.Duration {
	if c.tm != nil {
		if q := c.tm.Status().Quantum; q > 0 {
			return q
		}
	}
	if c.timer.Quantum > 0 {
		return c.timer.Quantum
	}
	return order.DefaultQuantum
}

// sweeper reads the timer's lease: who sweeps, and when it last renewed
// the lease (its heartbeat: every tick while retries are armed).
func (c *Console) sweeper(ctx context.Context, now time.Time) (*sweeper, error) {
	h, err := timer.ReadSweeper(ctx, c.st)
	if err != nil {
		return nil, fmt.Errorf("read the sweep lease: %w", err)
	}
	if h.Owner == "" {
		return nil, nil
	}
	return &sweeper{Owner: h.Owner, This: strings.HasPrefix(h.Owner, lease.Process()+"/"),
		ExpiresAt: h.ExpiresAt, RenewedAt: h.RenewedAt(timer.LeaseTTL(c.timer.Interval)), Expired: h.Expired(now)}, nil
}

// reasonLink is a failure reason of the status, linked to its list.
type reasonLink struct {
	Label string
	Count int
	Href  string
}

// reasonLinkOf links a reason as the store tallies it ("dead: permanent_error
// (HTTP 400)", "retrying: HTTP 503") to the list filtered by it.
func reasonLinkOf(t ops.ReasonCount) reasonLink {
	l := reasonLink{Label: t.Reason, Count: t.Count}
	switch {
	case strings.HasPrefix(t.Reason, "dead: "):
		r := strings.TrimPrefix(t.Reason, "dead: ")
		if i := strings.LastIndex(r, " (HTTP "); i > 0 {
			r = r[:i]
		}
		if r == "unreadable dead letter" {
			r = ops.ReasonUnreadable
		}
		l.Href = "/deadletters?reason=" + url.QueryEscape(r)
	case t.Reason == "retrying":
		l.Href = "/retries?reason=" + url.QueryEscape(ops.RetryReasonNone)
	case strings.HasPrefix(t.Reason, "retrying: "):
		l.Href = "/retries?reason=" + url.QueryEscape(strings.TrimPrefix(t.Reason, "retrying: "))
	}
	return l
}

// listData is a page of retries or dead letters.
type listData struct {
	page
	Kind                  string // retries or deadletters
	Reason, Prefix, After string
	Reasons               []string // offered by the filter
	Retries               []retryRow
	DeadLetters           []ops.DeadLetter
	NextHref, FirstHref   string
	Examined              int
	Budgeted              bool
	Budget                int
	Err                   string
	// FilterNote says the reason filtered by is none ordermail gives (a
	// typo, or documents written otherwise, which it still finds).
	FilterNote string
}

// retryRow is a retry and when it is due.
type retryRow struct {
	ops.Retry
	DueAt  time.Time // zero when flagged or unreadable
	DueNow bool
}

func (c *Console) listQuery(r *http.Request) ops.ListQuery {
	q := r.URL.Query()
	return ops.ListQuery{Reason: q.Get("reason"), Prefix: q.Get("prefix"), After: q.Get("after"),
		Limit: c.cfg.PageSize, Budget: c.cfg.ScanBudget}
}

func (c *Console) listData(r *http.Request, kind, title string, q ops.ListQuery) listData {
	d := listData{page: c.pageFor(r, title, kind), Kind: kind, Reason: q.Reason, Prefix: q.Prefix, After: q.After,
		Budget: q.Budget}
	if q.After != "" {
		d.FirstHref = listHref(kind, q.Reason, q.Prefix, "")
	}
	return d
}

func listHref(kind, reason, prefix, after string) string {
	v := url.Values{}
	for k, s := range map[string]string{"reason": reason, "prefix": prefix, "after": after} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if len(v) == 0 {
		return "/" + kind
	}
	return "/" + kind + "?" + v.Encode()
}

// retryReasons are offered by the retries' filter.
var retryReasons = append(httpReasons(mailer.DefaultRetryStatuses),
	ops.RetryReasonNoAnswer, ops.RetryReasonHeldBack, ops.RetryReasonNone, ops.RetryReasonUnreadable)

// httpReasons are the reasons of retries whose last answer was one of
// statuses, as order.RetryDoc.Why gives them.
func httpReasons(statuses []int) []string {
	var r []string
	for _, code := range statuses {
		r = append(r, order.RetryDoc{LastStatus: code}.Why())
	}
	return r
}

func (c *Console) listRetries(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
	defer cancel()
	q := c.listQuery(r)
	d := c.listData(r, "retries", "Retries", q)
	d.Reasons = retryReasons
	if err := ops.CheckRetryReason(q.Reason); q.Reason != "" && err != nil {
		d.FilterNote = "Reason: " + err.Error() + "."
	}
	p, err := ops.ListRetries(ctx, c.st, q)
	if err != nil {
		d.Err = err.Error()
		c.render(w, "list", http.StatusServiceUnavailable, d)
		return
	}
	now := c.now()
	d.ShownAt = now.UnixMilli() // after the read, as for the dead letters
	for _, it := range p.Items {
		row := retryRow{Retry: it}
		if it.Unreadable == "" && !it.FireRetry {
			row.DueAt, row.DueNow = it.DueAt(c.quantum()), it.Due(now, c.quantum())
		}
		d.Retries = append(d.Retries, row)
	}
	d.Examined, d.Budgeted = p.Examined, p.Budgeted
	if p.Next != "" {
		d.NextHref = listHref("retries", q.Reason, q.Prefix, p.Next)
	}
	c.render(w, "list", http.StatusOK, d)
}

func (c *Console) listDeadLetters(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
	defer cancel()
	q := c.listQuery(r)
	d := c.listData(r, "deadletters", "Dead letters", q)
	d.Reasons = ops.DeadLetterReasons
	if err := ops.CheckDeadLetterReason(q.Reason); q.Reason != "" && err != nil {
		d.FilterNote = "Reason: " + err.Error() + "."
	}
	p, err := ops.ListDeadLetterPage(ctx, c.st, q)
	if err != nil {
		d.Err = err.Error()
		c.render(w, "list", http.StatusServiceUnavailable, d)
		return
	}
	d.DeadLetters = p.Items
	d.ShownAt = c.now().UnixMilli() // after the read: one dead-lettered during it is shown, and its actions take it
	d.Examined, d.Budgeted = p.Examined, p.Budgeted
	if p.Next != "" {
		d.NextHref = listHref("deadletters", q.Reason, q.Prefix, p.Next)
	}
	c.render(w, "list", http.StatusOK, d)
}

// orderData is one order's page.
type orderData struct {
	page
	Key     string
	Story   *ops.Story
	Err     string
	Control bool // the key is the timer's control document
}

func (c *Console) order(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Query().Get("key")
	d := orderData{page: c.pageFor(r, "Order "+ops.Shown(key), "order"), Key: key, Control: key == order.ControlKey}
	if key == "" {
		d.Title = "Order"
		c.render(w, "order", http.StatusOK, d)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
	defer cancel()
	s, err := ops.OrderStory(ctx, c.st, key, c.now(), c.quantum())
	switch {
	case errors.Is(err, ops.ErrNothingStored):
		d.Err = err.Error()
		c.render(w, "order", http.StatusNotFound, d)
		return
	case err != nil:
		d.Err = err.Error()
		c.render(w, "order", http.StatusServiceUnavailable, d)
		return
	}
	d.Story = &s
	d.ShownAt = c.now().UnixMilli() // after the read, as for the lists
	c.render(w, "order", http.StatusOK, d)
}

// ready answers GET /readyz: 200 while the store answers, 503 with the
// reason when it does not.
func (c *Console) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "application/json")
	if _, err := c.st.Counts(ctx); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		json.NewEncoder(w).Encode(map[string]string{"status": "store unavailable", "reason": err.Error()})
		return
	}
	json.NewEncoder(w).Encode(map[string]string{"status": "ready"})
}

// stateClass colours an order's state.
func stateClass(state string) string {
	switch state {
	case ops.StateConfirmed:
		return "good"
	case ops.StateRetryScheduled, ops.StateRetryDue, ops.StatePendingFirstSend:
		return "warn"
	case ops.StateNotPaid:
		return ""
	}
	return "bad"
}

// msTime is the time of milliseconds since the epoch; zero for 0.
func msTime(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// when shows a time in UTC to the second; a dash for none.
func when(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05") + " UTC"
}

// ago says how long before now t was, roughly: "3m 20s".
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return span(now.Sub(t))
}

// reltime says "in 3s" or "5m ago".
func reltime(now, t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	if d := t.Sub(now); d > 0 {
		return "in " + span(d)
	}
	return span(now.Sub(t)) + " ago"
}

func span(d time.Duration) string {
	switch d = max(d, 0); {
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm %ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh %dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return strconv.Itoa(int(d/(24*time.Hour))) + "d"
}
