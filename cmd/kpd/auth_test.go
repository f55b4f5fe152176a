package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
)

// es256Key signs AT Protocol service tokens with a P-256 key.
type es256Key struct{ priv *ecdsa.PrivateKey }

func newES256Key(t *testing.T) es256Key {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return es256Key{priv}
}

// multikey is the key's Multikey form: base58btc of the p256-pub
// multicodec prefix and the compressed point.
func (k es256Key) multikey(t *testing.T) string {
	raw, err := k.priv.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	b := append([]byte{0x80, 0x24, 2 + raw[64]&1}, raw[1:33]...)
	const alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
	n, mod, base := new(big.Int).SetBytes(b), new(big.Int), big.NewInt(58)
	var out []byte
	for n.Sign() > 0 {
		n.DivMod(n, base, mod)
		out = append([]byte{alphabet[mod.Int64()]}, out...)
	}
	return "z" + string(out)
}

// token signs a JWT with claims; the signature is low-S r||s.
func (k es256Key) token(t *testing.T, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	input := enc(map[string]string{"alg": "ES256", "typ": "JWT"}) + "." + enc(claims)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, k.priv, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	order := elliptic.P256().Params().N
	if s.Cmp(new(big.Int).Rsh(order, 1)) > 0 {
		s.Sub(order, s)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// TestServeAtprotoAuth runs `kpd serve --auth atproto` against a PLC
// directory on loopback: a service token signed by the key in the caller's
// DID document authenticates it; a token for another operation is refused
// with reason WrongLxm; a DID the directory cannot resolve, while the
// directory is down, is 503 rather than 401.
func TestServeAtprotoAuth(t *testing.T) {
	fx := loadFixture(t)
	key := newES256Key(t)
	doc, _ := json.Marshal(map[string]any{
		"id": aliceDID,
		"verificationMethod": []map[string]any{{
			"id": aliceDID + "#atproto", "type": "Multikey", "controller": aliceDID,
			"publicKeyMultibase": key.multikey(t),
		}},
	})
	plc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/"+aliceDID {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/did+json")
		w.Write(doc)
	}))
	defer plc.Close()

	const serviceDID = "did:web:kpd.example.com"
	m, _, _ := newMain(nil, fx.now)
	url := startServe(t, m, "--db", filepath.Join(t.TempDir(), "at.db"), "--listen", "127.0.0.1:0",
		"--auth", "atproto", "--service-did", serviceDID, "--plc-url", plc.URL)

	tok := func(iss, lxm, jti string) string {
		return key.token(t, map[string]any{
			"iss": iss, "aud": serviceDID, "lxm": lxm, "jti": jti,
			"iat": fx.now.Unix(), "exp": fx.now.Add(time.Minute).Unix(),
		})
	}
	ctx := context.Background()
	res, err := client.New(url, tok(aliceDID, kpd.OpPublishKeyPackages, "a1")).Publish(ctx, "dev1", [][]byte{fx.keyPackage})
	if err != nil {
		t.Fatalf("publish with a service token: %v", err)
	}
	if res.Results[0].Ref != fx.ref {
		t.Errorf("ref = %s, want %s", res.Results[0].Ref, fx.ref)
	}

	var cerr *client.Error
	_, err = client.New(url, tok(aliceDID, kpd.OpListDevices, "a2")).Publish(ctx, "dev1", [][]byte{fx.keyPackage})
	if !errors.As(err, &cerr) || cerr.Status != 401 || cerr.Reason != "WrongLxm" {
		t.Fatalf("token for another operation: err = %v (reason %q), want 401 WrongLxm", err, reasonOf(err))
	}

	plc.Close()
	bobDID := "did:plc:bobbobbobbobbobbobbobbob"
	_, err = client.New(url, tok(bobDID, kpd.OpListDevices, "b1")).Devices(ctx)
	if !errors.As(err, &cerr) || cerr.Status != 503 || cerr.Code != kpd.CodeUnavailable || cerr.RetryAfter <= 0 {
		t.Fatalf("directory down: err = %v, want 503 Unavailable with Retry-After", err)
	}
}

func reasonOf(err error) string {
	var cerr *client.Error
	if errors.As(err, &cerr) {
		return cerr.Reason
	}
	return ""
}

// TestServeProxyAuth: with --auth proxy, Kpd-Authenticated-Did is the caller
// when the peer is a trusted proxy (loopback by default), and refused from
// a peer outside --trusted-proxy.
func TestServeProxyAuth(t *testing.T) {
	fx := loadFixture(t)
	for _, c := range []struct {
		trusted string
		want    int
	}{
		{"", http.StatusOK},
		{"192.0.2.0/24", http.StatusUnauthorized},
	} {
		m, _, _ := newMain(nil, fx.now)
		args := []string{"--db", filepath.Join(t.TempDir(), "p.db"), "--listen", "127.0.0.1:0", "--auth", "proxy"}
		if c.trusted != "" {
			args = append(args, "--trusted-proxy", c.trusted)
		}
		url := startServe(t, m, args...)
		req, _ := http.NewRequest("GET", url+"/v1/devices", nil)
		req.Header.Set("Kpd-Authenticated-Did", aliceDID)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("--trusted-proxy %q: status %d, want %d", c.trusted, resp.StatusCode, c.want)
		}
		m.Close()
	}
}

func TestParseRate(t *testing.T) {
	for _, c := range []struct {
		in    string
		rate  float64
		burst int
	}{
		{"1000/h", 1000.0 / 3600, 1000},
		{"10/m:20", 10.0 / 60, 20},
		{"10/min:20", 10.0 / 60, 20},
		{"10/s:200", 10, 200},
		{"off", 0, -1},
	} {
		l, err := parseRate(c.in)
		if err != nil || l.Rate != c.rate || l.Burst != c.burst {
			t.Errorf("parseRate(%q) = %+v, %v; want rate %v burst %d", c.in, l, err, c.rate, c.burst)
		}
	}
	for _, bad := range []string{"", "10", "10/d", "x/s", "-1/s", "10/s:0", "10/s:x"} {
		if _, err := parseRate(bad); err == nil {
			t.Errorf("parseRate(%q) succeeded", bad)
		}
	}
}
