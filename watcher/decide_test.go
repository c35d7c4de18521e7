package watcher

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestDecide(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give Change
		want Action
		why  string
	}{
		{"paid unconfirmed order", Change{Collection: "inbound", Key: "o", Value: []byte(`{"email":"a@b","paymentStatus":"paid","confirmationEmailSent":false}`)}, SendOrder, ""},
		{"paid, flag absent", Change{Collection: "inbound", Key: "o", Value: []byte(`{"email":"a@b","paymentStatus":"paid"}`)}, SendOrder, ""},
		{"our own write: confirmed", Change{Collection: "inbound", Key: "o", Value: []byte(`{"paymentStatus":"paid","confirmationEmailSent":true}`)}, Ignore, "already confirmed"},
		{"not paid", Change{Collection: "inbound", Key: "o", Value: []byte(`{"paymentStatus":"initiated"}`)}, Ignore, "not paid"},
		{"order deleted", Change{Collection: "inbound", Key: "o", Deleted: true}, Ignore, "deleted"},
		{"order not JSON", Change{Collection: "inbound", Key: "o", Value: []byte(`{{{`)}, DeadLetter, "invalid character"},
		{"paid order without email", Change{Collection: "inbound", Key: "o", Value: []byte(`{"paymentStatus":"paid"}`)}, DeadLetter, "no email address"},
		{"unpaid order without email", Change{Collection: "inbound", Key: "o", Value: []byte(`{"paymentStatus":"initiated"}`)}, Ignore, "not paid"},
		{"paid order too large", Change{Collection: "inbound", Key: "o", Value: []byte(`{"email":"a@b","paymentStatus":"paid","note":"` + strings.Repeat("x", 200) + `"}`)}, DeadLetter, "more than the 200"},
		{"unpaid order too large", Change{Collection: "inbound", Key: "o", Value: []byte(`{"paymentStatus":"new","note":"` + strings.Repeat("x", 200) + `"}`)}, Ignore, "not paid"},
		{"unknown payment state", Change{Collection: "inbound", Key: "o", Value: []byte(`{"email":"a@b","paymentStatus":"PAID?"}`)}, Ignore, "not paid"},
		{"order an array", Change{Collection: "inbound", Key: "o", Value: []byte(`[1]`)}, DeadLetter, "not a JSON object"},
		{"order status a number", Change{Collection: "inbound", Key: "o", Value: []byte(`{"paymentStatus":7}`)}, DeadLetter, "field paymentStatus is a JSON number, want string"},
		{"order flag a string", Change{Collection: "inbound", Key: "o", Value: []byte(`{"paymentStatus":"paid","confirmationEmailSent":"yes"}`)}, DeadLetter, "confirmationEmailSent"},
		{"flagged retry", Change{Collection: "retry", Key: "o", Value: []byte(`{"type":"confirmation","docId":"o","attempt":1,"ts":1,"fireRetry":true}`)}, SendRetry, ""},
		{"our own write: retry not flagged", Change{Collection: "retry", Key: "o", Value: []byte(`{"docId":"o","attempt":2,"ts":1,"fireRetry":false}`)}, Ignore, "retry not due"},
		{"retry deleted", Change{Collection: "retry", Key: "o", Deleted: true}, Ignore, "deleted"},
		{"control document", Change{Collection: "retry", Key: "allow_retrys", Value: []byte(`{}`)}, Ignore, "control document"},
		{"retry without docId", Change{Collection: "retry", Key: "o", Value: []byte(`{"attempt":1,"ts":1,"fireRetry":true}`)}, DeadLetter, "docId is missing"},
		{"retry attempt a string", Change{Collection: "retry", Key: "o", Value: []byte(`{"docId":"o","attempt":"one","fireRetry":true}`)}, DeadLetter, "field attempt"},
		{"other collection", Change{Collection: "elsewhere", Key: "o", Value: []byte(`{}`)}, Ignore, "not watched"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := Decide(tt.give, 200)
			assert.Equal(t, tt.want, got.Action, got.Reason)
			assert.Contains(t, got.Reason+" "+got.Detail, tt.why)
		})
	}
}
