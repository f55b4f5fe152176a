package metrics_test

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/kpd-dir/kpd/kv"
	"github.com/kpd-dir/kpd/metrics"
)

// BenchmarkObserveRequest is the cost the metrics add to every request.
func BenchmarkObserveRequest(b *testing.B) {
	m := metrics.New(metrics.Options{})
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.ObserveRequest("/v1/key-packages/claim", 200, 3*time.Millisecond)
		}
	})
}

// BenchmarkScrape is one GET /metrics of a server whose store holds 100
// devices.
func BenchmarkScrape(b *testing.B) {
	db := openDB(b, kv.Options{})
	for i := range 100 {
		publish(b, db, fmt.Sprintf("did:plc:user%03d", i), "phone", 5, true)
	}
	m := metrics.New(metrics.Options{})
	m.CollectStats(db)
	url := serve(b, m)
	b.ResetTimer()
	for range b.N {
		resp, err := http.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}
