package auth

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/kpd-dir/kpd"
)

// ProxyDIDHeader is the request header in which an authenticating reverse
// proxy names the caller (`--auth proxy`).
const ProxyDIDHeader = "Kpd-Authenticated-Did"

// Reasons of the proxy Authenticator's errors; each starts the Message of
// its Unauthorized error, followed by ": " and a detail.
const (
	// ProxyReasonUntrustedPeer: the request's peer address is not in a
	// trusted prefix (whether or not it set the header).
	ProxyReasonUntrustedPeer = "UntrustedPeer"
	// ProxyReasonMissingDID: a trusted peer sent no ProxyDIDHeader, or
	// more than one.
	ProxyReasonMissingDID = "MissingDID"
	// ProxyReasonInvalidDID: ProxyDIDHeader is not a DID.
	ProxyReasonInvalidDID = "InvalidDID"
)

// proxyLoopback are the trusted prefixes when none are configured.
var proxyLoopback = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
}

// NewProxyAuth returns the proxy Authenticator: the caller is the DID in
// the ProxyDIDHeader of a request whose peer (r.RemoteAddr, the TCP peer,
// never a forwarding header) is inside one of the trusted prefixes; nil or
// empty means loopback only (127.0.0.0/8 and ::1). IPv4-mapped IPv6 peers
// match IPv4 prefixes. Requests from any other peer are Unauthorized, with
// or without the header. It fails if a prefix is not valid.
func NewProxyAuth(trusted []netip.Prefix) (Authenticator, error) {
	if len(trusted) == 0 {
		trusted = proxyLoopback
	}
	prefixes := make([]netip.Prefix, len(trusted))
	for i, p := range trusted {
		if !p.IsValid() {
			return nil, fmt.Errorf("trusted proxy prefix %d is not valid", i)
		}
		prefixes[i] = p.Masked()
	}
	return proxyAuth{trusted: prefixes}, nil
}

type proxyAuth struct{ trusted []netip.Prefix }

func (a proxyAuth) Authenticate(r *http.Request) (string, error) {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil || !a.trusts(peer.Addr()) {
		return "", unauthorized(ProxyReasonUntrustedPeer, "the peer is not a trusted proxy")
	}
	vals := r.Header.Values(ProxyDIDHeader)
	if len(vals) != 1 {
		return "", unauthorized(ProxyReasonMissingDID, "expected one %s header, got %d", ProxyDIDHeader, len(vals))
	}
	did := strings.TrimSpace(vals[0])
	if !kpd.ValidDID(did) {
		return "", unauthorized(ProxyReasonInvalidDID, "the %s header is not a DID", ProxyDIDHeader)
	}
	return did, nil
}

// trusts reports whether addr is inside a trusted prefix. An IPv4 address
// and its IPv4-mapped IPv6 form are the same peer.
func (a proxyAuth) trusts(addr netip.Addr) bool {
	addr = addr.WithZone("")
	v4, mapped := addr.Unmap(), netip.AddrFrom16(addr.As16())
	for _, p := range a.trusted {
		if p.Contains(v4) || p.Contains(mapped) {
			return true
		}
	}
	return false
}

// ParsePrefixes parses trusted proxy addresses (`--trusted-proxy`): each
// item a CIDR ("10.0.0.0/8", "fd00::/8") or a bare IP address (a
// single-address prefix). Surrounding spaces are ignored; empty items are
// skipped. It fails on the first item that is neither.
func ParsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("trusted proxy %q: %w", s, err)
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q is neither a CIDR nor an IP address", s)
		}
		a = a.WithZone("")
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}
