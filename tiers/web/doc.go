// Package web is an edge's web front end: one page, embedded in the
// binary, and a small HTTP API over the namespace each client sees through
// its 9P export (the patent's client "in the form of a web page").
//
// # Authentication
//
// A client signs in with a per-client token that `strata token issue`
// makes (Tokens keeps only its hash). The token travels as
// "Authorization: Bearer TOKEN" or in the cookie that POST /api/login sets
// (HttpOnly, SameSite=Strict, Secure over HTTPS). Every request is checked
// against the token file as it is now, so a revocation takes effect at
// once. A wrong or revoked token gets 401 and a sentence that says why;
// the page itself is then served with 401 and the reason in it. A change
// authenticated by the cookie must come from the page's own origin.
// Plain HTTP is served only on loopback unless allowed explicitly
// (Listen.Public); with a certificate the page is served over HTTPS.
//
// # API
//
// Errors are JSON {"error": "what failed and why", "kind": "not-exist"}
// with a status that fits the kind (404, 409, 413, 502, 504 ...).
//
//	POST   /api/login                 {"token": "..."}: sets the cookie
//	POST   /api/logout
//	GET    /api/whoami                the client, the tier, the page's thresholds
//	GET    /api/store/PATH            a directory: JSON listing; a file: its bytes (ranges, ETag)
//	PUT    /api/store/PATH            upload, streamed, replacing the file atomically
//	POST   /api/store/PATH?op=mkdir
//	POST   /api/store/PATH?op=rename&to=NEWPATH
//	DELETE /api/store/PATH            a file, or an empty directory
//	GET    /api/apps                  every app with its version, hash, size and info
//	GET    /api/apps/ID/info          /apps/ID/info
//	GET    /api/apps/ID/where         which tier ran this client's latest call, and why
//	GET    /api/apps/ID/module.wasm   the module, with X-Strata-Hash and X-Strata-Version
//	POST   /api/apps/ID/call          invoke: the body is the input, the answer the app's stdout
//	GET    /api/status                the edge's /status
//	GET    /api/probe?n=BYTES         incompressible bytes, for measuring the link
//
// PATH is the client's own /store; no element may be empty, "." or "..",
// and the store itself cannot be left by any name. An upload larger than
// Config.MaxUpload, cut short or stalled for stepTimeout leaves the old
// content. A download reads one version of a file whole, even while it
// is being rewritten.
//
// An invocation carries the request ID of the patent's identification
// unit: the page makes one per call and sends it as X-Strata-Request-ID
// (app.ID.UNIQUE); a retry with the same ID gets the recorded answer and
// does not run again. The call goes through the client's
// /apps/ID/calls/REQUEST-ID, as a tier below the edge would send it, and
// the answer carries X-Strata-Where, X-Strata-Why, X-Strata-Route and
// X-Strata-Elapsed-Ms. A failed app answers 422 with its stderr.
//
// # The page
//
// The page (page/) is plain HTML, CSS and JavaScript with no packages: a
// store browser, an app panel and a status strip. It carries the
// patent's detection and call units, with the client tier's rules: it
// counts invocations per app (in localStorage), downloads an app's module
// into IndexedDB after Threshold1 invocations (checked against the hash
// the edge's info gives), estimates the link's speed from real transfers
// and a probe, and while the link is slower than Threshold2 runs the held
// copy in a Web Worker with a WASI shim of its own (page/wasi.js).
package web
