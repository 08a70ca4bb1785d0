package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"strata/fs"
	"strata/fs/objstore"
)

// Bounds of the requests to an object store: every request may take
// objTimeout, plus the time to move its bytes at objMinRate.
const (
	objTimeout = 30 * time.Second
	objMinRate = 1 << 20 // bytes per second
	// maxManifest bounds the manifest read from an object store.
	maxManifest = 64 << 20
)

// objSide is a side in a prefix of an S3 bucket: PREFIX/manifest.json
// and PREFIX/modules/HASH-UPLOAD.wasm (objectName). Uploads are atomic
// (one PutObject each), so nothing is staged. Any number of Repos may use
// one prefix at once: the manifest is written only over the version read
// (If-Match on its ETag, If-None-Match: * for the first), and a module
// object is named per upload.
type objSide struct {
	name     string // "primary" or "backup"
	url      string // s3://BUCKET/PREFIX, for logs and errors
	bucket   string
	root     string // the key prefix: "" or "PREFIX/"
	endpoint string
	c        *minio.Client
	core     minio.Core
	log      *slog.Logger
}

// objLocation is where a URL points: endpoint, bucket and prefix.
type objLocation struct{ endpoint, bucket, prefix string }

func parseObjURL(raw string) (objstore.Config, objLocation, error) {
	cfg, err := objstore.ParseURL(raw)
	if err != nil {
		return cfg, objLocation{}, err
	}
	return cfg, objLocation{cfg.Endpoint, cfg.Bucket, cfg.Prefix}, nil
}

// openObjSide opens the side at the store URL raw, and checks the bucket
// and the credentials at once.
func openObjSide(ctx context.Context, name, raw string, log *slog.Logger) (*objSide, error) {
	cfg, _, err := parseObjURL(raw)
	if err != nil {
		return nil, err
	}
	where := "s3://" + cfg.Bucket + "/" + cfg.Prefix
	creds, from, err := cfg.LoadCredentials()
	if err != nil {
		return nil, &fs.Error{Op: "open repo", Path: where, Kind: fs.Permission, Err: err}
	}
	c, err := minio.New(cfg.Endpoint, &minio.Options{Creds: creds, Secure: cfg.Secure, Region: cfg.Region, MaxRetries: 3, Transport: objTransport})
	if err != nil {
		return nil, &fs.Error{Op: "open repo", Path: where, Kind: fs.Invalid, Err: err}
	}
	s := &objSide{name: name, url: where, bucket: cfg.Bucket, endpoint: cfg.Endpoint, c: c, core: minio.Core{Client: c}, log: log}
	if cfg.Prefix != "" {
		s.root = cfg.Prefix + "/"
	}
	if err := s.probe(ctx, from); err != nil {
		return nil, err
	}
	return s, nil
}

// probe lists the prefix once, to report a missing bucket or refused
// credentials at once and clearly.
func (s *objSide) probe(ctx context.Context, from string) error {
	err := s.list(ctx, s.root, 1, func(minio.ObjectInfo) bool { return false })
	if err == nil {
		return nil
	}
	k := s3Kind(err)
	var why error
	switch {
	case s3Code(err) == "NoSuchBucket":
		why = fmt.Errorf("bucket %q does not exist at %s", s.bucket, s.endpoint)
	case k == fs.Permission:
		why = fmt.Errorf("%s refused the credentials from %s for bucket %q (%v)", s.endpoint, from, s.bucket, err)
	case k == fs.Timeout || k == fs.Unavailable:
		why = fmt.Errorf("cannot reach the object store at %s: %v", s.endpoint, err)
	default:
		why = fmt.Errorf("listing bucket %q at %s: %v", s.bucket, s.endpoint, err)
	}
	return &fs.Error{Op: "open repo", Path: s.url, Kind: k, Err: why}
}

func (s *objSide) role() string                 { return s.name }
func (s *objSide) where() string                { return s.url }
func (s *objSide) shared() bool                 { return true }
func (s *objSide) moduleName(rec record) string { return rec.Object }
func (s *objSide) close() error                 { return nil }

func (s *objSide) key(name string) string { return s.root + name }

// deadline bounds one request that moves n bytes.
func (s *objSide) deadline(ctx context.Context, n int64) (context.Context, context.CancelFunc) {
	d := objTimeout + time.Duration(float64(n)/objMinRate*float64(time.Second))
	return context.WithTimeoutCause(ctx, d, errObjDeadline)
}

var errObjDeadline = errors.New("no answer from the object store in time")

// objTransport, if not nil, carries the requests of the sides opened
// afterwards (tests put failures in it).
var objTransport http.RoundTripper

// fail turns err from a request about name into an *fs.Error whose
// cause names the store.
func (s *objSide) fail(ctx context.Context, what, name string, err error) error {
	if ctx.Err() != nil {
		if c := context.Cause(ctx); c != nil && !errors.Is(err, c) {
			err = fmt.Errorf("%w (%v)", c, err)
		}
	}
	return &fs.Error{Kind: s3Kind(err), Err: fmt.Errorf("object store %s: %s %s: %w", s.url, what, name, err)}
}

// list calls fn for the objects under prefix, in order, until fn returns
// false or max objects (if positive) were seen.
func (s *objSide) list(ctx context.Context, prefix string, max int, fn func(minio.ObjectInfo) bool) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watchdog := time.AfterFunc(objTimeout, func() { cancel(errObjDeadline) })
	defer watchdog.Stop()
	opts := minio.ListObjectsOptions{Prefix: prefix, Recursive: true}
	if max > 0 && max < 1000 {
		opts.MaxKeys = max
	}
	n := 0
	for oi := range s.c.ListObjectsIter(ctx, s.bucket, opts) {
		watchdog.Reset(objTimeout)
		if oi.Err != nil {
			return oi.Err
		}
		n++
		if !fn(oi) || (max > 0 && n >= max) {
			return nil
		}
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}

func (s *objSide) modules(ctx context.Context) ([]stored, error) {
	var out []stored
	err := s.list(ctx, s.key(moduleDir), 0, func(oi minio.ObjectInfo) bool {
		if name := strings.TrimPrefix(oi.Key, s.root); objectHash(name) != "" {
			out = append(out, stored{name: name, modified: oi.LastModified})
		}
		return true
	})
	if err != nil {
		return nil, s.fail(ctx, "list", moduleDir, err)
	}
	return out, nil
}

// put uploads data as the object name, with opts (conditions).
func (s *objSide) put(ctx context.Context, name string, data []byte, opts minio.PutObjectOptions) (minio.UploadInfo, error) {
	ctx, cancel := s.deadline(ctx, int64(len(data)))
	defer cancel()
	return s.c.PutObject(ctx, s.bucket, s.key(name), bytes.NewReader(data), int64(len(data)), opts)
}

// objStaged is a module uploaded under its own name.
type objStaged struct {
	s    *objSide
	name string
}

func (s *objSide) stage(ctx context.Context, name string, data []byte) (staged, error) {
	if _, err := s.put(ctx, name, data, minio.PutObjectOptions{ContentType: "application/wasm"}); err != nil {
		return nil, s.fail(ctx, "upload", name, err)
	}
	return &objStaged{s: s, name: name}, nil
}

func (o *objStaged) install(context.Context) error { return nil }

func (o *objStaged) discard() {
	ctx, cancel := context.WithTimeout(context.Background(), objTimeout)
	defer cancel()
	if err := o.s.remove(ctx, o.name); err != nil {
		o.s.log.Warn("repo: removing an upload not committed", "side", o.s.name, "object", o.name, "err", err)
	}
}

func (s *objSide) remove(ctx context.Context, name string) error {
	ctx, cancel := s.deadline(ctx, 0)
	defer cancel()
	if err := s.c.RemoveObject(ctx, s.bucket, s.key(name), minio.RemoveObjectOptions{}); err != nil && s3Kind(err) != fs.NotExist {
		return s.fail(ctx, "delete", name, err)
	}
	return nil
}

// get reads the object name whole, at most max bytes.
func (s *objSide) get(ctx context.Context, name string, max int64) ([]byte, minio.ObjectInfo, error) {
	ctx, cancel := s.deadline(ctx, max)
	defer cancel()
	body, oi, _, err := s.core.GetObject(ctx, s.bucket, s.key(name), minio.GetObjectOptions{})
	if err != nil {
		return nil, oi, err
	}
	defer body.Close()
	b, err := io.ReadAll(io.LimitReader(body, max+1))
	if err != nil {
		return nil, oi, err
	}
	return b, oi, nil
}

func (s *objSide) read(ctx context.Context, rec record) ([]byte, statKey, error) {
	if rec.Object == "" {
		return nil, statKey{}, errMissing
	}
	mod, oi, err := s.get(ctx, rec.Object, rec.Size)
	if err != nil {
		if s3Kind(err) == fs.NotExist {
			return nil, statKey{}, errMissing
		}
		return nil, statKey{}, s.fail(ctx, "read", rec.Object, err)
	}
	if int64(len(mod)) != rec.Size {
		size := int64(len(mod))
		if oi.Size > size {
			size = oi.Size
		}
		return nil, statKey{}, fmt.Errorf("corrupt: size %d, recorded %d", size, rec.Size)
	}
	if h := hashOf(mod); h != rec.Hash {
		return nil, statKey{}, fmt.Errorf("corrupt: hash %s, recorded %s", h, rec.Hash)
	}
	return mod, statKey{size: rec.Size, tag: oi.ETag}, nil
}

func (s *objSide) statKey(ctx context.Context, name string) (statKey, error) {
	ctx, cancel := s.deadline(ctx, 0)
	defer cancel()
	oi, err := s.c.StatObject(ctx, s.bucket, s.key(name), minio.StatObjectOptions{})
	if err != nil {
		if s3Kind(err) == fs.NotExist {
			return statKey{}, errMissing
		}
		return statKey{}, s.fail(ctx, "stat", name, err)
	}
	return statKey{size: oi.Size, tag: oi.ETag}, nil
}

func (s *objSide) readManifest(ctx context.Context) (manifest, []byte, string, error) {
	b, oi, err := s.get(ctx, ManifestName, maxManifest)
	if err != nil {
		if s3Kind(err) == fs.NotExist && s3Code(err) != "NoSuchBucket" {
			return manifest{}, nil, "", errNoManifest
		}
		return manifest{}, nil, "", s.fail(ctx, "read", ManifestName, err)
	}
	if int64(len(b)) > maxManifest {
		return manifest{}, nil, oi.ETag, fmt.Errorf("%s: %w: larger than %d bytes", ManifestName, errBadManifest, maxManifest)
	}
	m, err := decodeManifest(b)
	if err != nil {
		return manifest{}, b, oi.ETag, fmt.Errorf("%s: %w: %w", ManifestName, errBadManifest, err)
	}
	return m, b, oi.ETag, nil
}

func (s *objSide) manifestTag(ctx context.Context) (string, error) {
	ctx, cancel := s.deadline(ctx, 0)
	defer cancel()
	oi, err := s.c.StatObject(ctx, s.bucket, s.key(ManifestName), minio.StatObjectOptions{})
	if err != nil {
		if s3Kind(err) == fs.NotExist && s3Code(err) != "NoSuchBucket" {
			return "", errNoManifest
		}
		return "", s.fail(ctx, "stat", ManifestName, err)
	}
	return oi.ETag, nil
}

func (s *objSide) writeManifest(ctx context.Context, m manifest, prev string) (string, error) {
	opts := minio.PutObjectOptions{ContentType: "application/json"}
	if prev == "" {
		opts.SetMatchETagExcept("*")
	} else {
		opts.SetMatchETag(prev)
	}
	info, err := s.put(ctx, ManifestName, m.encode(), opts)
	if err != nil {
		switch c := s3Code(err); {
		case c == "PreconditionFailed", c == "ConditionalRequestConflict",
			prev != "" && s3Kind(err) == fs.NotExist && c != "NoSuchBucket":
			return "", errConflict
		}
		return "", s.fail(ctx, "write", ManifestName, err)
	}
	return info.ETag, nil
}

// s3Code is the S3 error code of err, or "".
func s3Code(err error) string {
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		return er.Code
	}
	return ""
}

// s3Kind classifies an error of a request to an object store.
func s3Kind(err error) fs.Kind {
	var er minio.ErrorResponse
	if errors.As(err, &er) && (er.Code != "" || er.StatusCode != 0) {
		switch er.Code {
		case "NoSuchKey", "NoSuchBucket", "NotFound":
			return fs.NotExist
		case "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
			"InvalidToken", "ExpiredToken", "RequestTimeTooSkewed":
			return fs.Permission
		case "SlowDown", "TooManyRequests", "OperationAborted", "PreconditionFailed", "ConditionalRequestConflict":
			return fs.Busy
		case "ServiceUnavailable":
			return fs.Unavailable
		case "RequestTimeout":
			return fs.Timeout
		case "EntityTooLarge":
			return fs.TooLarge
		case "QuotaExceeded", "StorageFull", "XMinioStorageFull":
			return fs.NoSpace
		}
		switch s := er.StatusCode; {
		case s == http.StatusNotFound:
			return fs.NotExist
		case s == http.StatusForbidden || s == http.StatusUnauthorized:
			return fs.Permission
		case s == http.StatusTooManyRequests:
			return fs.Busy
		case s == http.StatusServiceUnavailable || s == http.StatusBadGateway:
			return fs.Unavailable
		case s == http.StatusGatewayTimeout:
			return fs.Timeout
		}
		return fs.IO
	}
	switch {
	case errors.Is(err, errObjDeadline), errors.Is(err, context.DeadlineExceeded):
		return fs.Timeout
	case errors.Is(err, context.Canceled):
		return fs.Canceled
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fs.Timeout
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return fs.Unavailable
	}
	if k := fs.KindOf(err); k != fs.Other {
		return k
	}
	return fs.IO
}
