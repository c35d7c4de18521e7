package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ordermail/ordermail/app"
	"github.com/ordermail/ordermail/ops"
	"github.com/ordermail/ordermail/order"
	"github.com/ordermail/ordermail/store"
	"github.com/ordermail/ordermail/store/embedded"
	"github.com/ordermail/ordermail/timer"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func retriesCommand(stdout, stderr io.Writer) *ffcli.Command {
	var ctl order.Control
	var start *ffcli.Command
	start = storeCommand("start", "ordermail retries start --store URL [--interval D] [--quantum D]",
		"create allow_retrys: the timer retries failed sends (the settings go into the document)", stderr,
		func(ctx context.Context, st store.Store, _ []string) error {
			started, set, dropped, err := ops.StartRetries(ctx, st, ctl)
			switch {
			case started && errors.Is(err, ops.ErrKept):
				fmt.Fprintln(stderr, "warning:", err)
			case err != nil:
				return err
			}
			switch {
			case started && set != (order.Control{}) && ctl == (order.Control{}):
				fmt.Fprintf(stdout, "retries started: created %s with the settings the pause removed (%s)\n", order.ControlKey, set)
			case started:
				fmt.Fprintln(stdout, "retries started: created", order.ControlKey)
			case ctl != (order.Control{}):
				fmt.Fprintf(stdout, "retries already started; settings in %s now: %s\n", order.ControlKey, set)
			default:
				fmt.Fprintln(stdout, "retries already started")
			}
			if dropped != (order.Control{}) {
				fmt.Fprintf(stdout, "the settings the pause kept (%s) are dropped: the flags given stand\n", dropped)
			}
			return nil
		},
		// A store that does not exist yet is a typo in --store, or the
		// wrong directory: made here, it would say "started" while the
		// service's own stays paused.
		existing(),
		checkArgs(func(args []string) error {
			if err := ctl.Validate(); err != nil {
				return badSetting(err)
			}
			// 0 is "not set" in allow_retrys: given, it would be taken
			// for left out, and the setting in effect kept, unsaid.
			var zero error
			start.FlagSet.Visit(func(f *flag.Flag) {
				if d, ok := f.Value.(flag.Getter).Get().(time.Duration); ok && d == 0 && zero == nil {
					zero = usageErrorf("%s: 0 is not a setting; leave the flag out for the service's own", f.Name)
				}
			})
			if zero != nil {
				return zero
			}
			return noArgs(args)
		}))
	start.FlagSet.DurationVar(&ctl.Interval, "interval", 0, "sweep at most this often (default: the service's --timer-interval)")
	start.FlagSet.DurationVar(&ctl.Quantum, "quantum", 0, "retry documents without nextAttemptAt are due after this (default: the service's --retry-quantum)")

	stop := storeCommand("stop", "ordermail retries stop --store URL",
		"delete allow_retrys: retries pause (documents wait), first sends go on", stderr,
		func(ctx context.Context, st store.Store, _ []string) error {
			stopped, was, err := ops.StopRetries(ctx, st)
			switch {
			case stopped && errors.Is(err, ops.ErrKept):
				fmt.Fprintln(stdout, "retries stopped: deleted", order.ControlKey)
				fmt.Fprintf(stderr, "warning: %v\n", err)
				if was != (order.Control{}) {
					fmt.Fprintf(stderr, "to resume with them: retries start%s\n", startFlags(was))
				}
				return nil
			case err != nil:
				return err
			}
			if stopped {
				fmt.Fprintln(stdout, "retries stopped: deleted", order.ControlKey)
				if was != (order.Control{}) {
					fmt.Fprintf(stdout, "its settings (%s) are kept: retries start without flags gives them back\n", was)
				}
			} else {
				fmt.Fprintln(stdout, "retries already stopped")
			}
			return nil
		},
		existing(), checkArgs(noArgs))

	var asJSON bool
	var quantum time.Duration
	var status *ffcli.Command
	status = storeCommand("status", "ordermail retries status --store URL [--json]", "show the timer, the backlog, why sends fail and whether a service runs", stderr,
		func(ctx context.Context, st store.Store, _ []string) error {
			now := time.Now()
			s, err := ops.ReadStatus(ctx, st, now, quantum)
			if err != nil {
				return err
			}
			// The store URL as parsed (flag or environment) names the lock.
			v := newStatusView(s, now, probeService(app.StoreConfig{URL: status.FlagSet.Lookup("store").Value.String()}))
			if asJSON {
				return json.NewEncoder(stdout).Encode(v)
			}
			return printStatus(stdout, v, quantum)
		},
		readsOnly(), checkArgs(func(args []string) error {
			if quantum <= 0 {
				return usageErrorf("retry-quantum: %s is not positive", quantum)
			}
			return noArgs(args)
		}))
	status.FlagSet.BoolVar(&asJSON, "json", false, "print one JSON object")
	status.FlagSet.DurationVar(&quantum, "retry-quantum", order.DefaultQuantum, "the service's --retry-quantum, to tell which of the sample's retry documents are due")

	return &ffcli.Command{
		Name:        "retries",
		ShortUsage:  "ordermail retries start|stop|status --store URL",
		ShortHelp:   "start or pause retries (create or delete allow_retrys), or show their status",
		FlagSet:     newFlagSet("retries", stderr),
		Subcommands: []*ffcli.Command{start, stop, status},
	}
}

// statusView is what `retries status` shows: ops.Status with its fields
// typed for a reader (the control document as settings, times in RFC 3339,
// arrays never null) and whether a service runs on the store.
type statusView struct {
	ReadAt            string            `json:"readAt"`
	TimerArmed        bool              `json:"timerArmed"`
	Paused            bool              `json:"paused"`
	Control           *controlView      `json:"control,omitempty"`              // allow_retrys; absent while paused
	ResumeWith        *controlView      `json:"resumeWith,omitempty"`           // paused: the settings a resume gives back, kept by the pause
	ResumeWithUnread  string            `json:"resumeWithUnreadable,omitempty"` // paused: why the settings the pause kept could not be read
	RetryDocs         int               `json:"retryDocs"`                      // pending retries
	RetryFlagged      int               `json:"retryFlagged"`
	DueNow            int               `json:"dueNow"`
	OldestDueAt       string            `json:"oldestDueAt,omitempty"` // the longest-waiting due retry, flagged or not; absent when none is due
	DeadLetters       int               `json:"deadLetters"`
	OrdersPaid        int               `json:"ordersPaid"`
	OrdersConfirmed   int               `json:"ordersConfirmed"`
	OrdersUnconfirmed int               `json:"ordersUnconfirmed"`
	TopFailures       []ops.ReasonCount `json:"topFailureReasons"`
	Service           serviceView       `json:"service"`
	Sweeper           *sweeperView      `json:"sweeper,omitempty"`     // the instance that runs the timer's sweep; absent when none does
	SweeperLeft       *sweeperLeftView  `json:"sweeperLeft,omitempty"` // none does: the last one, which gave the lease up; absent when none ever did
	Members           []memberView      `json:"members,omitempty"`     // Couchbase without --instance: the instances sharing the vBuckets

	readAt     time.Time     // ReadAt, for the human-readable form: ages are as of it
	oldestDue  time.Time     // OldestDueAt, likewise
	resumeWith order.Control // ResumeWith, likewise
}

// sweeperView is the sweep lease: who holds it and until when.
type sweeperView struct {
	Holder    string `json:"holder"`
	ExpiresAt string `json:"expiresAt"`
	Expired   bool   `json:"expired"` // it stopped renewing: another instance takes over at its next tick
}

// sweeperLeftView is the last sweeper, which gave the lease up: who, when,
// why (timer.LeftBreaker and the like, or its failing sweeps' error).
type sweeperLeftView struct {
	Holder string `json:"holder"`
	At     string `json:"at"`
	Why    string `json:"why"`

	at time.Time // At, for the human-readable form
}

// memberView is one instance sharing the feed, as its heartbeat shows it.
type memberView struct {
	Name                string  `json:"name"`
	State               string  `json:"state"` // store.Member.State: live, aside, stale or leaving
	HeartbeatAgeSeconds float64 `json:"heartbeatAgeSeconds"`
	VBuckets            int     `json:"vbuckets"`            // it owned at its last heartbeat
	SendsHeld           bool    `json:"sendsHeld,omitempty"` // at its last heartbeat: circuit breaker open, or configuration refused
}

// controlView is allow_retrys read as the service reads it.
type controlView struct {
	Interval string `json:"interval,omitempty"` // sweep at most this often; absent: the service's --timer-interval
	Quantum  string `json:"quantum,omitempty"`  // absent: the service's --retry-quantum
	Invalid  string `json:"invalid,omitempty"`  // why the service ignores the document's settings
}

// startFlags are the flags of `retries start` that set ctl's settings.
func startFlags(ctl order.Control) string {
	var f string
	if ctl.Interval > 0 {
		f += " --interval " + ctl.Interval.String()
	}
	if ctl.Quantum > 0 {
		f += " --quantum " + ctl.Quantum.String()
	}
	return f
}

// newControlView is ctl's settings as controlView shows them.
func newControlView(ctl order.Control) *controlView {
	v := &controlView{}
	if ctl.Interval > 0 {
		v.Interval = ctl.Interval.String()
	}
	if ctl.Quantum > 0 {
		v.Quantum = ctl.Quantum.String()
	}
	return v
}

// serviceView says whether a service runs on the store: Running is true or
// false, or null (nil) when this command cannot tell, with a Note.
type serviceView struct {
	Running *bool  `json:"running"`
	Note    string `json:"note,omitempty"`
}

// ptr is b for serviceView's Running, a pointer of its own each time: a
// shared one would be one variable every view could change.
func ptr(b bool) *bool { return &b }

func newStatusView(s ops.Status, now time.Time, svc serviceView) statusView {
	v := statusView{
		ReadAt: now.UTC().Format(time.RFC3339), readAt: now, TimerArmed: s.TimerArmed, Paused: s.Paused,
		RetryDocs: s.RetryDocs, RetryFlagged: s.RetryFlagged, DueNow: s.DueNow, DeadLetters: s.DeadLetters,
		OrdersPaid: s.OrdersPaid, OrdersConfirmed: s.OrdersConfirmed, OrdersUnconfirmed: s.OrdersUnconfirmed,
		TopFailures: s.TopFailures, Service: svc,
	}
	if v.TopFailures == nil {
		v.TopFailures = []ops.ReasonCount{}
	}
	if sw := s.Sweeper; sw != nil {
		v.Sweeper = &sweeperView{Holder: sw.Holder, ExpiresAt: sw.ExpiresAt.UTC().Format(time.RFC3339Nano), Expired: sw.Expired}
	}
	if l := s.SweeperLeft; l != nil {
		v.SweeperLeft = &sweeperLeftView{Holder: l.Holder, At: l.At.UTC().Format(time.RFC3339), Why: l.Why, at: l.At}
	}
	live, aside := 0, 0
	for _, m := range s.Members {
		state := m.State()
		if m.Live {
			live++
		}
		if state == "aside" {
			aside++
		}
		v.Members = append(v.Members, memberView{Name: m.Name, State: state,
			HeartbeatAgeSeconds: m.HeartbeatAge.Round(time.Millisecond).Seconds(), VBuckets: m.Partitions, SendsHeld: m.Live && m.Held})
	}
	if len(s.Members) > 0 {
		// Couchbase instances sharing the feed: their heartbeats say.
		// (With --instance i/n they do not heartbeat: "cannot tell" stands.)
		v.Service = serviceView{Running: ptr(live > 0), Note: fmt.Sprintf("%d live members of %d heartbeating lately", live, len(s.Members))}
		if aside > 0 {
			v.Service.Note += fmt.Sprintf(", %d stepped aside (its sends are held back: see its log)", aside)
		}
	}
	if s.OldestDueAt != nil {
		v.oldestDue = *s.OldestDueAt
		v.OldestDueAt = v.oldestDue.UTC().Format(time.RFC3339)
	}
	if s.ResumeWith != (order.Control{}) {
		v.resumeWith = s.ResumeWith
		v.ResumeWith = newControlView(s.ResumeWith)
	}
	v.ResumeWithUnread = s.KeptUnread
	if s.TimerArmed {
		ctl, err := order.DecodeControl([]byte(s.Control))
		v.Control = newControlView(ctl)
		if err != nil {
			v.Control.Invalid = err.Error()
		}
	}
	return v
}

// probeService tells whether a service runs on the store storeURL names. On
// the embedded store the running service holds the process lock: a lock
// this command can take (and gives back at once) means none runs.
func probeService(sc app.StoreConfig) serviceView {
	path, ok := sc.EmbeddedPath()
	if !ok {
		return serviceView{
			Note: "no instance heartbeats on this cluster: none runs, or they run with --instance i/n, which holds no lock this command can test; see their metrics endpoints"}
	}
	lock := embedded.NewProcessLock(path)
	if _, err := os.Stat(lock.Path()); errors.Is(err, os.ErrNotExist) {
		return serviceView{Running: ptr(false)} // a running service keeps its lock file
	}
	took, err := lock.TryLock()
	if err != nil {
		return serviceView{Note: err.Error()}
	}
	if took {
		lock.Unlock()
		return serviceView{Running: ptr(false)}
	}
	return serviceView{Running: ptr(true), Note: "a process holds " + lock.Path()}
}

func printStatus(w io.Writer, v statusView, quantum time.Duration) error {
	line := func(name, format string, a ...any) {
		fmt.Fprintf(w, "%-20s%s\n", name+":", fmt.Sprintf(format, a...))
	}
	if c := v.Control; c != nil {
		line("retries", "armed (%s exists)", order.ControlKey)
		switch {
		case c.Invalid != "":
			line("  settings", "ignored by the service: %s", c.Invalid)
		default:
			setting := func(v, otherwise string) string {
				if v == "" {
					return otherwise
				}
				return v + " (from " + order.ControlKey + ")"
			}
			line("  interval", "%s", setting(c.Interval, "the service's --timer-interval"))
			line("  quantum", "%s", setting(c.Quantum, fmt.Sprintf("the service's --retry-quantum (%s assumed here)", quantum)))
		}
	} else {
		line("retries", "paused (no %s: retry documents wait)", order.ControlKey)
		if v.ResumeWith != nil {
			line("  on resuming", "%s (kept by the pause; retries start without flags gives them back)", v.resumeWith)
		}
		if v.ResumeWithUnread != "" {
			line("  on resuming", "unknown: the settings the pause kept could not be read (%s)", v.ResumeWithUnread)
		}
	}
	oldest := "none due"
	if !v.oldestDue.IsZero() {
		oldest = fmt.Sprintf("due for %s (since %s)", v.readAt.Sub(v.oldestDue).Round(time.Second), v.OldestDueAt)
	}
	line("pending retries", "%d (%d due now, %d flagged)", v.RetryDocs, v.DueNow, v.RetryFlagged)
	line("oldest due", "%s", oldest)
	line("dead letters", "%d", v.DeadLetters)
	line("orders paid", "%d (%d confirmed, %d not confirmed: dead letters and purged included)", v.OrdersPaid, v.OrdersConfirmed, v.OrdersUnconfirmed)
	switch running := v.Service.Running; {
	case running == nil:
		line("service", "unknown (%s)", v.Service.Note)
	case *running:
		line("service", "running (%s)", v.Service.Note)
	default:
		line("service", "not running")
	}
	switch sw, left := v.Sweeper, v.SweeperLeft; {
	case sw == nil && left != nil:
		line("sweeper", "none: %s gave the sweep lease up %s ago (%s): %s", shown(left.Holder),
			v.readAt.Sub(left.at).Round(time.Second), left.At, shown(left.Why))
		if strings.HasPrefix(left.Why, timer.LeftHeld) {
			fmt.Fprintf(w, "%20s%s\n", "", "due retries wait unflagged until its probe gets through, or another instance sweeps")
		}
	case sw == nil:
		line("sweeper", "none (no instance holds the sweep lease)")
	case sw.Expired && !v.TimerArmed:
		line("sweeper", "%s (lease expired at %s: nobody sweeps while retries are paused)", shown(sw.Holder), sw.ExpiresAt)
	case sw.Expired:
		line("sweeper", "%s (lease expired at %s: the next instance to tick takes over)", shown(sw.Holder), sw.ExpiresAt)
	default:
		line("sweeper", "%s (lease until %s)", shown(sw.Holder), sw.ExpiresAt)
	}
	if len(v.Members) > 0 {
		fmt.Fprintln(w, "members:")
		fmt.Fprintf(w, "  %-8s  %9s  %8s  %-5s  %s\n", "STATE", "HEARTBEAT", "VBUCKETS", "SENDS", "NAME")
		for _, m := range v.Members {
			sends := "-" // not live: it sends nothing
			switch {
			case m.SendsHeld:
				sends = "held"
			case m.State == "live":
				sends = "out"
			}
			fmt.Fprintf(w, "  %-8s  %8.1fs  %8d  %-5s  %s\n", m.State, m.HeartbeatAgeSeconds, m.VBuckets, sends, shown(m.Name))
		}
	}
	if len(v.TopFailures) == 0 {
		_, err := fmt.Fprintln(w, "top failure reasons: none")
		return err
	}
	fmt.Fprintln(w, "top failure reasons:")
	width := len("COUNT") // the counts right-aligned under it, however large
	for _, r := range v.TopFailures {
		width = max(width, len(strconv.Itoa(r.Count)))
	}
	fmt.Fprintf(w, "  %*s  %s\n", width, "COUNT", "REASON")
	for _, r := range v.TopFailures {
		fmt.Fprintf(w, "  %*d  %s\n", width, r.Count, shown(r.Reason))
	}
	return nil
}
