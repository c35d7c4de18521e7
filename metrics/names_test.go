package metrics_test

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// rulesFile is the alerting rules the repository ships.
var rulesFile = filepath.Join("..", "deploy", "prometheus", "ordermail-alerts.yml")

// TestDocumentsNameOnlyMetricsThatExist: every ordermail_ metric that
// README.md or the shipped alerting rules name is one the service exposes
// (a renamed or removed metric would leave a dashboard or an alert that
// never fires), and the service exposes none that README.md does not
// name.
func TestDocumentsNameOnlyMetricsThatExist(t *testing.T) {
	r := newRig(t, rigConfig{})
	exposed := r.m.Names()
	require.Contains(t, exposed, "ordermail_feed_vbuckets_owned", "Couchbase's metrics are among the names on an embedded store too")
	base := func(name string) string {
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if s, ok := strings.CutSuffix(name, suffix); ok && slices.Contains(exposed, s) {
				return s
			}
		}
		return name
	}
	named := regexp.MustCompile(`\bordermail_[a-z0-9_]+`)
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	require.NoError(t, err)
	rules, err := os.ReadFile(rulesFile)
	require.NoError(t, err)
	inREADME := map[string]bool{}
	for _, doc := range []struct {
		name string
		text []byte
	}{{"README.md", readme}, {rulesFile, rules}} {
		for _, m := range named.FindAll(doc.text, -1) {
			name := base(string(m))
			assert.Contains(t, exposed, name, "%s names %s, which the service does not expose", doc.name, name)
			if doc.name == "README.md" {
				inREADME[name] = true
			}
		}
	}
	for _, name := range exposed {
		assert.True(t, inREADME[name], "the service exposes %s, which README.md does not name", name)
	}
}

// TestTheAlertingRulesAreComplete: the shipped rules file is the shape
// Prometheus loads (groups of rules, each an alert with an expression and
// a summary), and README.md names each alert. The expressions themselves
// are checked by Prometheus's own parser in scripts/check-alerts.sh, which
// needs a module this one does not depend on.
func TestTheAlertingRulesAreComplete(t *testing.T) {
	raw, err := os.ReadFile(rulesFile)
	require.NoError(t, err)
	var file struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	require.NoError(t, dec.Decode(&file))
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	require.NoError(t, err)
	var alerts []string
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			assert.NotEmpty(t, r.Expr, "%s has no expression", r.Alert)
			assert.NotEmpty(t, r.Annotations["summary"], "%s has no summary", r.Alert)
			assert.Contains(t, []string{"page", "warn"}, r.Labels["severity"], "%s: severity", r.Alert)
			assert.True(t, bytes.Contains(readme, []byte("`"+r.Alert+"`")), "README.md does not name the alert %s", r.Alert)
		}
	}
	assert.Len(t, alerts, 26)
	for _, m := range regexp.MustCompile("`(Ordermail[A-Za-z]+)`").FindAllStringSubmatch(string(readme), -1) {
		assert.Contains(t, alerts, m[1], "README.md names the alert %s, which the rules file does not have", m[1])
	}
}
