package objstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"syscall"

	"github.com/minio/minio-go/v7"

	"strata/fs"
)

// Errors that the store itself finds.
var (
	errNegative      = errors.New("negative offset or size")
	errNoRead        = errors.New("handle not open for reading")
	errNoWrite       = errors.New("handle not open for writing")
	errTruncRO       = errors.New("truncate needs write access")
	errClosed        = errors.New("store closed")
	errHandle        = errors.New("handle closed")
	errChanged       = errors.New("the object changed since it was opened: reopen the file to read the new version")
	errVanished      = errors.New("the object was removed since it was opened")
	errRootAttr      = errors.New("the root of an object store keeps no attributes")
	errIntoItself    = errors.New("cannot move a directory into itself")
	errDirExists     = errors.New("a directory of that name exists")
	errFileExists    = errors.New("a file of that name exists")
	errMadeMeanwhile = errors.New("made meanwhile by another client")
)

// s3Error is the cause of an error the server answered: its S3 code and
// message. It unwraps to the library's error.
type s3Error struct {
	code, msg string
	err       error
}

func (e *s3Error) Error() string {
	if e.msg == "" {
		return "s3 " + e.code
	}
	return "s3 " + e.code + ": " + e.msg
}

func (e *s3Error) Unwrap() error { return e.err }

// codeKinds classifies the S3 error codes.
var codeKinds = map[string]fs.Kind{
	"NoSuchKey":                   fs.NotExist,
	"NoSuchBucket":                fs.NotExist,
	"NoSuchUpload":                fs.NotExist,
	"NotFound":                    fs.NotExist,
	"AccessDenied":                fs.Permission,
	"AllAccessDisabled":           fs.Permission,
	"AccountProblem":              fs.Permission,
	"InvalidAccessKeyId":          fs.Permission,
	"XAdminUserNotFound":          fs.Permission,
	"SignatureDoesNotMatch":       fs.Permission,
	"InvalidToken":                fs.Permission,
	"ExpiredToken":                fs.Permission,
	"InvalidSecurity":             fs.Permission,
	"RequestTimeTooSkewed":        fs.Permission,
	"MethodNotAllowed":            fs.Unsupported,
	"NotImplemented":              fs.Unsupported,
	"EntityTooLarge":              fs.TooLarge,
	"MaxMessageLengthExceeded":    fs.TooLarge,
	"MetadataTooLarge":            fs.TooLarge,
	"KeyTooLongError":             fs.NameTooLong,
	"InvalidObjectName":           fs.Invalid,
	"InvalidArgument":             fs.Invalid,
	"InvalidRange":                fs.Invalid,
	"InvalidBucketName":           fs.Invalid,
	"InvalidPart":                 fs.Invalid,
	"InvalidPartOrder":            fs.Invalid,
	"EntityTooSmall":              fs.Invalid,
	"ObjectExistsAsDirectory":     fs.IsDir,
	"ExistingObjectIsDirectory":   fs.IsDir,
	"DirectoryObjectContainsData": fs.Invalid,
	"ObjectParentIsFile":          fs.NotDir,
	"XMinioParentIsObject":        fs.NotDir,
	"SlowDown":                    fs.Busy,
	"TooManyRequests":             fs.Busy,
	"OperationAborted":            fs.Busy,
	"ServiceUnavailable":          fs.Unavailable,
	"RequestTimeout":              fs.Timeout,
	"InternalError":               fs.IO,
	"QuotaExceeded":               fs.NoSpace,
	"StorageFull":                 fs.NoSpace,
	"XMinioStorageFull":           fs.NoSpace,
}

// classify says what kind of failure err is, and returns the cause to
// report: the S3 code and message for an answer of the server.
func classify(err error) (fs.Kind, error) {
	var fe *fs.Error
	if errors.As(err, &fe) {
		return fe.Kind, fe.Err
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) && (er.Code != "" || er.StatusCode != 0) {
		cause := &s3Error{code: er.Code, msg: er.Message, err: err}
		if cause.code == "" {
			cause.code = http.StatusText(er.StatusCode)
		}
		if k, ok := codeKinds[er.Code]; ok {
			return k, cause
		}
		switch s := er.StatusCode; {
		case s == http.StatusNotFound:
			return fs.NotExist, cause
		case s == http.StatusForbidden || s == http.StatusUnauthorized:
			return fs.Permission, cause
		case s == http.StatusRequestEntityTooLarge:
			return fs.TooLarge, cause
		case s == http.StatusTooManyRequests:
			return fs.Busy, cause
		case s == http.StatusServiceUnavailable || s == http.StatusBadGateway:
			return fs.Unavailable, cause
		case s == http.StatusGatewayTimeout:
			return fs.Timeout, cause
		case s == http.StatusNotImplemented:
			return fs.Unsupported, cause
		case s >= 500:
			return fs.IO, cause
		case s >= 400:
			return fs.Invalid, cause
		}
		return fs.IO, cause
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, errDeadline):
		return fs.Timeout, err
	case errors.Is(err, context.Canceled):
		return fs.Canceled, err
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fs.Timeout, err
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return fs.KindOf(errno), err
	}
	var oe *net.OpError
	if errors.As(err, &oe) || errors.As(err, &ne) {
		return fs.Unavailable, err
	}
	if k := fs.KindOf(err); k != fs.Other {
		return k, err
	}
	return fs.IO, err
}

// errDeadline is the cause of a request that ran past its deadline.
var errDeadline = errors.New("no answer from the object store in time")

// fail turns err, from the server, the network or the staging disk, into
// an *fs.Error for op on the path p.
func (s *Store) fail(op, p string, err error) error {
	if err == nil {
		return nil
	}
	var fe *fs.Error
	if errors.As(err, &fe) && fe.Op != "" {
		return err
	}
	k, cause := classify(err)
	switch k {
	case fs.Timeout, fs.Unavailable:
		cause = fmt.Errorf("object store %s: %w", s.cfg.Endpoint, cause)
	}
	return &fs.Error{Op: op, Path: p, Kind: k, Err: cause}
}

// code is the S3 error code of err, or "".
func code(err error) string {
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		return er.Code
	}
	return ""
}

// isNotExist reports whether err says the object is not there.
func isNotExist(err error) bool {
	k, _ := classify(err)
	return k == fs.NotExist
}
