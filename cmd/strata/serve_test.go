package main

import (
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SIGTERM and SIGINT stop `strata serve store` cleanly: exit status 0, a
// log line that says so, and an open client connection does not hold it up.
func TestServeStoreStopsOnSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			s := startServer(t, t.TempDir())
			c, err := dialPlan9(s.addr, "")
			if err != nil {
				s.kill()
				t.Fatal(err)
			}
			defer c.close()
			if err := c.put("kept", []byte("acknowledged before the signal")); err != nil {
				s.kill()
				t.Fatal(err)
			}
			s.cmd.Process.Signal(sig)
			done := make(chan error, 1)
			go func() {
				<-s.eof // read all of stderr before Wait closes the pipe
				done <- s.cmd.Wait()
			}()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("exit after %v: %v\n%s", sig, err, s.logs)
				}
			case <-time.After(15 * time.Second):
				s.cmd.Process.Kill()
				t.Fatalf("still running 15s after %v", sig)
			}
			if !strings.Contains(s.logs.String(), "store server stopped") {
				t.Errorf("no shutdown line in the log:\n%s", s.logs)
			}
		})
	}
}

// Bad flags fail with a message that says what is wrong.
func TestServeStoreFlags(t *testing.T) {
	bin := strataBin(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "store"}, "-data DIR is required"},
		{[]string{"serve", "moon"}, `unknown tier "moon"`},
		{[]string{"serve", "cloud"}, "-data DIR and -keys DIR are required"},
		{[]string{"serve", "cloud", "-data", t.TempDir(), "-keys", t.TempDir()}, "run strata keygen"},
		{[]string{"serve", "edge", "-data", t.TempDir(), "-keys", t.TempDir(), "-group", "G/1"}, "run strata keygen"},
		{[]string{"call"}, "name one app"},
		{[]string{"call", "-dir", t.TempDir(), "upper"}, "is `strata up -dir"},
		{[]string{"deploy", "x"}, "name an app and a module file"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"serve", "store", "-data", t.TempDir(), "-listen", "256.0.0.1:1"}, `"256.0.0.1" is neither an IP address nor localhost`},
		{[]string{"serve", "store", "-data", t.TempDir(), "-listen", "0.0.0.0:0"}, "not on a loopback address"},
		{[]string{"serve", "store", "-data", t.TempDir(), "-public", "-listen", "256.0.0.1:1"}, "listening on 256.0.0.1:1"},
		{[]string{"serve", "store", "-data", t.TempDir(), "-log-level", "loud"}, `-log-level "loud"`},
	} {
		out, err := exec.Command(bin, tc.args...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("strata %v: err %v, want exit status 1", tc.args, err)
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("strata %v: output %q does not say %q", tc.args, out, tc.want)
		}
	}
}
