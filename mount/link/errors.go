package link

import (
	"errors"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Reasons a handshake is refused, and ways a session ends. The errors
// that Client, Server and Conn return wrap one of these where it applies,
// on both sides of the link (a RefusedError unwraps to the reason the
// peer gave), so errors.Is can tell them apart.
var (
	// ErrMethodMismatch: the two ends use different methods.
	ErrMethodMismatch = errors.New("method mismatch")
	// ErrUnknownPeer: the acceptor has no keyset for the dialer's name.
	ErrUnknownPeer = errors.New("unknown peer")
	// ErrKeyProof: the peer does not hold this link's key.
	ErrKeyProof = errors.New("key proof failed")
	// ErrVersion: the peer speaks another version of the protocol.
	ErrVersion = errors.New("unsupported version")
	// ErrProtocol: the peer sent something malformed or out of place.
	ErrProtocol = errors.New("protocol error")
	// ErrFrameAuth: a frame failed authentication.
	ErrFrameAuth = errors.New("failed authentication")
	// ErrTruncated: the stream ended without the peer's close frame.
	ErrTruncated = errors.New("link truncated")
)

// RefusedError is a refusal received from the peer: By is "server" or
// "client", Reason the peer's text. It unwraps to the sentinel the reason
// names (ErrMethodMismatch, ErrUnknownPeer, ErrKeyProof, ...), if any.
type RefusedError struct {
	By     string
	Reason string
}

// Error reads "refused by <By>: <Reason>".
func (e *RefusedError) Error() string { return "refused by " + e.By + ": " + e.Reason }

// Unwrap returns the sentinel the reason starts with, or nil.
func (e *RefusedError) Unwrap() error {
	for _, r := range [...]error{ErrMethodMismatch, ErrUnknownPeer, ErrKeyProof, ErrVersion, ErrProtocol} {
		if strings.HasPrefix(e.Reason, r.Error()) {
			return r
		}
	}
	return nil
}

// sanitize makes text from the peer safe to show: printable runes only,
// at most maxRefusal bytes.
func sanitize(b []byte) string {
	if len(b) > maxRefusal {
		b = b[:maxRefusal]
	}
	var sb strings.Builder
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		b = b[n:]
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			r = '?'
		}
		sb.WriteRune(r)
	}
	return sb.String()
}
