package redact_test

import (
	"testing"

	"github.com/ordermail/ordermail/internal/redact"
	"github.com/stretchr/testify/assert"
)

func TestURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give string
		want string
	}{
		{give: "http://localhost:9080", want: "http://localhost:9080"},
		{give: "http://user:hunter2@host:9080/api", want: "http://user:REDACTED@host:9080/api"},
		{give: "http://sk_live_51Hx@host", want: "http://REDACTED@host"}, // a key as the Basic-auth user, sent as "key:"
		{give: "http://@host/p", want: "http://REDACTED@host/p"},
		{give: "https://host/p?key=abc&order=1", want: "https://host/p?key=REDACTED&order=REDACTED"},
		// Azure Functions' key: no name list foresees every service's.
		{give: "https://fn.azurewebsites.net/api/send?code=aZ9fQ&clientId=default", want: "https://fn.azurewebsites.net/api/send?code=REDACTED&clientId=REDACTED"},
		{give: "https://host/?api%5Fkey=a%20b&flag&key=", want: "https://host/?api%5Fkey=REDACTED&REDACTED&key=REDACTED"},
		{give: "https://host/send?9f8e7d6c5b4a39281706", want: "https://host/send?REDACTED"}, // the key alone
		{give: "http://u:p@ss@host/?token=t", want: "http://u:REDACTED@host/?token=REDACTED"},
		{give: "http://user:pw@host/%zz", want: "http://REDACTED@host/%zz"},
		{give: "http://user:p w@ho st", want: "http://REDACTED@ho st"},
		{give: "not a url at all %zz", want: "not a url at all %zz"},
		// Unparsed (a carriage return from an env file, a mistyped port):
		// the query and the fragment are masked all the same.
		{give: "https://mail.example.com/send?api_key=SECRET\r", want: "https://mail.example.com/send?api_key=REDACTED"},
		{give: "https://mail.example.com:443x/send?key=SECRET&a", want: "https://mail.example.com:443x/send?key=REDACTED&REDACTED"},
		{give: "https://h:1x/p#access_token=SECRET", want: "https://h:1x/p#REDACTED"},
		{give: "https://h/p#access_token=SECRET", want: "https://h/p#REDACTED"},
		// An address in the query or the fragment of one that does not parse.
		{give: "https://h/send?to=ops@example.com&key=SECRET\r", want: "https://REDACTED@REDACTED&key=REDACTED"},
		{give: "https://h:1x/p#a@b&token=SECRET", want: "https://REDACTED@REDACTED"},
		{give: "https://u:Ab#3x@h:1x/p", want: "https://REDACTED@REDACTED"}, // a "#" in the password
		// Given without its scheme: the credentials are masked all the same.
		{give: "apikey:S3cret@mail.example.com/v1", want: "REDACTED@mail.example.com/v1"},
		{give: "user:hunter2@mail.example.com:8443", want: "REDACTED@mail.example.com:8443"},
		{give: "1api:S3cret@mail.example.com/v1?key=k", want: "REDACTED@mail.example.com/v1?key=REDACTED"},
		{give: "https//u:pw@h/p", want: "REDACTED@h/p"},
		{give: "mail.example.com/v1?to=a@b", want: "mail.example.com/v1?to=REDACTED"},
		{give: "apikey:S3cret@mail.example.com/v1?next=https://x", want: "REDACTED@mail.example.com/v1?next=REDACTED"},
		{give: "apikey:S3cret@mail.example.com/v1#https://x", want: "REDACTED@mail.example.com/v1#REDACTED"},
		{give: "", want: ""},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, redact.URL(tt.give), "give %q", tt.give)
	}
}

// An email service's URL may carry its key in the path (webhook services,
// some APIs): a segment that looks like one is masked, not the words,
// numbers, dates and names around it; a store's URL keeps its path.
func TestMailURL(t *testing.T) {
	t.Parallel()
	for give, want := range map[string]string{
		"https://hooks.example.com/services/T0123/B0456/aZ9fQx7LmN2pR4sT6vW8yB1c/send": "https://hooks.example.com/services/T0123/B0456/REDACTED/send",
		"https://api.example.com/v1/orders/sendConfirmationV2":                         "https://api.example.com/v1/orders/sendConfirmationV2",
		"https://api.example.com/v1/2026-12-06T10:00:00Z/x":                            "https://api.example.com/v1/2026-12-06T10:00:00Z/x",
		"https://h/caf%C3%A9caf%C3%A9caf%C3%A9/x":                                      "https://h/caf%C3%A9caf%C3%A9caf%C3%A9/x",
		"https://h/k/0123456789abcdef0123456789abcdef0123":                             "https://h/k/REDACTED",
		"https://u:pw@h/a%20b/sk_live_9f8e7d6c5b4a3928xyz?x=1#f":                       "https://u:REDACTED@h/a%20b/REDACTED?x=REDACTED#REDACTED",
		"https://h:1x/hook/sk_live_9f8e7d6c5b4a3928xyz\r":                              "https://h:1x/hook/REDACTED",         // unparsed
		"api.example.com:8443/hook/sk_live_9f8e7d6c5b4a3928xyz":                        "api.example.com:8443/hook/REDACTED", // no scheme
		"http://[::1]:9080/":    "http://[::1]:9080/",
		"http://localhost:9080": "http://localhost:9080",
	} {
		assert.Equal(t, want, redact.MailURL(give), "give %q", give)
	}
	assert.Equal(t, "file:/data/orders-2024q4-eu-west-1a.db", redact.URL("file:/data/orders-2024q4-eu-west-1a.db"), "a store's path is no key")
	// Keys of 16 characters or more with few digits, or signs: masked.
	for give, want := range map[string]string{
		"https://hooks.example.com/services/abcdefGHIJKLmnopQRSTuv1x": "https://hooks.example.com/services/REDACTED",
		"https://h/hook/a1b2c3d4e5f6a7b8":                             "https://h/hook/REDACTED",
		"https://h/hook/q83vEjk9Lm2N+xPz/9w==":                        "https://h/hook/REDACTED/9w==",
		"https://h/v2/confirmations/orderConfirmation12":              "https://h/v2/confirmations/orderConfirmation12",
	} {
		assert.Equal(t, want, redact.MailURL(give), "give %q", give)
	}
}

func TestString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give    string
		secrets []string
		want    string
	}{
		{give: "dial http://u:hunter2@h: refused", secrets: []string{"hunter2"}, want: "dial http://u:REDACTED@h: refused"},
		{give: "a hunter2 b hunter2", secrets: []string{"hunter2"}, want: "a REDACTED b REDACTED"},
		{give: "abcdef", secrets: []string{"abc", "abcdef"}, want: "REDACTED"},
		{give: "x=1 y=2", secrets: []string{"1", "", "2"}, want: "x=REDACTED y=REDACTED"},
		{give: "nothing here", secrets: []string{""}, want: "nothing here"},
		{give: "nothing here", want: "nothing here"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, redact.String(tt.give, tt.secrets...), "give %q %q", tt.give, tt.secrets)
	}
}
