package testkit

import (
	"net/http"
	"testing"
)

// Do sends a request without a body, with the given Authorization header
// (none when empty), through http.DefaultClient, failing the test when it
// cannot be sent. The response body is closed when the test ends, if the
// caller has not closed it before.
func Do(tb testing.TB, method, url, authorization string) *http.Response {
	tb.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { resp.Body.Close() })
	return resp
}
