package atproto

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// maxDocumentSize bounds a DID document; real ones are about 1 KiB.
const maxDocumentSize = 64 << 10

// maxRedirects bounds the same-host redirects followed for one document.
const maxRedirects = 3

// retryAfterResolver is the Retry-After of Unavailable errors of the
// resolver.
const retryAfterResolver = 5 * time.Second

var (
	errCrossHostRedirect = errors.New("redirect to another host")
	errNonPublicAddress  = errors.New("address is not public")
)

// resolver fetches DID documents and extracts their #atproto key.
type resolver struct {
	plcURL string
	// plcClient fetches from the PLC directory, webClient from did:web
	// hosts.
	plcClient, webClient *http.Client
	timeout              time.Duration
}

func newResolver(cfg Config) *resolver {
	r := &resolver{plcURL: cfg.PLCURL, timeout: cfg.ResolveTimeout}
	if cfg.HTTPClient != nil {
		r.plcClient = sameHostRedirects(cfg.HTTPClient)
		r.webClient = r.plcClient
		return r
	}
	r.plcClient = sameHostRedirects(&http.Client{Transport: newTransport(false)})
	r.webClient = sameHostRedirects(&http.Client{Transport: newTransport(true)})
	return r
}

// newTransport returns a transport with bounded connection set-up. With
// publicOnly it connects only to public unicast addresses and uses no proxy,
// so that a did:web host cannot point kpd at internal services.
func newTransport(publicOnly bool) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	if publicOnly {
		t.Proxy = nil
		d.Control = checkPublicAddress
	}
	t.DialContext = d.DialContext
	t.TLSHandshakeTimeout = 5 * time.Second
	t.ResponseHeaderTimeout = 5 * time.Second
	return t
}

// checkPublicAddress is a net.Dialer Control function that refuses
// connections to addresses that are not public unicast ones.
func checkPublicAddress(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s", errNonPublicAddress, address)
	}
	a := ap.Addr().Unmap()
	if !a.IsGlobalUnicast() || a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast() {
		return fmt.Errorf("%w: %s", errNonPublicAddress, a)
	}
	return nil
}

// sameHostRedirects returns a copy of c that follows at most maxRedirects
// redirects, each to the original scheme and host.
func sameHostRedirects(c *http.Client) *http.Client {
	cc := *c
	cc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) > maxRedirects {
			return fmt.Errorf("more than %d redirects", maxRedirects)
		}
		if req.URL.Scheme != via[0].URL.Scheme || req.URL.Host != via[0].URL.Host {
			return errCrossHostRedirect
		}
		return nil
	}
	return &cc
}

// resolve returns the #atproto key of did. Errors: Unauthorized with
// ReasonUnknownDID or ReasonBadDIDDocument, or Unavailable with
// ReasonResolverUnavailable.
func (r *resolver) resolve(ctx context.Context, did string) (*publicKey, error) {
	url, client, err := r.documentURL(did)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	body, err := fetch(ctx, client, did, url)
	if err != nil {
		return nil, err
	}
	return atprotoKey(did, body)
}

// documentURL returns where did's document is and the client to fetch it.
func (r *resolver) documentURL(did string) (string, *http.Client, error) {
	method, id, _ := strings.Cut(strings.TrimPrefix(did, "did:"), ":")
	switch method {
	case "plc":
		if !validPLCIdentifier(id) {
			return "", nil, unauthorized(ReasonUnknownDID, "%s is not a did:plc identifier", did)
		}
		return r.plcURL + "/" + did, r.plcClient, nil
	case "web":
		host, err := webHost(id)
		if err != nil {
			return "", nil, unauthorized(ReasonUnknownDID, "%s: %v", did, err)
		}
		return "https://" + host + "/.well-known/did.json", r.webClient, nil
	}
	return "", nil, unauthorized(ReasonUnknownDID, "DID method %q is not supported (did:plc and did:web only)", clip(method))
}

// validPLCIdentifier reports whether id is 24 characters of base32
// (lowercase a-z, 2-7).
func validPLCIdentifier(id string) bool {
	if len(id) != 24 {
		return false
	}
	for _, c := range []byte(id) {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

// webHost returns the host[:port] of a did:web identifier. Only a hostname
// with an optional %3A-encoded port is accepted: no path segments.
func webHost(id string) (string, error) {
	if strings.Contains(id, ":") {
		return "", errors.New("did:web with a path is not supported")
	}
	host, port, hasPort := strings.Cut(strings.ReplaceAll(id, "%3a", "%3A"), "%3A")
	if !validHostname(host) {
		return "", fmt.Errorf("%q is not a hostname", clip(host))
	}
	if !hasPort {
		return host, nil
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || port[0] == '0' {
		return "", fmt.Errorf("%q is not a port", clip(port))
	}
	return host + ":" + port, nil
}

// validHostname reports whether h is a DNS hostname: dot-separated labels
// of 1-63 letters, digits and inner hyphens, 253 characters at most.
func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// fetch GETs a DID document of at most maxDocumentSize bytes.
func fetch(ctx context.Context, client *http.Client, did, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, unauthorized(ReasonUnknownDID, "%s: %v", did, err)
	}
	req.Header.Set("Accept", "application/did+json, application/json")
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, errCrossHostRedirect) || errors.Is(err, errNonPublicAddress) {
			return nil, unauthorized(ReasonUnknownDID, "resolving %s: %v", did, err)
		}
		return nil, unavailable(ReasonResolverUnavailable, retryAfterResolver, "resolving %s: %v", did, err)
	}
	defer resp.Body.Close()
	switch code := resp.StatusCode; {
	case code == http.StatusOK:
	case code >= 500 || code == http.StatusTooManyRequests || code == http.StatusRequestTimeout:
		return nil, unavailable(ReasonResolverUnavailable, retryAfterResolver, "resolving %s: HTTP %d", did, code)
	default:
		return nil, unauthorized(ReasonUnknownDID, "resolving %s: HTTP %d", did, code)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocumentSize+1))
	if err != nil {
		return nil, unavailable(ReasonResolverUnavailable, retryAfterResolver, "reading the document of %s: %v", did, err)
	}
	if len(body) > maxDocumentSize {
		return nil, unauthorized(ReasonBadDIDDocument, "the document of %s is larger than %d bytes", did, maxDocumentSize)
	}
	return body, nil
}

// document is the part of a DID document kpd reads.
type document struct {
	ID                 string `json:"id"`
	VerificationMethod []struct {
		ID                 string `json:"id"`
		Type               string `json:"type"`
		PublicKeyMultibase string `json:"publicKeyMultibase"`
	} `json:"verificationMethod"`
}

// atprotoKey returns the key of the verification method "#atproto" (or
// "<did>#atproto") of did's document, which must be of type Multikey.
func atprotoKey(did string, body []byte) (*publicKey, error) {
	var doc document
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, unauthorized(ReasonBadDIDDocument, "the document of %s is not a DID document: %v", did, err)
	}
	if doc.ID != did {
		return nil, unauthorized(ReasonBadDIDDocument, "the document of %s names %q", did, clip(doc.ID))
	}
	for _, vm := range doc.VerificationMethod {
		if vm.ID != "#atproto" && vm.ID != did+"#atproto" {
			continue
		}
		if vm.Type != "Multikey" {
			return nil, unauthorized(ReasonBadDIDDocument, "the #atproto key of %s is of type %q, not Multikey", did, clip(vm.Type))
		}
		k, err := parseMultikey(vm.PublicKeyMultibase)
		if err != nil {
			return nil, unauthorized(ReasonBadDIDDocument, "the #atproto key of %s: %v", did, err)
		}
		return k, nil
	}
	return nil, unauthorized(ReasonBadDIDDocument, "the document of %s has no #atproto verification method", did)
}
