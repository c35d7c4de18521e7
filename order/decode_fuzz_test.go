package order

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzDecodersAgree: for every document type decodeObject reads, the fast
// decoder accepts exactly what encoding/json accepts, and decodes it to the
// same value. (On a failure decodeObject asks encoding/json anyway; this
// pins the successes, which it takes on the fast decoder's word.)
func FuzzDecodersAgree(f *testing.F) {
	AddHostileSeeds(f)
	for _, s := range []string{
		`{"email":"a@example.com","paymentStatus":"paid","confirmationEmailSent":false,"items":[{"name":"Swedish Meatballs 500g","amount":2,"unitPrice":9.95}]}`,
		`{"type":"confirmation","docId":"o","attempt":3,"ts":1,"fireRetry":true,"nextAttemptAt":5,"lastStatus":503}`,
		`{"docId":"o","reason":"permanent_error","lastError":"x","deadAt":1,"redriveCount":2}`,
		`{"type":"attempts","docId":"o","total":1,"attempts":[{"n":1,"at":1,"durationMs":2,"status":200,"class":"sent","outcome":"sent"}]}`,
		`{"interval":"20s","quantum":15}`, `{"a":1}xyz`, `{"amount":1e999}`, `{"email":"\u00e9\ud800"}`, `{"items":null}`,
		`{"EMAIL":"case@example.com"}`, `{"attempt":-0}`, `{"ts":1.5}`, `{"fireRetry":"true"}`,
	} {
		f.Add([]byte(s))
	}
	// Nesting past encoding/json's depth limit: both refuse it, neither
	// recursing its stack away.
	f.Add([]byte(`{"items":` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `}`))
	f.Add([]byte(`{"email":` + strings.Repeat(`{"a":`, 20000) + "1" + strings.Repeat("}", 20000) + `}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		agree(t, raw, func() any { return new(Order) })
		agree(t, raw, func() any { return new(RetryDoc) })
		agree(t, raw, func() any { return new(DeadLetterDoc) })
		agree(t, raw, func() any { return new(AttemptsDoc) })
		agree(t, raw, func() any {
			return new(struct {
				Interval json.RawMessage `json:"interval"`
				Quantum  json.RawMessage `json:"quantum"`
			})
		})
	})
}

func agree(t *testing.T, raw []byte, fresh func() any) {
	t.Helper()
	fast, std := fresh(), fresh()
	fastOK := fastUnmarshal(raw, fast)
	stdErr := json.Unmarshal(raw, std)
	if fastOK != (stdErr == nil) {
		t.Fatalf("%T: fast decoder ok=%v, encoding/json: %v, on %q", fast, fastOK, stdErr, raw)
	}
	if fastOK && !reflect.DeepEqual(fast, std) {
		t.Fatalf("%T decoded differently from %q:\nfast %+v\nstd  %+v", fast, raw, fast, std)
	}
}

// AddHostileSeeds seeds f with the hostile corpus, fixtures/hostile (for
// this package's fuzz tests, FuzzDecode's too).
func AddHostileSeeds(f *testing.F) {
	files, err := filepath.Glob("../fixtures/hostile/*")
	if err != nil || len(files) == 0 {
		f.Fatalf("no hostile fixtures: %v", err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}
