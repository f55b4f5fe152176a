package auth_test

import (
	"context"
	"encoding/hex"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
	"github.com/kpd-dir/kpd/kv"
)

const alice = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"

// authenticate runs a with the given Authorization header ("" for none).
func authenticate(a auth.Authenticator, header string) (string, error) {
	r := httptest.NewRequest("GET", "http://127.0.0.1:8080/v1/devices", nil)
	if header != "" {
		r.Header.Set("Authorization", header)
	}
	return a.Authenticate(r)
}

func TestGenerateToken(t *testing.T) {
	tok, hash, err := auth.GenerateToken()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, auth.TokenPrefix) || len(tok) != len(auth.TokenPrefix)+43 {
		t.Errorf("token %q: want %s + 43 base64url characters", tok, auth.TokenPrefix)
	}
	if got := auth.HashToken(tok); hex.EncodeToString(got) != hex.EncodeToString(hash) || len(hash) != 32 {
		t.Errorf("hash = %x, HashToken = %x", hash, got)
	}
	if id := auth.TokenID(hash); id != hex.EncodeToString(hash[:8]) {
		t.Errorf("TokenID = %q, want the hex of the first 8 bytes", id)
	}
	tok2, _, err := auth.GenerateToken()
	if err != nil || tok2 == tok {
		t.Errorf("second token %q (err %v) equals the first", tok2, err)
	}
}

func TestCheckLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:8080": true,
		"127.1.2.3:0":    true,
		"[::1]:8080":     true,
		"localhost:80":   true,
		"LocalHost:80":   true,
		":8080":          false,
		"0.0.0.0:8080":   false,
		"[::]:8080":      false,
		"10.0.0.1:8080":  false,
		"example.com:80": false,
		"127.0.0.1":      false, // no port
	} {
		if err := auth.CheckLoopback(addr); (err == nil) != ok {
			t.Errorf("CheckLoopback(%q) = %v, want ok=%v", addr, err, ok)
		}
	}
}

func TestDevAuth(t *testing.T) {
	a := auth.NewDevAuth()
	for _, h := range []string{"Bearer " + alice, "bearer " + alice, "BEARER  " + alice + " "} {
		if did, err := authenticate(a, h); err != nil || did != alice {
			t.Errorf("%q: did = %q, err = %v", h, did, err)
		}
	}
	for _, h := range []string{"", "Bearer", "Bearer ", "Basic " + alice, alice, "Bearer alice", "Bearer did:plc:" + strings.Repeat("a", kpd.MaxDIDLength)} {
		if _, err := authenticate(a, h); kpd.ErrorCode(err) != kpd.CodeUnauthorized {
			t.Errorf("%q: err = %v, want Unauthorized", h, err)
		}
	}
	// Only requests to a loopback host: a DNS-rebound page sends its own.
	for host, ok := range map[string]bool{"127.0.0.1:8080": true, "localhost:8080": true, "LOCALHOST": true, "[::1]:8080": true,
		"127.0.0.2": true, "example.com": false, "rebind.attacker.example:8080": false, "localhost.attacker.example": false,
		"10.0.0.1:8080": false, "": false} {
		r := httptest.NewRequest("GET", "/v1/devices", nil)
		r.Host = host
		r.Header.Set("Authorization", "Bearer "+alice)
		did, err := a.Authenticate(r)
		if ok && (err != nil || did != alice) {
			t.Errorf("Host %q: %q, %v; want %s", host, did, err, alice)
		}
		if !ok && (kpd.ErrorCode(err) != kpd.CodeUnauthorized || !strings.Contains(err.Error(), auth.ReasonForeignHost)) {
			t.Errorf("Host %q: %q, %v; want Unauthorized %s", host, did, err, auth.ReasonForeignHost)
		}
	}
}

func TestTokenAuth(t *testing.T) {
	db, err := kv.Open(filepath.Join(t.TempDir(), "kpd.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	tok, hash, err := auth.GenerateToken()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := db.PutToken(ctx, kpd.Token{ID: auth.TokenID(hash), Hash: hash, DID: alice, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	a := auth.NewTokenAuth(db)
	if did, err := authenticate(a, "Bearer "+tok); err != nil || did != alice {
		t.Fatalf("valid token: did = %q, err = %v", did, err)
	}
	other, _, _ := auth.GenerateToken()
	for _, h := range []string{"", "Bearer " + other, "Bearer " + tok + "x", "Bearer " + alice, "Token " + tok} {
		if _, err := authenticate(a, h); kpd.ErrorCode(err) != kpd.CodeUnauthorized {
			t.Errorf("%q: err = %v, want Unauthorized", h, err)
		}
	}
	if err := db.RevokeToken(ctx, auth.TokenID(hash)); err != nil {
		t.Fatal(err)
	}
	if _, err := authenticate(a, "Bearer "+tok); kpd.ErrorCode(err) != kpd.CodeUnauthorized {
		t.Errorf("revoked token: err = %v, want Unauthorized", err)
	}
}
