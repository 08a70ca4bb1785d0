package link

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"strata/fs"
)

// captureConn is a net.Conn that keeps what is written to it.
type captureConn struct {
	scriptConn
	out bytes.Buffer
}

func (c *captureConn) Write(p []byte) (int, error) { return c.out.Write(p) }

// batchPair is the two ends of one session over scripted connections:
// what the sender writes is captured, and the receiver reads what the
// test gives it. Sequence numbers start after the finished records.
func batchPair(t *testing.T, m Method, stream func() []byte) (send *Conn, recv func() *Conn) {
	keys := newKeys(t, m)
	id := primaryID(t, keys)
	var sid [sessionIDSize]byte
	copy(sid[:], "batch test session id, 32 bytes")
	sess, err := deriveSession(keys, id, sid[:])
	if err != nil {
		t.Fatal(err)
	}
	send = newConn(&captureConn{}, nil, sess, sid, true, "server", m, id)
	send.wseq = 1
	recv = func() *Conn {
		sc := &scriptConn{r: bytes.NewReader(stream())}
		c := newConn(sc, newRecordReader(sc, initialReadBuf), sess, sid, false, "client", m, id)
		c.rseq = 1
		return c
	}
	return send, recv
}

// TestTamperInBatch damages one frame of several that the reader has
// all at once, so that they are opened as one batch: Read must return
// exactly the frames before the damaged one, leave nothing of the frames
// after it in the caller's buffer, and then fail naming the frame.
func TestTamperInBatch(t *testing.T) {
	const frames = 4
	for _, m := range methods() {
		for bad := range frames {
			t.Run(fmt.Sprintf("%s/frame-%d", m, bad+1), func(t *testing.T) {
				var stream []byte
				send, recv := batchPair(t, m, func() []byte { return stream })
				rng := rand.New(rand.NewPCG(uint64(bad), 7))
				data := make([]byte, frames*MaxFramePayload)
				for i := range data {
					data[i] = byte(rng.Uint32()) | 1 // never zero
				}
				if _, err := send.Write(data); err != nil {
					t.Fatal(err)
				}
				stream = send.conn.(*captureConn).out.Bytes()
				// Flip a bit in the ciphertext of data frame bad+1.
				off := 0
				for range bad {
					off += headerSize + headerLen(stream[off:])
				}
				stream[off+headerSize+headerLen(stream[off:])-20] ^= 0x01
				rc := recv()

				buf := make([]byte, len(data))
				n, err := rc.Read(buf)
				want := bad * MaxFramePayload
				if n != want {
					t.Fatalf("read %d bytes (%v), want %d", n, err, want)
				}
				if !bytes.Equal(buf[:n], data[:n]) {
					t.Fatal("read the wrong bytes")
				}
				for off := n; off < len(buf); off += MaxFramePayload {
					if !bytes.Equal(buf[off:off+MaxFramePayload], make([]byte, MaxFramePayload)) {
						t.Fatalf("the buffer holds something at %d, after the damaged frame", off)
					}
				}
				if err == nil {
					_, err = rc.Read(buf)
				}
				wantErr(t, err, fmt.Sprintf("frame %d failed authentication", bad+1))
				if !errors.Is(err, ErrFrameAuth) || fs.KindOf(err) != fs.IO {
					t.Errorf("error %v: want ErrFrameAuth, kind IO", err)
				}
			})
		}
	}
}

// TestBatchSizes moves writes and reads of sizes around the frame size
// and its multiples, so that frames are sealed and opened both one at a
// time and in batches, and checks every byte.
func TestBatchSizes(t *testing.T) {
	for _, m := range methods() {
		t.Run(string(m), func(t *testing.T) {
			keys := newKeys(t, m)
			s := startServer(t, ServerConfig{Name: "edge/g1", Method: m, Keys: anyPeer(keys)})
			c, sc := connect(t, s, s.addr(), Config{Name: "alice", Method: m, Keys: fixed(keys)})
			sizes := []int{1, MaxFramePayload - 1, MaxFramePayload, MaxFramePayload + 1,
				2 * MaxFramePayload, 3*MaxFramePayload + 7, writeBatch * MaxFramePayload,
				writeBatch*MaxFramePayload + 1, 3 * writeBatch * MaxFramePayload}
			for _, ws := range sizes {
				for _, rs := range sizes {
					data := make([]byte, ws)
					for i := range data {
						data[i] = byte(i*7 + ws + rs)
					}
					errc := make(chan error, 1)
					go func() { _, err := c.Write(data); errc <- err }()
					got := make([]byte, 0, ws)
					buf := make([]byte, rs)
					for len(got) < ws {
						k, err := sc.Read(buf)
						got = append(got, buf[:k]...)
						if err != nil {
							t.Fatalf("write %d, read %d: %v", ws, rs, err)
						}
					}
					if err := <-errc; err != nil {
						t.Fatalf("write %d: %v", ws, err)
					}
					if !bytes.Equal(got, data) {
						t.Fatalf("write %d, read %d: data differs", ws, rs)
					}
				}
			}
		})
	}
}
