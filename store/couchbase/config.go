package couchbase

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/couchbase/gocb/v2"
	"github.com/ordermail/ordermail/internal/redact"
)

// Config of the Couchbase store.
type Config struct {
	// ConnStr is couchbase://host[,host] or couchbases://host for TLS.
	ConnStr string
	// Username and Password authenticate; PasswordFile, when set, holds the
	// password (a mounted secret) and wins over Password. Never logged.
	Username     string
	Password     string
	PasswordFile string
	// CACertFile is a PEM file of the CA that signed the cluster's
	// certificates, for couchbases:// with a private CA.
	CACertFile string
	// CertFile and KeyFile are a client certificate and its key (PEM)
	// that log in instead of a password, for couchbases:// on a cluster
	// with client certificate authentication: the cluster maps the
	// certificate to its user. Read again when they change.
	CertFile, KeyFile string
	// Bucket holds the collections inbound, retry, deadletter and attempts in Scope.
	// Defaults orders and _default.
	Bucket string
	Scope  string
	// MetadataBucket holds feed checkpoints and leases. Default metadata.
	MetadataBucket string
	// Timeout bounds each KV operation and query. Default 10s; connecting
	// may take three times as long.
	Timeout time.Duration
	// Instance of Instances, when Instances is set (static mode): this
	// instance streams the vBuckets v with v % Instances == Instance, and
	// every instance must be started with the same Instances. Unset
	// (membership mode, the default): the instances of a feed share the
	// vBuckets among themselves through heartbeats in the metadata
	// bucket; a lone instance streams them all.
	Instance, Instances int
	// Member names this instance among the members. Default: host, pid
	// and start time (a restarted instance is a new member).
	Member string
	// MemberTTL: a member that has not renewed its heartbeat for this long
	// is taken for dead, and the others claim its vBuckets. It renews it
	// every fifth of that. Default 10s; keep it well above the instances'
	// clock skew.
	MemberTTL time.Duration
	// StepAsideAfter: a member whose sends have all been held back this
	// long (its breaker or configuration gate open), while another
	// member's go out, hands its vBuckets to the others and tries again
	// later (aside.go). Default 1m; negative: never.
	StepAsideAfter time.Duration
	// CountsTTL is how long Counts and Backlog answer from their last
	// reading, so that a metrics scrape does not run their queries each
	// time. Default 5s; negative: every call queries.
	CountsTTL time.Duration
	// OrderCountsTTL is how long Counts answers the paid and confirmed
	// orders from their last count: counting them goes over an index
	// entry for every paid order, history included. Default 1m (no cache
	// when CountsTTL is negative); negative: every call counts.
	OrderCountsTTL time.Duration
	// Durability is what the cluster holds before it acknowledges an
	// outcome (an order marked confirmed, a retry, a dead letter, an
	// attempt record): "majority" (the default: in memory on a majority
	// of the bucket's copies, so that a failover keeps it),
	// "majorityAndPersistActive", "persistToMajority", or "none" (the
	// active node's memory: a failover before it is replicated loses it,
	// and the feed, past its event, does not bring the order back).
	Durability string
}

// durabilities are the levels Durability names.
var durabilities = map[string]gocb.DurabilityLevel{
	"none":                     gocb.DurabilityLevelNone,
	"majority":                 gocb.DurabilityLevelMajority,
	"majorityAndPersistActive": gocb.DurabilityLevelMajorityAndPersistOnMaster,
	"persistToMajority":        gocb.DurabilityLevelPersistToMajority,
}

func (c Config) withDefaults() Config {
	if c.Bucket == "" {
		c.Bucket = "orders"
	}
	if c.Scope == "" {
		c.Scope = "_default"
	}
	if c.MetadataBucket == "" {
		c.MetadataBucket = "metadata"
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.MemberTTL == 0 {
		c.MemberTTL = 10 * time.Second
	}
	if c.StepAsideAfter == 0 {
		c.StepAsideAfter = time.Minute
	}
	if c.CountsTTL == 0 {
		c.CountsTTL = 5 * time.Second
	}
	if c.Durability == "" {
		c.Durability = "majority"
	}
	if c.OrderCountsTTL == 0 {
		c.OrderCountsTTL = time.Minute
		if c.CountsTTL < 0 {
			c.OrderCountsTTL = c.CountsTTL
		}
	}
	return c
}

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	switch {
	case !strings.HasPrefix(c.ConnStr, "couchbase://") && !strings.HasPrefix(c.ConnStr, "couchbases://"):
		return fmt.Errorf("store: %q is not a couchbase:// or couchbases:// connection string", redact.URL(c.ConnStr))
	case (c.CertFile == "") != (c.KeyFile == ""):
		return errors.New("cb-cert-file and cb-key-file: give both for a client certificate, or neither")
	case c.CertFile != "" && !strings.HasPrefix(c.ConnStr, "couchbases://"):
		return errors.New("cb-cert-file: a client certificate needs a couchbases:// connection string")
	case c.CertFile != "" && (c.Username != "" || c.Password != "" || c.PasswordFile != ""):
		return errors.New("cb-cert-file: the certificate logs in, and the cluster maps it to its user: give no username or password with it")
	case c.CertFile == "" && c.Username == "":
		return errors.New("cb-username: required for a Couchbase store (or a client certificate: cb-cert-file)")
	case c.CertFile == "" && c.Password == "" && c.PasswordFile == "":
		return errors.New("cb-password or cb-password-file: required for a Couchbase store (or a client certificate: cb-cert-file)")
	case c.Timeout < 0:
		return fmt.Errorf("cb-timeout: %s is negative", c.Timeout)
	case c.Durability != "" && !knownDurability(c.Durability):
		return fmt.Errorf("cb-durability: %q is not one of none, majority, majorityAndPersistActive, persistToMajority", c.Durability)
	case c.Instances < 0 || c.Instance < 0 || (c.Instances > 0 && c.Instance >= c.Instances):
		return fmt.Errorf("instance: %d of %d is not one of 0..n-1 of n", c.Instance, c.Instances)
	case c.MemberTTL < 0 || (c.MemberTTL > 0 && c.MemberTTL < 500*time.Millisecond):
		return fmt.Errorf("cb-member-ttl: %s is below 500ms", c.MemberTTL)
	case c.CACertFile != "" && !strings.HasPrefix(c.ConnStr, "couchbases://"):
		return errors.New("cb-ca-cert: a CA certificate needs a couchbases:// connection string")
	}
	return nil
}

// caPool reads CACertFile; nil when none is set.
func (c Config) caPool() (*x509.CertPool, error) {
	if c.CACertFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(c.CACertFile)
	if err != nil {
		return nil, fmt.Errorf("cb-ca-cert: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("cb-ca-cert: %s holds no PEM certificate", c.CACertFile)
	}
	return pool, nil
}

// static says whether the vBuckets are split by --instance.
func (c Config) static() bool { return c.Instances > 0 }

// owns says whether this instance streams vBucket vb in static mode.
func (c Config) owns(vb uint16) bool {
	return int(vb)%c.Instances == c.Instance
}

func knownDurability(name string) bool {
	_, ok := durabilities[name]
	return ok
}
