package auth_test

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
)

// proxyRequest is a request from peer (host:port) with the given
// Kpd-Authenticated-Did header values.
func proxyRequest(peer string, dids ...string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/v1/devices", nil)
	r.RemoteAddr = peer
	for _, d := range dids {
		r.Header.Add(auth.ProxyDIDHeader, d)
	}
	return r
}

func wantProxyFailure(t *testing.T, err error, reason string) {
	t.Helper()
	if kpd.ErrorCode(err) != kpd.CodeUnauthorized || !strings.HasPrefix(kpd.ErrorMessage(err), reason+": ") {
		t.Fatalf("error = %v; want Unauthorized %s", err, reason)
	}
}

func TestProxyAuthDefaultsToLoopback(t *testing.T) {
	a, err := auth.NewProxyAuth(nil)
	if err != nil {
		t.Fatal(err)
	}
	const did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
	for _, peer := range []string{"127.0.0.1:5000", "127.1.2.3:1", "[::1]:443", "[::ffff:127.0.0.1]:80"} {
		got, err := a.Authenticate(proxyRequest(peer, did))
		if err != nil || got != did {
			t.Errorf("peer %s: %q, %v", peer, got, err)
		}
	}
	for _, peer := range []string{"10.0.0.1:5000", "192.168.1.1:1", "[::2]:443", "[fe80::1%eth0]:80", "garbage", ""} {
		_, err := a.Authenticate(proxyRequest(peer, did))
		wantProxyFailure(t, err, auth.ProxyReasonUntrustedPeer)
		// Without the header too: an untrusted peer is refused first.
		_, err = a.Authenticate(proxyRequest(peer))
		wantProxyFailure(t, err, auth.ProxyReasonUntrustedPeer)
	}
}

func TestProxyAuthTrustedPrefixes(t *testing.T) {
	prefixes, err := auth.ParsePrefixes([]string{"10.1.0.0/16", "fd00::/8", "192.0.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := auth.NewProxyAuth(prefixes)
	if err != nil {
		t.Fatal(err)
	}
	const did = "did:web:alice.example.com"
	for _, peer := range []string{"10.1.200.3:9", "[fd12::5]:80", "192.0.2.7:1", "[::ffff:10.1.0.1]:2"} {
		got, err := a.Authenticate(proxyRequest(peer, did))
		if err != nil || got != did {
			t.Errorf("peer %s: %q, %v", peer, got, err)
		}
	}
	// Configured prefixes replace the loopback default.
	for _, peer := range []string{"10.2.0.1:9", "192.0.2.8:1", "127.0.0.1:80", "[::1]:80"} {
		_, err := a.Authenticate(proxyRequest(peer, did))
		wantProxyFailure(t, err, auth.ProxyReasonUntrustedPeer)
	}
}

func TestProxyAuthHeader(t *testing.T) {
	a, err := auth.NewProxyAuth(nil)
	if err != nil {
		t.Fatal(err)
	}
	const peer = "127.0.0.1:4000"
	_, err = a.Authenticate(proxyRequest(peer))
	wantProxyFailure(t, err, auth.ProxyReasonMissingDID)
	_, err = a.Authenticate(proxyRequest(peer, "did:plc:a", "did:plc:b"))
	wantProxyFailure(t, err, auth.ProxyReasonMissingDID)
	for _, bad := range []string{"", "alice", "did:plc", "did:PLC:x", "did:plc:x y", strings.Repeat("did:plc:x", 300)} {
		_, err = a.Authenticate(proxyRequest(peer, bad))
		wantProxyFailure(t, err, auth.ProxyReasonInvalidDID)
	}
	// The Authorization header plays no part.
	r := proxyRequest(peer, "did:plc:ewvi7nxzyoun6zhxrhs64oiz")
	r.Header.Set("Authorization", "Bearer did:plc:someoneelse")
	if got, err := a.Authenticate(r); err != nil || got != "did:plc:ewvi7nxzyoun6zhxrhs64oiz" {
		t.Fatalf("%q, %v", got, err)
	}
}

func TestProxyAuthOverHTTP(t *testing.T) {
	a, err := auth.NewProxyAuth(nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		did, err := a.Authenticate(r)
		if err != nil {
			http.Error(w, kpd.ErrorMessage(err), http.StatusUnauthorized)
			return
		}
		w.Write([]byte(did))
	}))
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	req.Header.Set(auth.ProxyDIDHeader, "did:web:bob.example.com")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d from a loopback peer", resp.StatusCode)
	}
}

func TestNewProxyAuthRejectsInvalidPrefix(t *testing.T) {
	if _, err := auth.NewProxyAuth([]netip.Prefix{{}}); err == nil {
		t.Fatal("zero prefix accepted")
	}
}

func TestParsePrefixes(t *testing.T) {
	got, err := auth.ParsePrefixes([]string{" 10.1.2.3/8 ", "", "::1", "2001:db8::/32", "192.0.2.1", "fe80::1%eth0"})
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("::1/128"),
		netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("192.0.2.1/32"),
		netip.MustParsePrefix("fe80::1/128"),
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ParsePrefixes = %v, want %v", got, want)
	}
	for _, bad := range []string{"10.0.0.0/33", "example.com", "10.0.0", "::1/129", "/8"} {
		if _, err := auth.ParsePrefixes([]string{"127.0.0.1", bad}); err == nil {
			t.Errorf("ParsePrefixes(%q) succeeded", bad)
		}
	}
}
