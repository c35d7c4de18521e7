package order

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Control is the content of the control document allow_retrys: its
// existence arms the retry timer; its optional fields override the timer's
// settings without a restart.
type Control struct {
	Interval time.Duration // between sweeps; 0: the timer's setting
	Quantum  time.Duration // for retry documents without nextAttemptAt; 0: the setting
}

// String names the settings that are set, e.g. "interval 30s, quantum
// 1m0s"; "" when none is.
func (c Control) String() string {
	var set []string
	if c.Interval > 0 {
		set = append(set, "interval "+c.Interval.String())
	}
	if c.Quantum > 0 {
		set = append(set, "quantum "+c.Quantum.String())
	}
	return strings.Join(set, ", ")
}

// MaxControlDuration bounds the durations the control document may set.
const MaxControlDuration = 24 * time.Hour

// Validate refuses settings allow_retrys may not carry: each 0 (not set)
// or positive up to MaxControlDuration.
func (c Control) Validate() error {
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"interval", c.Interval}, {"quantum", c.Quantum}} {
		if d.d < 0 || d.d > MaxControlDuration {
			return fmt.Errorf("%s: %s is not between 0 and %s", d.name, d.d, MaxControlDuration)
		}
	}
	return nil
}

// Encode is allow_retrys with c's settings, as durations ("30s"); those
// not set are left out.
func (c Control) Encode() []byte { return mustMarshal(c.fields()) }

func (c Control) fields() map[string]any {
	doc := map[string]any{}
	if c.Interval > 0 {
		doc["interval"] = c.Interval.String()
	}
	if c.Quantum > 0 {
		doc["quantum"] = c.Quantum.String()
	}
	return doc
}

// DecodeControl reads allow_retrys. interval and quantum are durations as
// strings ("20s") or numbers of seconds (the sample's retryTimerInterval: 20).
// An empty document is valid and overrides nothing.
func DecodeControl(raw []byte) (Control, error) {
	var doc struct {
		Interval json.RawMessage `json:"interval"`
		Quantum  json.RawMessage `json:"quantum"`
	}
	if err := decodeObject(raw, &doc); err != nil {
		return Control{}, err
	}
	var c Control
	var err error
	if c.Interval, err = controlDuration("interval", doc.Interval); err != nil {
		return Control{}, err
	}
	if c.Quantum, err = controlDuration("quantum", doc.Quantum); err != nil {
		return Control{}, err
	}
	return c, nil
}

func controlDuration(name string, raw json.RawMessage) (time.Duration, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	var d time.Duration
	var s string
	var secs float64
	switch {
	case json.Unmarshal(raw, &s) == nil:
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%w: %s: %q is not a duration like \"20s\"", ErrMalformed, name, Shorten(s, 64))
		}
	case json.Unmarshal(raw, &secs) == nil:
		if secs > MaxControlDuration.Seconds() {
			return 0, fmt.Errorf("%w: %s: %v seconds is more than %s", ErrMalformed, name, secs, MaxControlDuration)
		}
		d = time.Duration(secs * float64(time.Second))
	default:
		return 0, fmt.Errorf("%w: %s: %s is neither a duration string nor a number of seconds", ErrMalformed, name, Shorten(string(raw), 64))
	}
	if d <= 0 || d > MaxControlDuration {
		return 0, fmt.Errorf("%w: %s: %s is not between 0 and %s", ErrMalformed, name, d, MaxControlDuration)
	}
	return d, nil
}

// KeptControlKey is the document, in ordermail's own collection, that keeps
// the settings a pause deleted with allow_retrys until a resume gives them
// back: the pause and the resume may run on different instances, with a
// restart between them.
const KeptControlKey = "paused:" + ControlKey

// KeptControl is the content of KeptControlKey: the settings, and when the
// pause read them (before it deleted allow_retrys).
type KeptControl struct {
	Control
	PausedAt time.Time
}

// Encode is the document: allow_retrys' own fields and pausedAt (ms).
func (k KeptControl) Encode() []byte {
	doc := k.fields()
	doc["pausedAt"] = k.PausedAt.UnixMilli()
	return mustMarshal(doc)
}

// DecodeKeptControl reads KeptControlKey.
func DecodeKeptControl(raw []byte) (KeptControl, error) {
	ctl, err := DecodeControl(raw)
	if err != nil {
		return KeptControl{}, err
	}
	var at struct {
		PausedAt int64 `json:"pausedAt"`
	}
	if err := json.Unmarshal(raw, &at); err != nil {
		return KeptControl{}, fmt.Errorf("%w: pausedAt: %w", ErrMalformed, err)
	}
	return KeptControl{Control: ctl, PausedAt: time.UnixMilli(at.PausedAt)}, nil
}
