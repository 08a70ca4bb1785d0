package call

import (
	"bytes"
	"testing"
)

// Whatever is written to a call file decodes to a request or a clear
// error, and a decoded request encodes back to an equivalent one; a reply
// that decodes has a body matching its header.
func FuzzDecode(f *testing.F) {
	id := "app.upper.0123456789abcdef"
	f.Add(EncodeRequest(&Request{ID: id, Input: []byte("hello")}))
	f.Add([]byte("strata-call 1\nbudget-ms 100\n\nx"))
	f.Add(EncodeReply(&Reply{ID: id, OK: true, Where: "cloud", Out: []byte("HELLO")}))
	f.Add([]byte("strata-call 1\nstatus failed\nkind 13\nreason r\nwhere w\nout 0\nerr 1\n\nE"))
	f.Add([]byte("strata-call 1\nout -1\nerr 1\n\n"))
	f.Fuzz(func(t *testing.T, p []byte) {
		if r, err := DecodeRequest(id, p); err == nil {
			again, err := DecodeRequest(id, EncodeRequest(r))
			if err != nil || !bytes.Equal(again.Input, r.Input) || again.Budget != r.Budget {
				t.Fatalf("request did not round-trip: %+v, %v", again, err)
			}
		}
		if r, err := DecodeReply(id, p); err == nil {
			if n := ReplyLen(p); n != len(p) {
				t.Fatalf("ReplyLen %d of a %d-byte reply", n, len(p))
			}
			again, err := DecodeReply(id, EncodeReply(r))
			if err != nil || !bytes.Equal(again.Out, r.Out) || !bytes.Equal(again.Err, r.Err) || again.OK != r.OK {
				t.Fatalf("reply did not round-trip: %+v, %v", again, err)
			}
		}
		ReplyLen(p)
	})
}
