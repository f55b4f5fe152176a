package client_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
)

// TestErrors: problem documents become *Error with every member and the
// Retry-After; other error responses keep their status.
func TestErrors(t *testing.T) {
	var gotPath, gotAuth, gotAccept string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath, gotAuth, gotAccept = r.URL.EscapedPath(), r.Header.Get("Authorization"), r.Header.Get("Accept")
		switch r.URL.Path {
		case "/v1/key-packages/claim":
			w.Header().Set("Content-Type", "application/problem+json")
			w.Header().Set("Retry-After", "7")
			w.Header().Set("X-Request-Id", "abc")
			w.WriteHeader(http.StatusTooManyRequests)
			w.Write([]byte(`{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"slow down","code":"RateLimited",
				"errors":[{"index":1,"code":"BadRequest","detail":"x"}],"missing":[{"did":"did:plc:a","reason":"Exhausted"}]}`))
		default:
			http.Error(w, "bad gateway", http.StatusBadGateway)
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	c := client.New(srv.URL+"/", "tok", client.WithCBOR())

	_, err := c.Claim(ctx, client.ClaimRequest{CipherSuite: 1})
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v", err)
	}
	if e.Status != 429 || e.Code != kpd.CodeRateLimited || e.Detail != "slow down" || e.RetryAfter != 7*time.Second ||
		e.RequestID != "abc" || len(e.Errors) != 1 || e.Errors[0].Index != 1 || len(e.Missing) != 1 || e.Missing[0].Reason != kpd.CodeExhausted {
		t.Fatalf("error = %+v", e)
	}
	if e.Error() != "kpd: 429 RateLimited: slow down" {
		t.Errorf("Error() = %q", e.Error())
	}
	if gotAuth != "Bearer tok" || gotAccept != "application/cbor" {
		t.Errorf("Authorization %q, Accept %q", gotAuth, gotAccept)
	}

	_, err = c.Inventory(ctx, "dev.1", false)
	if !errors.As(err, &e) || e.Status != http.StatusBadGateway || e.Code != "" || e.Error() != "kpd: 502: Bad Gateway" {
		t.Fatalf("non-problem error = %#v", err)
	}
	if gotPath != "/v1/devices/dev.1/key-packages" {
		t.Errorf("path = %q", gotPath)
	}

	// A device name the server would refuse fails here, unsent: "a/b"
	// would reach another route, "." or ".." be cleaned away.
	for _, device := range []string{"a/b", "dev1/key-packages", ".", "..", ""} {
		gotPath = ""
		err := c.DeleteDevice(ctx, device)
		var ke *kpd.Error
		if !errors.As(err, &ke) || ke.Code != kpd.CodeBadRequest || gotPath != "" {
			t.Errorf("DeleteDevice(%q) = %v, sent %q; want a BadRequest, unsent", device, err, gotPath)
		}
	}
}
