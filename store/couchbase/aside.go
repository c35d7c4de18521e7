package couchbase

import (
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Stepping aside: an instance whose own way to the email service is broken
// (a firewall, its proxy, a client certificate of its own) holds back the
// sends of its vBuckets, no attempt spent, until its breaker lets one
// through: their orders would wait as long as it stays broken, while the
// other members send theirs. So a member whose sends have been held for
// StepAsideAfter, while the members document shows another whose sends go
// out, says so in its entry (aside): every member then computes the
// assignment without it, it hands its vBuckets over, and it takes none.
// Its breaker gets no send to probe with meanwhile, so after a while it
// comes back to try (a trial: it takes its share again, and its breaker's
// probe decides), at growing intervals while it stays broken. When every
// member's sends are held (the email service itself is down) nobody steps
// aside: moving vBuckets would not help.

// stepper is one member's decision to step aside, made at each heartbeat.
type stepper struct {
	after time.Duration // held this long while another's sends go out; < 0: never
	held  func() (held, probing bool)
	log   *slog.Logger

	heldSince time.Time // zero while sends go out
	aside     bool
	until     time.Time // aside until then; then a trial
	trial     bool      // back from aside, its breaker not yet closed
	probed    bool      // in the trial its breaker let a probe through
	trials    *backoff.ExponentialBackOff
}

// maxTrialFactor caps the time between trials at this many StepAsideAfter.
const maxTrialFactor = 16

func newStepper(after time.Duration, held func() (held, probing bool), log *slog.Logger) *stepper {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.Multiplier, b.RandomizationFactor = after, 2, 0.1
	b.MaxInterval = maxTrialFactor * after
	b.Reset()
	return &stepper{after: after, held: held, log: log, trials: b}
}

// next is what this member's entry says at now, from its sends now and
// the members document as its previous heartbeat read it: whether its
// sends are held (its breaker open, or probing), and whether it stands
// aside.
func (s *stepper) next(now time.Time, doc membersDoc, me string) (held, aside bool) {
	open, probing := s.held()
	if !open && !probing {
		if !s.heldSince.IsZero() {
			if s.aside || s.trial {
				s.log.Info("sends go out again: this instance keeps its vBuckets")
			}
			s.heldSince, s.aside, s.trial, s.probed = time.Time{}, false, false, false
			s.trials.Reset()
		}
		return false, false
	}
	if s.heldSince.IsZero() {
		s.heldSince = now
	}
	s.probed = s.probed || (s.trial && probing)
	switch {
	case s.after < 0:
	case s.aside && !now.Before(s.until):
		// A trial: its share back, until its breaker's probe fails (or
		// a whole StepAsideAfter, when no send comes to probe with).
		s.aside, s.trial, s.probed, s.heldSince = false, true, false, now
		s.log.Info("trying the email service again: taking vBuckets back while the breaker probes")
	case s.aside && doc.mixed(now):
		// A member of an older build came: it would give this one
		// vBuckets whatever its entry says (mixed).
		s.aside, s.trial = false, false
		s.log.Info("taking vBuckets back: a member of an older build, which does not leave members aside out, shares the feed")
	case !s.aside && (now.Sub(s.heldSince) >= s.after || s.trial && s.probed && open):
		if other := doc.sendingPeer(now, me); other != "" && !doc.mixed(now) {
			wait := s.trials.NextBackOff()
			s.aside, s.trial, s.until = true, false, now.Add(wait)
			s.log.Warn("stepping aside: this instance's sends are held back while another member's go out; its vBuckets go to the others",
				"held_for", now.Sub(s.heldSince).Round(time.Millisecond), "sending_member", other, "try_again_in", wait.Round(time.Second))
		}
	}
	return true, s.aside
}

// sendingPeer names a member other than me whose sends go out
// (store.Member.Sends), or "".
func (d membersDoc) sendingPeer(now time.Time, me string) string {
	for _, m := range d.members(now) {
		if m.Name != me && m.store().Sends() {
			return m.Name
		}
	}
	return ""
}

// assignable is the sorted names of the members the vBuckets are shared
// among at now: the live ones not aside, or every live one when all are,
// or while a member of an older build lives (mixed).
func (d membersDoc) assignable(now time.Time) []string {
	live := d.live(now)
	if d.mixed(now) {
		return live
	}
	var out []string
	for _, name := range live {
		if !d.Members[name].Aside {
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		return live
	}
	return out
}
