// Package call is the invocation: the request ID that tags it (the
// patent's identification unit), the request and reply as they cross a
// tier boundary, and the recorder that makes a retried request idempotent.
//
// A request ID names its kind and app and is unique:
//
//	app.upper.18a3c5e2f0b1c4d2-9f3b2a71c0de4455
//
// that is kind "app", app "upper", then the time in nanoseconds and eight
// random bytes, both in hex. Every tier that handles the request logs it.
//
// Between tiers an invocation is one file, /apps/<app>/calls/<id>: the
// caller writes an encoded Request, then reads the encoded Reply from
// offset 0 of the same open file. Both are a few "key value" header lines,
// a blank line, and the bodies:
//
//	strata-call 1            strata-call 1
//	budget-ms 9500           status ok
//	                         where appedge/g1
//	<input>                  why replica hit
//	                         out 5
//	                         err 0
//
//	                         <out><err>
package call

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"strata/fs"
)

// Kinds of request.
const (
	KindApp   = "app"   // an app invocation
	KindStore = "store" // a store request
)

// MaxIDLen bounds a request ID (it is a file name).
const MaxIDLen = 160

// NewID returns a fresh request ID for kind and app.
func NewID(kind, app string) string {
	var r [8]byte
	rand.Read(r[:])
	return kind + "." + app + "." + strconv.FormatInt(time.Now().UnixNano(), 16) + "-" + hex.EncodeToString(r[:])
}

// ParseID checks id and returns its kind and app.
func ParseID(id string) (kind, app string, err error) {
	bad := func(why string) (string, string, error) {
		return "", "", &fs.Error{Op: "parse request id", Path: clip(id), Kind: fs.Invalid, Err: errors.New(why)}
	}
	if len(id) == 0 || len(id) > MaxIDLen {
		return bad(fmt.Sprintf("a request id has 1 to %d bytes", MaxIDLen))
	}
	parts := strings.Split(id, ".")
	if len(parts) != 3 {
		return bad("a request id is kind.app.unique")
	}
	kind, app, uniq := parts[0], parts[1], parts[2]
	if kind != KindApp && kind != KindStore {
		return bad("the kind of a request id is app or store")
	}
	if app == "" || !allIn(app, "abcdefghijklmnopqrstuvwxyz0123456789_-") {
		return bad("the app of a request id is lower-case letters, digits, '_' and '-'")
	}
	if len(uniq) < 8 || !allIn(uniq, "0123456789abcdefghijklmnopqrstuvwxyz-_") {
		return bad("the unique part of a request id is at least 8 characters of [0-9a-z_-]")
	}
	return kind, app, nil
}

func allIn(s, set string) bool {
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(set, s[i]) < 0 {
			return false
		}
	}
	return true
}

func clip(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// Request is one invocation as it crosses a tier boundary.
type Request struct {
	ID     string
	App    string
	Input  []byte
	Budget time.Duration // how long the caller will wait; 0 = the callee's default
}

// Reply is the answer to a Request.
type Reply struct {
	ID     string
	OK     bool
	Where  string  // the tier that ran the app, e.g. "appedge/g1"
	Why    string  // why it ran there, e.g. "replica hit"
	Route  string  // the tiers it crossed, e.g. "edge/g1 > appedge/g1"
	Kind   fs.Kind // of the failure, when !OK
	Reason string  // one line: why it failed, when !OK
	Out    []byte  // the app's stdout
	Err    []byte  // the app's stderr
	// Transient marks a failure that says nothing about the app (a link
	// down, a deadline passed before an answer): it is not recorded, and
	// a retry with the same ID tries again.
	Transient bool
}

// Error is the failure of a Reply as an error, or nil if it succeeded.
func (r *Reply) Error() error {
	if r.OK {
		return nil
	}
	return &fs.Error{Op: "invoke", Path: r.App(), Kind: r.Kind, Err: errors.New(r.Reason)}
}

// App is the app named in the reply's ID.
func (r *Reply) App() string {
	_, app, err := ParseID(r.ID)
	if err != nil {
		return ""
	}
	return app
}

// Failed builds the reply of a request that failed with err at where.
// Failures of the kinds a link or a deadline causes are transient.
func Failed(id, where string, err error) *Reply {
	k := fs.KindOf(err)
	return &Reply{ID: id, Where: where, Kind: k, Reason: OneLine(err.Error()), Transient: TransientKind(k)}
}

// TransientKind reports whether a failure of kind k is transient.
func TransientKind(k fs.Kind) bool {
	switch k {
	case fs.Timeout, fs.Unavailable, fs.Canceled, fs.Busy:
		return true
	}
	return false
}

// OneLine makes s fit one header line: trimmed, line breaks as "; ".
func OneLine(s string) string {
	s = strings.TrimSpace(s)
	s = strings.ReplaceAll(s, "\r", " ")
	return strings.ReplaceAll(s, "\n", "; ")
}

const magic = "strata-call 1"

// MaxHeader bounds the header of a request or reply.
const MaxHeader = 4096

// EncodeRequest is the bytes a caller writes to a call file.
func EncodeRequest(r *Request) []byte {
	var b bytes.Buffer
	b.WriteString(magic + "\n")
	if r.Budget > 0 {
		fmt.Fprintf(&b, "budget-ms %d\n", r.Budget.Milliseconds())
	}
	b.WriteString("\n")
	b.Write(r.Input)
	return b.Bytes()
}

// DecodeRequest parses what was written to the call file of id.
func DecodeRequest(id string, p []byte) (*Request, error) {
	_, app, err := ParseID(id)
	if err != nil {
		return nil, err
	}
	h, body, err := header(p)
	if err != nil {
		return nil, &fs.Error{Op: "decode request", Path: id, Kind: fs.Invalid, Err: err}
	}
	r := &Request{ID: id, App: app, Input: body}
	if v, ok := h["budget-ms"]; ok {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms <= 0 || ms > 24*3600*1000 {
			return nil, &fs.Error{Op: "decode request", Path: id, Kind: fs.Invalid, Err: fmt.Errorf("bad budget-ms %q", clip(v))}
		}
		r.Budget = time.Duration(ms) * time.Millisecond
	}
	return r, nil
}

// EncodeReply is the bytes a caller reads from a call file.
func EncodeReply(r *Reply) []byte {
	var b bytes.Buffer
	b.Grow(128 + len(r.Out) + len(r.Err))
	b.WriteString(magic + "\n")
	if r.OK {
		b.WriteString("status ok\n")
	} else {
		b.WriteString("status failed\n")
		fmt.Fprintf(&b, "kind %d\n", r.Kind)
		fmt.Fprintf(&b, "reason %s\n", OneLine(r.Reason))
		if r.Transient {
			b.WriteString("transient yes\n")
		}
	}
	fmt.Fprintf(&b, "where %s\n", OneLine(r.Where))
	if r.Why != "" {
		fmt.Fprintf(&b, "why %s\n", OneLine(r.Why))
	}
	if r.Route != "" {
		fmt.Fprintf(&b, "route %s\n", OneLine(r.Route))
	}
	fmt.Fprintf(&b, "out %d\nerr %d\n\n", len(r.Out), len(r.Err))
	b.Write(r.Out)
	b.Write(r.Err)
	return b.Bytes()
}

// DecodeReply parses what was read from the call file of id.
func DecodeReply(id string, p []byte) (*Reply, error) {
	h, body, err := header(p)
	if err != nil {
		return nil, &fs.Error{Op: "decode reply", Path: id, Kind: fs.Invalid, Err: err}
	}
	r := &Reply{ID: id, Where: h["where"], Why: h["why"], Route: h["route"]}
	switch h["status"] {
	case "ok":
		r.OK = true
	case "failed":
		k, _ := strconv.Atoi(h["kind"])
		r.Kind = fs.Kind(k)
		r.Reason = h["reason"]
		r.Transient = h["transient"] == "yes"
	default:
		return nil, &fs.Error{Op: "decode reply", Path: id, Kind: fs.Invalid, Err: fmt.Errorf("bad status %q", clip(h["status"]))}
	}
	nout, err1 := strconv.Atoi(h["out"])
	nerr, err2 := strconv.Atoi(h["err"])
	if err1 != nil || err2 != nil || nout < 0 || nerr < 0 || nout+nerr != len(body) {
		return nil, &fs.Error{Op: "decode reply", Path: id, Kind: fs.Invalid, Err: fmt.Errorf("body of %d bytes does not match out %q and err %q", len(body), clip(h["out"]), clip(h["err"]))}
	}
	r.Out, r.Err = body[:nout:nout], body[nout:]
	return r, nil
}

// header splits p into its header fields and body.
func header(p []byte) (map[string]string, []byte, error) {
	end := bytes.Index(p[:min(len(p), MaxHeader)], []byte("\n\n"))
	if end < 0 {
		return nil, nil, fmt.Errorf("no %q header in the first %d bytes", magic, MaxHeader)
	}
	sc := bufio.NewScanner(bytes.NewReader(p[:end+1]))
	if !sc.Scan() || sc.Text() != magic {
		return nil, nil, fmt.Errorf("the first line is not %q", magic)
	}
	h := map[string]string{}
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		if _, dup := h[k]; dup {
			return nil, nil, fmt.Errorf("header %q given twice", clip(k))
		}
		h[k] = v
	}
	return h, p[end+2:], nil
}

// ReplyLen is the length of the whole reply that p begins, or -1 if p
// does not hold its header yet (or the header is malformed).
func ReplyLen(p []byte) int {
	h, body, err := header(p)
	if err != nil {
		return -1
	}
	nout, err1 := strconv.Atoi(h["out"])
	nerr, err2 := strconv.Atoi(h["err"])
	if err1 != nil || err2 != nil || nout < 0 || nerr < 0 {
		return -1
	}
	return len(p) - len(body) + nout + nerr
}
