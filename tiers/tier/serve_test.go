package tier

import (
	"context"
	"strings"
	"testing"

	"strata/fs"
	"strata/fs/memfs"
)

func TestCheckLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:1": true, "[::1]:1": true, "localhost:1": true, "127.9.9.9:0": true,
		"0.0.0.0:1": false, ":1": false, "[::]:1": false, "10.1.2.3:1": false, "example.com:1": false, "nonsense": false,
	} {
		if err := CheckLoopback(addr); (err == nil) != ok {
			t.Errorf("CheckLoopback(%q) = %v", addr, err)
		}
	}
}

// The plain port is refused on a non-loopback address unless allowed.
func TestServeRefusesPublicPlainPort(t *testing.T) {
	if _, err := New(Config{Role: Edge, Parent: Parent{Name: "p", Addr: "127.0.0.1:1"}.Mount(nil)}); err == nil || !strings.Contains(err.Error(), "store") {
		t.Fatalf("an edge without a store: %v", err)
	}
	st := memfs.New()
	ctx := context.Background()
	cl, err := New(Config{Role: Edge, Parent: Parent{Name: "p", Addr: "127.0.0.1:1"}.Mount(nil), Store: func(context.Context, string) (fs.Dir, error) { return st, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Serve(ctx, cl, Ports{Local: "0.0.0.0:0"}, nil); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("plain port on 0.0.0.0: %v", err)
	}
	s, err := Serve(ctx, cl, Ports{Local: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Shutdown(ctx)
}
