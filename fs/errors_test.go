package fs

import (
	"context"
	"errors"
	iofs "io/fs"
	"os"
	"strings"
	"syscall"
	"testing"
)

func TestErrorUnwrapsToIOFS(t *testing.T) {
	err := error(&Error{Op: "open", Path: "a/b", Kind: NotExist})
	if !errors.Is(err, iofs.ErrNotExist) || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("%v: not fs.ErrNotExist / ENOENT", err)
	}
	if errors.Is(err, iofs.ErrExist) {
		t.Errorf("%v: is fs.ErrExist", err)
	}
	if got, want := err.Error(), "open a/b: file does not exist"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	to := &Error{Op: "read", Path: "x", Kind: Timeout, Err: errors.New("edge 127.0.0.1:1 did not answer within 5s")}
	if !errors.Is(to, os.ErrDeadlineExceeded) || !to.Timeout() {
		t.Errorf("%v: not a timeout", to)
	}
	if got := to.Error(); !strings.Contains(got, "timed out") || !strings.Contains(got, "edge 127.0.0.1:1") {
		t.Errorf("Error() = %q, want the kind and the cause", got)
	}
}

func TestE(t *testing.T) {
	_, oserr := os.Open("/nonexistent/strata-test")
	err := E("open", "x", Other, oserr)
	if KindOf(err) != NotExist {
		t.Errorf("KindOf(%v) = %v", err, KindOf(err))
	}
	if strings.Contains(err.Error(), "/nonexistent") {
		t.Errorf("E kept the host path: %q", err)
	}
	for in, want := range map[error]Kind{
		context.DeadlineExceeded: Timeout,
		context.Canceled:         Canceled,
		syscall.ENOTEMPTY:        NotEmpty,
		syscall.ECONNREFUSED:     Unavailable,
		iofs.ErrClosed:           BadHandle,
		errors.New("x"):          Other,
	} {
		if got := KindOf(in); got != want {
			t.Errorf("KindOf(%v) = %v, want %v", in, got, want)
		}
	}
	if ErrnoOf(errors.New("plain")) != syscall.EIO {
		t.Error("plain error is not EIO")
	}
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"a", "a.b", "...", "x y", strings.Repeat("n", MaxNameLen)} {
		if err := CheckName("t", ok); err != nil {
			t.Errorf("CheckName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", "/", "a\x00", strings.Repeat("n", MaxNameLen+1)} {
		if err := CheckName("t", bad); err == nil {
			t.Errorf("CheckName(%q) = nil", bad)
		}
	}
}

func TestWithPath(t *testing.T) {
	err := WithPath(&Error{Op: "read", Kind: IO}, "read", "store/f")
	var fe *Error
	if !errors.As(err, &fe) || fe.Path != "store/f" {
		t.Errorf("WithPath = %v", err)
	}
	if WithPath(nil, "x", "y") != nil {
		t.Error("WithPath(nil) != nil")
	}
}
