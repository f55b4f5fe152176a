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

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
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
	log    zerolog.Logger
	// plcClient fetches from the PLC directory, webClient from did:web
	// hosts.
	plcClient, webClient *http.Client
	timeout              time.Duration
}

func newResolver(cfg Config) *resolver {
	r := &resolver{plcURL: cfg.PLCURL, log: cfg.Logger, timeout: cfg.ResolveTimeout}
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
// connections to addresses that are not public unicast ones (publicAddr).
func checkPublicAddress(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s", errNonPublicAddress, address)
	}
	if !publicAddr(ap.Addr()) {
		return fmt.Errorf("%w: %s", errNonPublicAddress, ap.Addr())
	}
	return nil
}

// nonPublicPrefixes are the ranges of the IANA IPv4 and IPv6
// Special-Purpose Address Registries that are not globally reachable, and
// the multicast, reserved and deprecated ranges: a did:web host must not
// resolve into any of them.
var nonPublicPrefixes = func() []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",       // "this network"
		"10.0.0.0/8",      // private
		"100.64.0.0/10",   // shared address space (carrier-grade NAT, cloud metadata)
		"127.0.0.0/8",     // loopback
		"169.254.0.0/16",  // link-local
		"172.16.0.0/12",   // private
		"192.0.0.0/24",    // IETF protocol assignments
		"192.0.2.0/24",    // documentation (TEST-NET-1)
		"192.88.99.0/24",  // 6to4 relay anycast (deprecated)
		"192.168.0.0/16",  // private
		"198.18.0.0/15",   // benchmarking
		"198.51.100.0/24", // documentation (TEST-NET-2)
		"203.0.113.0/24",  // documentation (TEST-NET-3)
		"224.0.0.0/4",     // multicast
		"240.0.0.0/4",     // reserved, limited broadcast

		"::/96",          // unspecified, loopback, IPv4-compatible (deprecated)
		"64:ff9b:1::/48", // local-use IPv4/IPv6 translation
		"100::/64",       // discard-only
		"100:0:0:1::/64", // dummy prefix
		"2001::/23",      // IETF protocol assignments (Teredo, benchmarking, ORCHID)
		"2001:db8::/32",  // documentation
		"3fff::/20",      // documentation
		"5f00::/16",      // segment routing SIDs
		"fc00::/7",       // unique local
		"fe80::/10",      // link-local
		"fec0::/10",      // site-local (deprecated)
		"ff00::/8",       // multicast
	} {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}()

var (
	// globalUnicast6 is the IPv6 space IANA allocates for global unicast.
	globalUnicast6 = netip.MustParsePrefix("2000::/3")
	// nat64Prefix embeds an IPv4 address in its last 32 bits (RFC 6052).
	nat64Prefix = netip.MustParsePrefix("64:ff9b::/96")
	// sixToFourPrefix embeds an IPv4 address in bits 16-47 (RFC 3056).
	sixToFourPrefix = netip.MustParsePrefix("2002::/16")
)

// publicAddr reports whether a is a public unicast address: outside
// nonPublicPrefixes and, for IPv6, inside 2000::/3 or NAT64's
// 64:ff9b::/96. An IPv4 address embedded in an IPv4-mapped, NAT64 or 6to4
// address must be public too.
func publicAddr(a netip.Addr) bool {
	a = a.WithZone("").Unmap()
	if a.Is6() {
		b := a.As16()
		switch {
		case nat64Prefix.Contains(a):
			return publicAddr(netip.AddrFrom4([4]byte(b[12:16])))
		case sixToFourPrefix.Contains(a):
			if !publicAddr(netip.AddrFrom4([4]byte(b[2:6]))) {
				return false
			}
		case !globalUnicast6.Contains(a):
			return false
		}
	}
	for _, p := range nonPublicPrefixes {
		if p.Contains(a) {
			return false
		}
	}
	return a.IsGlobalUnicast() && !a.IsPrivate()
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

// resolveError is a failed resolution: the Reason the caller is told and
// the cause, which only the log sees. The cause may name the addresses,
// dial errors, certificates or answers of the DID's host, which must not
// reach an unauthenticated caller (it would be a port-scan oracle).
type resolveError struct {
	reason string
	cause  error
}

func (e *resolveError) Error() string { return e.reason + ": " + e.cause.Error() }
func (e *resolveError) Unwrap() error { return e.cause }

// resolveFailed returns a *resolveError with reason and a formatted cause.
func resolveFailed(reason, format string, args ...any) error {
	return &resolveError{reason: reason, cause: fmt.Errorf(format, args...)}
}

// Fixed messages of the resolution failures, one per Reason: they reveal
// nothing about the DID's directory or host.
const (
	msgUnknownDID          = "the DID's directory or host does not know it"
	msgBadDIDDocument      = "the DID document is invalid or has no usable #atproto key"
	msgResolverUnavailable = "the DID document could not be fetched; try again later"
	msgResolverBusy        = "too many DID documents are being fetched; try again later"
)

// public returns the error the caller sees: e's reason with its fixed
// message.
func (e *resolveError) public() *kpd.Error {
	switch e.reason {
	case ReasonResolverUnavailable:
		return unavailable(e.reason, retryAfterResolver, msgResolverUnavailable)
	case ReasonBadDIDDocument:
		return unauthorized(e.reason, msgBadDIDDocument)
	default:
		return unauthorized(ReasonUnknownDID, msgUnknownDID)
	}
}

// resolve returns the #atproto key of did. Errors: Unauthorized with
// ReasonUnknownDID or ReasonBadDIDDocument, or Unavailable with
// ReasonResolverUnavailable, each with a fixed message; the cause is
// logged (warn for ResolverUnavailable, debug otherwise).
func (r *resolver) resolve(ctx context.Context, did string) (*publicKey, error) {
	key, err := r.resolveKey(ctx, did)
	var re *resolveError
	if !errors.As(err, &re) {
		return key, err
	}
	ev := r.log.Debug()
	if re.reason == ReasonResolverUnavailable {
		ev = r.log.Warn()
	}
	ev.Str("did", did).Str("reason", re.reason).Err(re.cause).Msg("atproto: DID resolution failed")
	return nil, re.public()
}

// resolveKey fetches did's document and returns its #atproto key. Its
// failures are *resolveErrors, or *kpd.Errors for a DID kpd does not
// resolve (checkDID).
func (r *resolver) resolveKey(ctx context.Context, did string) (*publicKey, error) {
	url, client, err := r.documentURL(did)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	body, err := fetch(ctx, client, url)
	if err != nil {
		return nil, err
	}
	return atprotoKey(did, body)
}

// documentURL returns where did's document is and the client to fetch it.
func (r *resolver) documentURL(did string) (string, *http.Client, error) {
	host, err := checkDID(did)
	switch {
	case err != nil:
		return "", nil, err
	case host == "":
		return r.plcURL + "/" + did, r.plcClient, nil
	default:
		return "https://" + host + "/.well-known/did.json", r.webClient, nil
	}
}

// checkDID checks that did is a did:plc or did:web that kpd resolves,
// spelled canonically, so that one document has one DID (and one cache
// entry): a did:plc identifier is lower case; a did:web host is lower
// case, with its port encoded as "%3A". It returns the host[:port] of a
// did:web, "" for a did:plc. It fails with Unauthorized
// (ReasonUnknownDID); its message only quotes did.
func checkDID(did string) (host string, err error) {
	method, id, _ := strings.Cut(strings.TrimPrefix(did, "did:"), ":")
	switch method {
	case "plc":
		if !validPLCIdentifier(id) {
			return "", unauthorized(ReasonUnknownDID, "%s is not a did:plc identifier", did)
		}
		return "", nil
	case "web":
		host, err := webHost(id)
		if err != nil {
			return "", unauthorized(ReasonUnknownDID, "%s: %v", did, err)
		}
		return host, nil
	}
	return "", unauthorized(ReasonUnknownDID, "DID method %q is not supported (did:plc and did:web only)", clip(method))
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

// webHost returns the host[:port] of a did:web identifier. Only a lower
// case hostname with an optional "%3A"-encoded port is accepted: no path
// segments. Hostnames are case-insensitive, so any other spelling would be
// a second DID for the same document.
func webHost(id string) (string, error) {
	if strings.Contains(id, ":") {
		return "", errors.New("did:web with a path is not supported")
	}
	if strings.Contains(id, "%3a") {
		return "", errors.New(`the port separator must be spelled "%3A"`)
	}
	host, port, hasPort := strings.Cut(id, "%3A")
	if !validHostname(host) {
		return "", fmt.Errorf("%q is not a hostname", clip(host))
	}
	if strings.ToLower(host) != host {
		return "", fmt.Errorf("hostname %q is not lower case", clip(host))
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

// fetch GETs a DID document of at most maxDocumentSize bytes. Its errors
// are *resolveErrors.
func fetch(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, resolveFailed(ReasonUnknownDID, "%w", err)
	}
	req.Header.Set("Accept", "application/did+json, application/json")
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, errCrossHostRedirect) || errors.Is(err, errNonPublicAddress) {
			return nil, resolveFailed(ReasonUnknownDID, "%w", err)
		}
		return nil, resolveFailed(ReasonResolverUnavailable, "%w", err)
	}
	defer resp.Body.Close()
	switch code := resp.StatusCode; {
	case code == http.StatusOK:
	case code >= 500 || code == http.StatusTooManyRequests || code == http.StatusRequestTimeout:
		return nil, resolveFailed(ReasonResolverUnavailable, "GET %s: HTTP %d", url, code)
	default:
		return nil, resolveFailed(ReasonUnknownDID, "GET %s: HTTP %d", url, code)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocumentSize+1))
	if err != nil {
		return nil, resolveFailed(ReasonResolverUnavailable, "reading %s: %w", url, err)
	}
	if len(body) > maxDocumentSize {
		return nil, resolveFailed(ReasonBadDIDDocument, "%s is larger than %d bytes", url, maxDocumentSize)
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
// "<did>#atproto") of did's document, which must be of type Multikey. Its
// errors are *resolveErrors (ReasonBadDIDDocument).
func atprotoKey(did string, body []byte) (*publicKey, error) {
	var doc document
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, resolveFailed(ReasonBadDIDDocument, "not a DID document: %w", err)
	}
	if doc.ID != did {
		return nil, resolveFailed(ReasonBadDIDDocument, "the document names %q", clip(doc.ID))
	}
	for _, vm := range doc.VerificationMethod {
		if vm.ID != "#atproto" && vm.ID != did+"#atproto" {
			continue
		}
		if vm.Type != "Multikey" {
			return nil, resolveFailed(ReasonBadDIDDocument, "the #atproto key is of type %q, not Multikey", clip(vm.Type))
		}
		k, err := parseMultikey(vm.PublicKeyMultibase)
		if err != nil {
			return nil, resolveFailed(ReasonBadDIDDocument, "the #atproto key: %w", err)
		}
		return k, nil
	}
	return nil, resolveFailed(ReasonBadDIDDocument, "no #atproto verification method")
}
