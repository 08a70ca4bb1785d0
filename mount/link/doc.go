// Package link is Strata's encrypted, authenticated channel: a net.Conn
// whose bytes travel as Tink AEAD ciphertexts under per-session keys
// derived from a link keyset.
//
// # Keys
//
// A link keyset is a Tink keyset of PRF-based derivation keys (HKDF-SHA256
// PRF, deriving AES256-GCM or XChaCha20-Poly1305 keys: the link's Method).
// Each session derives its AEAD from one key of the keyset, the dialer's
// primary, with the session ID as salt, so no two sessions share a key.
// The accepting side uses whichever enabled key of its keyset the dialer
// names, so rotation (Rotate: add a key and make it primary) never drops a
// peer: rotate the accepting side first, then the dialers; once every
// dialer holds the new key, Retire the old one. Keyset files are encrypted
// under a key-encryption key with associated data naming their purpose
// (WriteKeyset, ReadKeyset).
//
// # Records
//
// Everything on the wire, handshake included, is a record:
//
//	type   1 byte   'H' hello, 'F' finished, 'R' refusal, 'D' data, 'C' close
//	length 3 bytes  big-endian length of body
//	body   length bytes
//
// # Handshake
//
// The dialer sends a hello; the acceptor answers with its own hello or a
// refusal. A hello's body is
//
//	version  1-byte length, "strata-link/1"
//	method   1-byte length, the Method
//	name     1-byte length, the sender's name
//	nonce    32 random bytes
//	key ID   4 bytes big-endian: the dialer's primary key; the acceptor
//	         echoes the one it accepted
//
// The session ID is SHA-256 over a label and both hello records as sent.
// Each side derives the session AEAD and proves it holds the key with a
// finished record: the AEAD encryption of "strata link finished: client"
// (or "server") as frame 0 of its direction (see below). The dialer sends
// its finished first; the acceptor checks it before sending its own. A
// side that refuses sends a refusal record whose body is the reason in
// plain text ("method mismatch: peer offered X, this link uses Y",
// "unknown peer ...", "key proof failed: ...") and closes; the other side
// returns it as a RefusedError. A refusal is not authenticated: it can
// only end a handshake, never deliver data.
//
// # Frames
//
// After the handshake each record is a frame: a data frame carries at most
// MaxFramePayload bytes of plaintext, the close frame none. Its body is
// one Tink AEAD ciphertext of the session keyset (5-byte key prefix,
// random nonce, ciphertext, tag) with associated data
//
//	session ID (32) || direction ('c' dialer to acceptor, 's' back) ||
//	sequence number (8, big-endian, per direction, finished = 0) || type
//
// so a frame that is altered, replayed, reordered, reflected back to its
// sender, or spliced from another session fails to open. Any such failure,
// and any end of the TCP stream before an authenticated close frame, is
// fatal to the Conn: Read returns an error naming the frame and the Conn
// closes. Read returns io.EOF only after the peer's close frame. Nothing
// that failed authentication is ever returned by Read.
//
// # Performance
//
// Tink's AEAD API returns a new slice from every call, and in a small
// heap the garbage collection of two 64 KiB slices per frame costs more
// than the cipher. So data frames are sealed and opened with the derived
// key's cipher (crypto/cipher AES-GCM, x/crypto XChaCha20-Poly1305) into
// reused buffers, in Tink's exact ciphertext format; each session checks
// that Tink's primitive and this path open each other's ciphertexts, and
// falls back to Tink's primitive if not. A Write seals up to four frames
// into one buffer and sends it with one system call; a Read decrypts
// straight into the caller's buffer when the frame fits. A link's
// buffers start small and grow, when it carries bulk data, to about
// 260 KiB for writing and 520 KiB for reading (eight frames, so that one
// system call can bring in several).
//
// The cipher is most of the cost of a bulk transfer, so the frames of
// one Write are sealed in parallel, each into its own place in the
// buffer, and the frames a Read finds already received are opened in
// parallel, each into its own place in the caller's buffer. Every frame
// still has its own nonce, sequence number and tag, and a Read counts
// the plaintext of a frame only once that frame and all before it have
// been authenticated; what a batch opened past a frame that failed is
// wiped from the caller's buffer. The work is shared by the calling
// goroutine and helpers that it waits for before returning, and claimed
// a frame at a time, so on a machine with no idle processor the caller
// simply does it all. Write and Read return only when their frames are
// done, so deadlines, errors and Close behave as they would without
// the helpers.
package link
