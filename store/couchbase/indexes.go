package couchbase

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/order"
)

// indexUse is an index setup creates and a statement of ordermail's that
// reads it, and what that statement does without it.
type indexUse struct {
	coll, index, statement, without string
	params                          map[string]any
}

// whyWithout is what the two statements that read ix_retry_why do without it.
const whyWithout = "the console's retries of one reason and the status's reasons read every retry document"

func (s *Store) indexUses() []indexUse {
	retry, dead := s.keyspace(order.Retry), s.keyspace(order.DeadLetter)
	due := sweepParams(time.Now(), 15*time.Second, 1)
	uses := []indexUse{
		{order.Retry, "ix_retry_due_next", sweepStatement(retry), "the sweep reads every retry document", due},
		{order.Retry, "ix_retry_due_ts", sweepStatement(retry), "the sweep reads every retry document", due},
		{order.Retry, "ix_retry_fire", flaggedCountStatement(retry), "the counts, the backlog and the sweep's pace read every retry document; without a primary index, the sweep flags one batch a tick, unpaced", due},
		{order.Inbound, "ix_inbound_paid", paidCountStatement(s.keyspace(order.Inbound)), "the counts read every order", nil},
		{order.Retry, "ix_retry_why", retriesStatement(retry), whyWithout, map[string]any{"why": "HTTP 503", "after": "", "limit": 1}},
		{order.Retry, "ix_retry_why", retryReasonsStatement(retry), whyWithout, map[string]any{"control": order.ControlKey}},
		{order.DeadLetter, "ix_deadletter_reason", deadLettersStatement(dead), "--reason and the console's filter read every dead letter",
			map[string]any{"reason": order.ReasonExhausted, "after": "", "limit": 1}},
		{order.DeadLetter, "ix_deadletter_why", deadReasonsStatement(dead), "the status's reasons read every dead letter", nil},
	}
	for _, c := range []string{order.Inbound, order.Retry, order.DeadLetter} {
		uses = append(uses, indexUse{c, "#primary", scanStatement(s.keyspace(c)),
			"the tools and the console cannot list " + c + " without a role for sequential scans", map[string]any{"after": "", "limit": 1}})
	}
	return uses
}

// MissingIndexes names the indexes setup creates that the cluster's query
// service does not use for the statements that need them, each with what
// those statements do without it: a cluster set up by an earlier release
// lacks the ones added since, until `ordermail setup` runs again. It asks
// the query service for each statement's plan (EXPLAIN), which reads no
// document.
func (s *Store) MissingIndexes(ctx context.Context) ([]string, error) {
	missing, err := s.missingIndexes(ctx)
	var out []string
	for _, m := range missing {
		out = append(out, m.say)
	}
	return out, err
}

// missingIndex is an index a statement does not get, and what to say of it.
type missingIndex struct{ name, coll, say string }

func (s *Store) missingIndexes(ctx context.Context) ([]missingIndex, error) {
	var missing []missingIndex
	named := map[[2]string]bool{} // an index that several statements read is named once
	for _, u := range s.indexUses() {
		if named[[2]string{u.coll, u.index}] {
			continue
		}
		var plan json.RawMessage
		err := s.query(ctx, "EXPLAIN "+u.statement, u.params, func(raw json.RawMessage) error { plan = raw; return nil })
		switch {
		case err != nil && (errors.Is(err, gocb.ErrPlanningFailure) || errors.Is(err, gocb.ErrIndexNotFound)):
			// No plan at all: the query service finds no index for it.
			missing = append(missing, missingIndex{u.index, u.coll, fmt.Sprintf("%s on %s (%s; its plan: %v)", u.index, u.coll, u.without, err)})
			named[[2]string{u.coll, u.index}] = true
		case err != nil:
			// Not an index that is missing: a timeout, an outage, a right
			// the user lacks, a statement the service cannot parse.
			return nil, fmt.Errorf("explain the statement that reads %s: %w", u.index, err)
		case !strings.Contains(string(plan), `"`+u.index+`"`):
			missing = append(missing, missingIndex{u.index, u.coll, u.index + " on " + u.coll + " (" + u.without + ")"})
			named[[2]string{u.coll, u.index}] = true
		}
	}
	return missing, nil
}
