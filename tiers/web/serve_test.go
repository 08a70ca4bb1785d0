package web_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"strata/fs"
	"strata/fs/memfs"
	"strata/tiers/web"
)

// selfSigned writes a certificate for 127.0.0.1 and its key into dir.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "strata test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestServe: HTTPS with a certificate, with a Secure cookie; plain HTTP
// only on loopback unless allowed.
func TestServe(t *testing.T) {
	dir := t.TempDir()
	tokens, err := web.OpenTokens(filepath.Join(dir, "tokens.json"))
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := tokens.Issue("alice")
	if err != nil {
		t.Fatal(err)
	}
	ns := memfs.New()
	ns.Mkdir(context.Background(), "store", 0o755)
	srv, err := web.New(web.Config{
		Tier: "edge/test", Tokens: tokens, Secure: true,
		Root: func(context.Context, string) (fs.Dir, error) { return ns, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, pool := selfSigned(t, dir)
	ctx := context.Background()
	hs, err := web.Serve(ctx, web.Listen{Addr: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile}, srv, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Shutdown(ctx)
	if !strings.HasPrefix(hs.URL(), "https://") {
		t.Errorf("URL %s, want https", hs.URL())
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Post(hs.URL()+"api/login", "application/json", strings.NewReader(`{"token":"`+tok+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cookies := resp.Cookies()
	if resp.StatusCode != 204 || len(cookies) != 1 || !cookies[0].Secure || !cookies[0].HttpOnly || cookies[0].SameSite != http.SameSiteStrictMode {
		t.Errorf("sign-in over HTTPS: %d, cookies %+v", resp.StatusCode, cookies)
	}
	// Plain HTTP over TLS's port fails; a plain server elsewhere than
	// loopback is refused unless allowed.
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + hs.Addr() + "/"); err == nil && resp.StatusCode == 200 {
		t.Errorf("plain HTTP on the HTTPS port answered 200")
	}
	if _, err := web.Serve(ctx, web.Listen{Addr: "0.0.0.0:0"}, srv, nil); err == nil || !strings.Contains(err.Error(), "not a loopback address") {
		t.Errorf("plain HTTP on 0.0.0.0: %v, want a refusal", err)
	}
	pub, err := web.Serve(ctx, web.Listen{Addr: "0.0.0.0:0", Public: true}, srv, nil)
	if err != nil {
		t.Fatalf("plain HTTP on 0.0.0.0 when allowed: %v", err)
	}
	pub.Shutdown(ctx)
	if _, err := web.Serve(ctx, web.Listen{Addr: "127.0.0.1:0", CertFile: certFile, KeyFile: filepath.Join(dir, "missing.pem")}, srv, nil); err == nil || !strings.Contains(err.Error(), "missing.pem") {
		t.Errorf("a missing key: %v", err)
	}
}

// TestTokens: issue, check, revoke by client and by id, and a file
// changed by another process is reread.
func TestTokens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.json")
	a, err := web.OpenTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	t1, e1, err := a.Issue("alice")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); strings.Contains(string(b), t1) {
		t.Errorf("the token file holds the token itself")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("the token file has mode %v", fi.Mode())
	}
	// Another process (another Tokens on the same file) issues and revokes.
	b, err := web.OpenTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	t2, _, err := b.Issue("bob")
	if err != nil {
		t.Fatal(err)
	}
	if name, err := a.Check(t2); err != nil || name != "bob" {
		t.Errorf("a token issued by another process: %q, %v", name, err)
	}
	if _, err := b.Revoke(e1.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Check(t1); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("a token revoked by another process: %v", err)
	}
	if name, err := a.Check(t2); err != nil || name != "bob" {
		t.Errorf("bob's token after alice's was revoked: %q, %v", name, err)
	}
	if _, err := a.Revoke("carol"); err == nil {
		t.Errorf("revoking a client with no token succeeded")
	}
	if _, _, err := a.Issue("../x"); err == nil {
		t.Errorf("a token for client ../x was issued")
	}
	if _, err := a.Check(""); err != web.ErrNoToken {
		t.Errorf("no token: %v", err)
	}
	os.WriteFile(path, []byte("{not json"), 0o600)
	if _, err := a.Check(t2); err == nil || !strings.Contains(err.Error(), "not valid") {
		t.Errorf("a broken token file: %v", err)
	}
}
