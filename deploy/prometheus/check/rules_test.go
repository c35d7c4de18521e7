package main

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// alerts reads the rules file's alerts: name to rule.
func alerts(t *testing.T) map[string]rulefmt.Rule {
	t.Helper()
	groups, errs := rulefmt.ParseFile("../ordermail-alerts.yml", false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	require.Empty(t, errs)
	out := map[string]rulefmt.Rule{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				out[r.Alert] = r
			}
		}
	}
	return out
}

// TestAlertsAcrossInstances evaluates the alerts' expressions on series
// loaded every 15s for 10 minutes, at the 5th minute: whether the alert's
// condition holds (its `for` aside).
func TestAlertsAcrossInstances(t *testing.T) {
	rules := alerts(t)
	for _, c := range []struct {
		name, alert, series string
		fires               bool
	}{
		{"a member standing aside, its breaker open, does not hide a stuck sweep from the others",
			"OrdermailDueRetriesNotGoingOut", `
ordermail_oldest_due_retry_age_seconds{instance="a"} 600+0x40
ordermail_oldest_due_retry_age_seconds{instance="b"} 600+0x40
ordermail_retries_paused{instance="a"} 0+0x40
ordermail_retries_paused{instance="b"} 0+0x40
ordermail_breaker_open{instance="a"} 1+0x40
ordermail_breaker_open{instance="b"} 0+0x40
ordermail_feed_aside{instance="a"} 1+0x40
ordermail_feed_aside{instance="b"} 0+0x40`, true},
		{"the email service down: its own alert, not this one (a standby's breaker stays closed)",
			"OrdermailDueRetriesNotGoingOut", `
ordermail_oldest_due_retry_age_seconds{instance="a"} 600+0x40
ordermail_oldest_due_retry_age_seconds{instance="standby"} 600+0x40
ordermail_retries_paused{instance="a"} 0+0x40
ordermail_retries_paused{instance="standby"} 0+0x40
ordermail_breaker_open{instance="a"} 1+0x40
ordermail_breaker_open{instance="standby"} 0+0x40`, false},
		{"retries paused: their own alert",
			"OrdermailDueRetriesNotGoingOut", `
ordermail_oldest_due_retry_age_seconds{instance="a"} 600+0x40
ordermail_retries_paused{instance="a"} 1+0x40
ordermail_breaker_open{instance="a"} 0+0x40`, false},
		{"a backlog draining after a pause, the oldest first: no stuck sweep",
			"OrdermailDueRetriesNotGoingOut", `
ordermail_oldest_due_retry_age_seconds{instance="a"} 3000-60x40
ordermail_retries_paused{instance="a"} 0+0x40
ordermail_breaker_open{instance="a"} 0+0x40`, false},
		{"the oldest due retry waits longer and longer",
			"OrdermailDueRetriesNotGoingOut", `
ordermail_oldest_due_retry_age_seconds{instance="a"} 600+15x40
ordermail_retries_paused{instance="a"} 0+0x40
ordermail_breaker_open{instance="a"} 0+0x40`, true},
		{"due retries going out",
			"OrdermailDueRetriesNotGoingOut", `
ordermail_oldest_due_retry_age_seconds{instance="a"} 2+0x40
ordermail_retries_paused{instance="a"} 0+0x40
ordermail_breaker_open{instance="a"} 0+0x40`, false},
		{"a backlog draining after a 20-minute outage, the oldest first at 1s a second, since 90s: no stuck sweep",
			"OrdermailDueRetriesNotGoingOut", `
ordermail_oldest_due_retry_age_seconds{instance="a"} 1200+15x14 1410-15x26
ordermail_retries_paused{instance="a"} 0+0x40
ordermail_breaker_open{instance="a"} 0+0x40`, false},
		{"an instance cut off from the store keeps the figures it last read; the one that reads it has drained them",
			"OrdermailDueRetriesNotGoingOut", `
ordermail_oldest_due_retry_age_seconds{instance="a"} 0+0x40
ordermail_oldest_due_retry_age_seconds{instance="b"} 400+0x40
ordermail_store_up{instance="a"} 1+0x40
ordermail_store_up{instance="b"} 0+0x40
ordermail_retries_paused{instance="a"} 0+0x40
ordermail_breaker_open{instance="a"} 0+0x40`, false},
		{"an instance cut off from the store does not hide the others' stuck sweep",
			"OrdermailDueRetriesNotGoingOut", `
ordermail_oldest_due_retry_age_seconds{instance="a"} 600+15x40
ordermail_oldest_due_retry_age_seconds{instance="b"} 0+0x40
ordermail_store_up{instance="a"} 1+0x40
ordermail_store_up{instance="b"} 0+0x40
ordermail_retries_paused{instance="a"} 0+0x40
ordermail_breaker_open{instance="a"} 0+0x40`, true},
		{"the backlog's stale figures of an instance cut off from the store",
			"OrdermailRetryBacklog", `
ordermail_retry_documents{instance="a"} 0+0x40
ordermail_retry_documents{instance="b"} 5000+0x40
ordermail_store_up{instance="a"} 1+0x40
ordermail_store_up{instance="b"} 0+0x40`, false},
		{"a backlog",
			"OrdermailRetryBacklog", `
ordermail_retry_documents{instance="a"} 5000+0x40`, true},
		{"a backlog, and one refresh of its figures failed just now: still counted (a 'for' is not started again)",
			"OrdermailRetryBacklog", `
ordermail_retry_documents{instance="a"} 5000+0x40
ordermail_store_up{instance="a"} 1+0x19 0 1+0x19`, true},

		{"no instance scraped",
			"OrdermailAbsent", `
up{job="other"} 1+0x40`, true},
		{"an instance scraped, even one down",
			"OrdermailAbsent", `
up{job="ordermail",instance="a"} 0+0x40`, false},
		{"dead letters nobody handled",
			"OrdermailDeadLettersWaiting", `
ordermail_dead_letters{instance="a"} 3+0x40`, true},
		{"no dead letter",
			"OrdermailDeadLettersWaiting", `
ordermail_dead_letters{instance="a"} 0+0x40`, false},
		{"a store node that does not answer",
			"OrdermailStoreNodeUnreachable", `
ordermail_store_nodes_unreachable{instance="a"} 0+0x40
ordermail_store_nodes_unreachable{instance="b"} 1+0x40`, true},
		{"every store node answers",
			"OrdermailStoreNodeUnreachable", `
ordermail_store_nodes_unreachable{instance="a"} 0+0x40`, false},
		{"checkpoints failing to save",
			"OrdermailCheckpointsNotSaved", `
ordermail_feed_checkpoint_save_failures_total{instance="a"} 0+3x40`, true},
		{"checkpoints that failed before, saved since",
			"OrdermailCheckpointsNotSaved", `
ordermail_feed_checkpoint_save_failures_total{instance="a"} 5+0x40`, false},
		{"an instance streams fewer vBuckets than it owns",
			"OrdermailStreamsNotOpen", `
ordermail_feed_streams_open{instance="a"} 300+0x40
ordermail_feed_vbuckets_owned{instance="a"} 341+0x40
ordermail_feed_streams_open{instance="b"} 683+0x40
ordermail_feed_vbuckets_owned{instance="b"} 683+0x40`, true},
		{"every owned vBucket streams",
			"OrdermailStreamsNotOpen", `
ordermail_feed_streams_open{instance="a"} 341+0x40
ordermail_feed_vbuckets_owned{instance="a"} 341+0x40`, false},

		{"orders paid, none confirmed, the email service not failing: stuck",
			"OrdermailOrdersNotConfirmed", `
ordermail_orders_paid{instance="a"} 100+10x40
ordermail_orders_confirmed{instance="a"} 90+0x40
ordermail_outcomes_total{instance="a",outcome="sent"} 90+0x40
ordermail_breaker_open{instance="a"} 0+0x40
ordermail_mail_misconfigured{instance="a"} 0+0x40`, true},
		{"orders paid and confirmed",
			"OrdermailOrdersNotConfirmed", `
ordermail_orders_paid{instance="a"} 100+10x40
ordermail_orders_confirmed{instance="a"} 90+10x40
ordermail_outcomes_total{instance="a",outcome="sent"} 90+10x40
ordermail_breaker_open{instance="a"} 0+0x40
ordermail_mail_misconfigured{instance="a"} 0+0x40`, false},
		{"a backlog growing while another instance than the one that counts sends",
			"OrdermailOrdersNotConfirmed", `
ordermail_orders_paid{instance="a"} 100+10x40
ordermail_orders_confirmed{instance="a"} 90+5x40
ordermail_outcomes_total{instance="a",outcome="sent"} 90+0x40
ordermail_outcomes_total{instance="b",outcome="sent"} 90+10x40
ordermail_breaker_open{instance="a"} 0+0x40
ordermail_mail_misconfigured{instance="a"} 0+0x40`, false},
		{"orders confirmed as old ones expire: the paid count grows while the confirmed one falls",
			"OrdermailOrdersNotConfirmed", `
ordermail_orders_paid{instance="a"} 100+2x40
ordermail_orders_confirmed{instance="a"} 90-1x40
ordermail_outcomes_total{instance="a",outcome="sent"} 90+3x40
ordermail_breaker_open{instance="a"} 0+0x40
ordermail_mail_misconfigured{instance="a"} 0+0x40`, false},
		{"orders written confirmed already (an import): nothing to send",
			"OrdermailOrdersNotConfirmed", `
ordermail_orders_paid{instance="a"} 100+10x40
ordermail_orders_confirmed{instance="a"} 90+10x40
ordermail_feed_lag_changes{instance="a"} 0+0x40
ordermail_events_handled_total{instance="a"} 500+10x40
ordermail_outcomes_total{instance="a",outcome="sent"} 90+0x40
ordermail_breaker_open{instance="a"} 0+0x40
ordermail_mail_misconfigured{instance="a"} 0+0x40`, false},
		{"the store down: its own alert",
			"OrdermailOrdersNotConfirmed", `
ordermail_orders_paid{instance="a"} 100+0x40
ordermail_orders_confirmed{instance="a"} 90+0x40
ordermail_feed_lag_changes{instance="a"} 5+5x40
ordermail_events_handled_total{instance="a"} 500+0x40
ordermail_outcomes_total{instance="a",outcome="sent"} 90+0x40
ordermail_store_up{instance="a"} 0+0x40
ordermail_breaker_open{instance="a"} 0+0x40
ordermail_mail_misconfigured{instance="a"} 0+0x40`, false},
		{"stuck, one instance's last refresh failed: a blip hides nothing",
			"OrdermailOrdersNotConfirmed", `
ordermail_orders_paid{instance="a"} 100+10x40
ordermail_orders_confirmed{instance="a"} 90+0x40
ordermail_outcomes_total{instance="a",outcome="sent"} 90+0x40
ordermail_store_up{instance="a"} 1+0x40
ordermail_store_up{instance="b"} 1+0x19 0 1+0x20
ordermail_breaker_open{instance="a"} 0+0x40
ordermail_mail_misconfigured{instance="a"} 0+0x40`, true},
		{"stuck, one instance cut off from the store: the others' stall is not hidden",
			"OrdermailOrdersNotConfirmed", `
ordermail_orders_paid{instance="a"} 100+10x40
ordermail_orders_confirmed{instance="a"} 90+0x40
ordermail_outcomes_total{instance="a",outcome="sent"} 90+0x40
ordermail_store_up{instance="a"} 1+0x40
ordermail_store_up{instance="b"} 0+0x40
ordermail_breaker_open{instance="a"} 0+0x40
ordermail_mail_misconfigured{instance="a"} 0+0x40`, true},
		{"stuck while old orders expire as fast as new ones are paid: the changes wait, none handled",
			"OrdermailOrdersNotConfirmed", `
ordermail_orders_paid{instance="a"} 100+0x40
ordermail_orders_confirmed{instance="a"} 90-1x40
ordermail_feed_lag_changes{instance="a"} 5+5x40
ordermail_events_handled_total{instance="a"} 500+0x40
ordermail_outcomes_total{instance="a",outcome="sent"} 90+0x40
ordermail_breaker_open{instance="a"} 0+0x40
ordermail_mail_misconfigured{instance="a"} 0+0x40`, true},
		{"stuck while the counts are frozen (a Couchbase count failing)",
			"OrdermailOrdersNotConfirmed", `
ordermail_orders_paid{instance="a"} 100+0x40
ordermail_orders_confirmed{instance="a"} 90+0x40
ordermail_feed_lag_changes{instance="a"} 5+5x40
ordermail_events_handled_total{instance="a"} 500+0x40
ordermail_outcomes_total{instance="a",outcome="sent"} 90+0x40
ordermail_breaker_open{instance="a"} 0+0x40
ordermail_mail_misconfigured{instance="a"} 0+0x40`, true},
		{"changes that need no confirmation go through (orders not paid yet)",
			"OrdermailOrdersNotConfirmed", `
ordermail_orders_paid{instance="a"} 100+0x40
ordermail_orders_confirmed{instance="a"} 90+0x40
ordermail_feed_lag_changes{instance="a"} 5+0x40
ordermail_events_handled_total{instance="a"} 500+5x40
ordermail_outcomes_total{instance="a",outcome="sent"} 90+0x40
ordermail_breaker_open{instance="a"} 0+0x40
ordermail_mail_misconfigured{instance="a"} 0+0x40`, false},
		{"no order paid: nothing to confirm",
			"OrdermailOrdersNotConfirmed", `
ordermail_orders_paid{instance="a"} 100+0x40
ordermail_orders_confirmed{instance="a"} 90+0x40
ordermail_feed_lag_changes{instance="a"} 0+0x40
ordermail_events_handled_total{instance="a"} 500+0x40
ordermail_outcomes_total{instance="a",outcome="sent"} 90+0x40
ordermail_breaker_open{instance="a"} 0+0x40
ordermail_mail_misconfigured{instance="a"} 0+0x40`, false},
		{"the email service down: its own alert",
			"OrdermailOrdersNotConfirmed", `
ordermail_orders_paid{instance="a"} 100+10x40
ordermail_orders_confirmed{instance="a"} 90+0x40
ordermail_outcomes_total{instance="a",outcome="sent"} 90+0x40
ordermail_breaker_open{instance="a"} 1+0x40
ordermail_mail_misconfigured{instance="a"} 0+0x40`, false},
		{"the orders not counted for an hour, the other figures fresh",
			"OrdermailOrderCountsStale", `
ordermail_orders_counted_timestamp_seconds{instance="a"} -3600+0x40
ordermail_orders_counted_timestamp_seconds{instance="b"} -3600+0x40`, true},
		{"the orders counted a moment ago by one instance",
			"OrdermailOrderCountsStale", `
ordermail_orders_counted_timestamp_seconds{instance="a"} -3600+0x40
ordermail_orders_counted_timestamp_seconds{instance="b"} 0+15x40`, false},
		{"changes given up on without their dead letters",
			"OrdermailEventsGivenUp", `
ordermail_events_given_up_total{instance="a"} 0+0x10 1+0x30`, true},

		{"the email service fails the instance that sends",
			"OrdermailBreakerOpen", `
ordermail_breaker_open{instance="a"} 1+0x40
ordermail_breaker_open{instance="standby"} 0+0x40`, true},
		{"retries paused and nothing sent: no probe can tell whether the service is back",
			"OrdermailBreakerOpen", `
ordermail_breaker_open{instance="a"} 1+0x40
ordermail_retries_paused{instance="a"} 1+0x40
ordermail_sends_total{instance="a",status_class="5xx"} 40+0x40`, false},
		{"retries paused, first sends still failing: the service is down",
			"OrdermailBreakerOpen", `
ordermail_breaker_open{instance="a"} 1+0x40
ordermail_retries_paused{instance="a"} 1+0x40
ordermail_sends_total{instance="a",status_class="5xx"} 0+1x40`, true},
		{"only a member standing aside is held: the others send",
			"OrdermailBreakerOpen", `
ordermail_breaker_open{instance="a"} 1+0x40
ordermail_breaker_open{instance="b"} 0+0x40
ordermail_feed_aside{instance="a"} 1+0x40
ordermail_feed_aside{instance="b"} 0+0x40`, false},

		{"nobody sweeps; the one held is a member standing aside",
			"OrdermailNoSweeper", `
ordermail_timer_active{instance="a"} 0+0x40
ordermail_timer_active{instance="b"} 0+0x40
ordermail_timer_held{instance="a"} 1+0x40
ordermail_timer_held{instance="b"} 0+0x40
ordermail_retries_paused{instance="a"} 0+0x40
ordermail_retries_paused{instance="b"} 0+0x40
ordermail_feed_aside{instance="a"} 1+0x40
ordermail_feed_aside{instance="b"} 0+0x40`, true},
		{"the only instance is held by its breaker: the breaker's alert",
			"OrdermailNoSweeper", `
ordermail_timer_active{instance="a"} 0+0x40
ordermail_timer_held{instance="a"} 1+0x40
ordermail_retries_paused{instance="a"} 0+0x40`, false},
		{"one instance sweeps",
			"OrdermailNoSweeper", `
ordermail_timer_active{instance="a"} 1+0x40
ordermail_timer_active{instance="b"} 0+0x40
ordermail_timer_held{instance="a"} 0+0x40
ordermail_timer_held{instance="b"} 0+0x40
ordermail_retries_paused{instance="a"} 0+0x40`, false},

		{"outcomes written without their durability",
			"OrdermailWritesWithoutDurability", `
ordermail_store_writes_without_durability_total{instance="a"} 0+0x10 1+1x30
ordermail_store_writes_without_durability_total{instance="b"} 0+0x40`, true},
		{"every outcome durable",
			"OrdermailWritesWithoutDurability", `
ordermail_store_writes_without_durability_total{instance="a"} 3+0x40`, false},

		{"the sweeper has not swept for minutes",
			"OrdermailSweeperStalled", `
ordermail_timer_active{instance="a"} 1+0x40
ordermail_timer_last_sweep_timestamp_seconds{instance="a"} 0+0x40`, true},
		{"sweeps that always fail hand the lease around: nobody is steadily the sweeper",
			"OrdermailSweeperStalled", `
ordermail_timer_active{instance="a"} ` + strings.Repeat("1 0 0 ", 14) + `
ordermail_retries_paused{instance="a"} ` + strings.Repeat("0 _ 0 ", 14) + `
ordermail_timer_held{instance="a"} 0+0x40
ordermail_timer_last_sweep_timestamp_seconds{instance="a"} 0+0x40`, true},
		{"retries paused: no sweep is due",
			"OrdermailSweeperStalled", `
ordermail_timer_active{instance="a"} 1+0x40
ordermail_retries_paused{instance="a"} 1+0x40
ordermail_timer_last_sweep_timestamp_seconds{instance="a"} 0+0x40`, false},
		{"the sweeper swept a moment ago",
			"OrdermailSweeperStalled", `
ordermail_timer_active{instance="a"} 1+0x40
ordermail_timer_last_sweep_timestamp_seconds{instance="a"} 0+15x40`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, ok := rules[c.alert]
			require.True(t, ok, "no alert %s", c.alert)
			st := promqltest.LoadedStorage(t, "load 15s"+c.series)
			t.Cleanup(func() { st.Close() })
			ng := promqltest.NewTestEngine(t, false, 0, 100000)
			ctx := context.Background()
			q, err := ng.NewInstantQuery(ctx, st, nil, r.Expr, time.Unix(0, 0).Add(5*time.Minute))
			require.NoError(t, err)
			res := q.Exec(ctx)
			require.NoError(t, res.Err)
			v, err := res.Vector()
			require.NoError(t, err)
			assert.Equal(t, c.fires, len(v) > 0, "%s: %s\ngives %v", c.alert, r.Expr, v)
		})
	}
}

// TestAStalledSweepIsOneThatLasts: the sweeper's first sweep may fail (its
// last sweep's time is then 0) and the next, a second later, succeed; a
// page needs the condition to hold a while.
func TestAStalledSweepIsOneThatLasts(t *testing.T) {
	r := alerts(t)["OrdermailSweeperStalled"]
	assert.GreaterOrEqual(t, time.Duration(r.For), time.Minute)
}
