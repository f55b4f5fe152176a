package atproto

import (
	"errors"
	"testing"
)

func TestCheckPublicAddress(t *testing.T) {
	tests := []struct {
		address string
		public  bool
	}{
		{"8.8.8.8:443", true},
		{"1.1.1.1:443", true},
		{"100.63.255.255:443", true},
		{"100.128.0.1:443", true},
		{"198.20.0.1:443", true},
		{"[2606:4700:4700::1111]:443", true},
		{"[2606:4700:4700::1111%eth0]:443", true},
		{"[::ffff:8.8.8.8]:443", true},
		{"[64:ff9b::808:808]:443", true}, // NAT64 of 8.8.8.8
		{"[2002:808:808::1]:443", true},  // 6to4 of 8.8.8.8

		{"0.1.2.3:443", false},              // "this network"
		{"10.1.2.3:443", false},             // private
		{"100.64.0.1:443", false},           // shared address space
		{"100.100.100.200:443", false},      // cloud metadata in the shared address space
		{"127.0.0.1:443", false},            // loopback
		{"169.254.169.254:443", false},      // link-local, cloud metadata
		{"172.16.0.1:443", false},           // private
		{"192.0.0.8:443", false},            // IETF protocol assignments
		{"192.0.2.1:443", false},            // documentation
		{"192.168.1.1:443", false},          // private
		{"198.18.0.1:443", false},           // benchmarking
		{"198.19.255.255:443", false},       // benchmarking
		{"203.0.113.9:443", false},          // documentation
		{"224.0.0.1:443", false},            // multicast
		{"240.0.0.1:443", false},            // reserved
		{"255.255.255.255:443", false},      // broadcast
		{"[::]:443", false},                 // unspecified
		{"[::1]:443", false},                // loopback
		{"[::ffff:127.0.0.1]:443", false},   // IPv4-mapped loopback
		{"[::a9fe:a9fe]:443", false},        // IPv4-compatible 169.254.169.254
		{"[::808:808]:443", false},          // IPv4-compatible (deprecated), even of a public address
		{"[64:ff9b::a9fe:a9fe]:443", false}, // NAT64 of 169.254.169.254
		{"[64:ff9b::7f00:1]:443", false},    // NAT64 of 127.0.0.1
		{"[64:ff9b::a00:1]:443", false},     // NAT64 of 10.0.0.1
		{"[64:ff9b:1::808:808]:443", false}, // local-use translation
		{"[2002:a9fe:a9fe::1]:443", false},  // 6to4 of 169.254.169.254
		{"[2002:c0a8:101::1]:443", false},   // 6to4 of 192.168.1.1
		{"[2001::1]:443", false},            // Teredo
		{"[2001:db8::1]:443", false},        // documentation
		{"[3fff::1]:443", false},            // documentation
		{"[100::1]:443", false},             // discard-only
		{"[5f00::1]:443", false},            // segment routing
		{"[fc00::1]:443", false},            // unique local
		{"[fd12:3456::1]:443", false},       // unique local
		{"[fe80::1]:443", false},            // link-local
		{"[fe80::1%eth0]:443", false},       // link-local with a zone
		{"[fec0::1]:443", false},            // site-local
		{"[ff02::1]:443", false},            // multicast
		{"[4000::1]:443", false},            // outside 2000::/3
		{"not-an-address", false},
	}
	for _, tt := range tests {
		err := checkPublicAddress("tcp", tt.address, nil)
		if tt.public && err != nil {
			t.Errorf("checkPublicAddress(%s) = %v, want nil", tt.address, err)
		}
		if !tt.public && !errors.Is(err, errNonPublicAddress) {
			t.Errorf("checkPublicAddress(%s) = %v, want errNonPublicAddress", tt.address, err)
		}
	}
}
