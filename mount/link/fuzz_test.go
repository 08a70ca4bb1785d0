package link

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"
)

// scriptConn is a net.Conn whose peer's bytes are fixed in advance;
// what is written to it is dropped.
type scriptConn struct{ r *bytes.Reader }

func (c *scriptConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *scriptConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzServerHandshake feeds arbitrary bytes to Server as the client's
// side of a handshake. It must never panic, and never succeed: without
// the server's fresh nonce no input can carry a valid key proof.
func FuzzServerHandshake(f *testing.F) {
	keys := newKeys(f, AES256GCM)
	id := primaryID(f, keys)
	cfg := ServerConfig{Name: "edge/g1", Method: AES256GCM, Keys: anyPeer(keys)}

	good := hello{version: version, method: AES256GCM, name: "alice", keyID: id}
	fakeFinished := appendRecord(nil, recFinished, bytes.Repeat([]byte{0x5a}, 5+12+len(clientFinishedLabel)+16))
	wrongMethod := good
	wrongMethod.method = XChaCha20Poly1305
	wrongKey := good
	wrongKey.keyID = id + 1
	oldVersion := good
	oldVersion.version = "strata-link/0"

	f.Add(good.record())
	f.Add(append(good.record(), fakeFinished...))
	f.Add(append(good.record(), appendRecord(nil, recRefusal, []byte("no"))...))
	f.Add(append(good.record(), appendRecord(nil, recData, []byte("early data"))...))
	f.Add(wrongMethod.record())
	f.Add(wrongKey.record())
	f.Add(oldVersion.record())
	f.Add([]byte{})
	f.Add([]byte{recHello, 0xff, 0xff, 0xff})
	f.Add([]byte{recHello, 0, 0, 3, 0, 0, 0})
	f.Add([]byte("Tversion 9P2000.L"))

	f.Fuzz(func(t *testing.T, data []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := Server(ctx, &scriptConn{r: bytes.NewReader(data)}, cfg)
		if err == nil {
			c.Close()
			t.Fatalf("handshake succeeded on %q", data)
		}
		if c != nil {
			t.Fatal("a failed handshake returned a Conn")
		}
	})
}
