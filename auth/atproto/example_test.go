package atproto_test

import (
	"fmt"
	"log"
	"net/http/httptest"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
	"github.com/kpd-dir/kpd/auth/atproto"
)

// The HTTP layer sets the route's operation in the request context and
// asks the Authenticator for the caller; a failure's code decides the HTTP
// status and its reason says which check failed.
func Example() {
	a, err := atproto.New(atproto.Config{ServiceDID: "did:web:kpd.example.com"})
	if err != nil {
		log.Fatal(err)
	}
	var authn auth.Authenticator = a

	r := httptest.NewRequest("POST", "/v1/key-packages/claim", nil)
	r = r.WithContext(kpd.WithOperation(r.Context(), kpd.OpClaimKeyPackages))
	r.Header.Set("Authorization", "Bearer not-a-jwt")
	_, err = authn.Authenticate(r)
	fmt.Println(kpd.ErrorCode(err), atproto.ReasonOf(err))
	// Output: Unauthorized Malformed
}
