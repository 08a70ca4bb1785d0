package ninep

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"strata/fs/store"
)

// fuzzAttach is a connection's start in a dialect: Tversion, then Tattach
// of fid 0 to the root.
func fuzzAttach(linux bool) []byte {
	version := "9P2000"
	if linux {
		version = "9P2000.L"
	}
	out := ltversionFrame(0xffff, 8192, version)
	str := func(b []byte, s string) []byte {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
		return append(b, s...)
	}
	var body []byte
	body = binary.LittleEndian.AppendUint32(body, 0)          // fid
	body = binary.LittleEndian.AppendUint32(body, ^uint32(0)) // afid: none
	body = str(body, "fuzz")
	body = str(body, "")
	if linux {
		body = binary.LittleEndian.AppendUint32(body, 0) // n_uname
	}
	frame := binary.LittleEndian.AppendUint32(nil, uint32(7+len(body)))
	frame = append(frame, 104, 1, 0) // Tattach, tag 1
	return append(out, append(frame, body...)...)
}

// FuzzServer sends arbitrary messages, after a proper start, to a real
// server over a store, in either dialect. Nothing may panic, the
// connection must end promptly once the client hangs up, and nothing
// outside the store may be touched.
//
//	go test -run '^$' -fuzz FuzzServer -fuzztime 1m ./fs/ninep/
func FuzzServer(f *testing.F) {
	for _, seed := range plan9SeedFrames() {
		f.Add(false, seed)
	}
	walk := binary.LittleEndian.AppendUint32(nil, 0)
	walk = binary.LittleEndian.AppendUint32(walk, 1)
	walk = binary.LittleEndian.AppendUint16(walk, 2)
	for _, n := range []string{"..", "a"} {
		walk = binary.LittleEndian.AppendUint16(walk, uint16(len(n)))
		walk = append(walk, n...)
	}
	f.Add(true, append(binary.LittleEndian.AppendUint32(nil, uint32(7+len(walk))), append([]byte{110, 2, 0}, walk...)...))
	f.Add(true, []byte{11, 0, 0, 0, 12, 3, 0, 1, 0, 0, 0}) // Tlopen fid 1
	f.Add(true, []byte{255, 255, 255, 255, 116, 4, 0})     // a frame past msize

	jail := f.TempDir()
	sentinel := filepath.Join(jail, "outside")
	if err := os.WriteFile(sentinel, []byte("sentinel"), 0o644); err != nil {
		f.Fatal(err)
	}
	st, err := store.Open(filepath.Join(jail, "store"), nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	ctx := context.Background()
	if _, h, err := st.Root().Create(ctx, "a", 1, 0o644); err == nil {
		h.WriteAt(ctx, []byte("inside"), 0)
		h.Close(ctx)
	}
	srv := NewServer(st.Root(), nil)

	f.Fuzz(func(t *testing.T, linux bool, data []byte) {
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			srv.ServeConn(ctx, server)
			close(done)
		}()
		go io.Copy(io.Discard, client) // the answers, whatever they are
		client.SetWriteDeadline(time.Now().Add(5 * time.Second))
		client.Write(fuzzAttach(linux))
		client.Write(data)
		client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the connection did not end within 10s of the client hanging up")
		}
		if b, err := os.ReadFile(sentinel); err != nil || string(b) != "sentinel" {
			t.Fatalf("the file outside the store changed: %q %v", b, err)
		}
		list, err := os.ReadDir(jail)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list {
			if e.Name() != "outside" && e.Name() != "store" {
				t.Fatalf("%q appeared outside the store", e.Name())
			}
		}
	})
}
