package objstore

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"strata/fs"
)

// Defaults for the zero fields of a Config.
const (
	DefaultEndpoint   = "s3.amazonaws.com"
	DefaultTimeout    = 30 * time.Second
	DefaultMinRate    = 1 << 20  // bytes per second
	DefaultPartSize   = 16 << 20 // bytes
	DefaultBlockSize  = 1 << 20  // bytes
	DefaultCacheBytes = 64 << 20 // bytes
	// MinPartSize is the smallest part of a multipart upload that S3 takes.
	MinPartSize = 5 << 20
)

// Config says which bucket and prefix hold a store and how to reach them.
// ParseURL fills the location from a URL; the rest may stay zero.
type Config struct {
	Bucket string
	// Prefix is the folder of the bucket that is the store's root,
	// slash-separated, without a leading or trailing slash; "" is the
	// whole bucket. Each element must be a valid name (fs.CheckName).
	Prefix string
	// Endpoint is the server, HOST or HOST:PORT; DefaultEndpoint if empty.
	Endpoint string
	// Region is the bucket's region; if empty, the server is asked.
	Region string
	// Secure selects https.
	Secure bool

	// Credentials, if not nil, are used as they are. Otherwise they come
	// from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and
	// AWS_SESSION_TOKEN), or else from the shared credentials file:
	// CredentialsFile, or AWS_SHARED_CREDENTIALS_FILE, or
	// ~/.aws/credentials, in the profile Profile, or AWS_PROFILE, or
	// "default".
	Credentials     *Credentials
	CredentialsFile string
	Profile         string

	// StagingDir is the local directory where writes are staged before
	// they are uploaded; a directory under os.TempDir() if empty. Each
	// Store works in a subdirectory of its own, and removes those that
	// stores which ended without closing left behind.
	StagingDir string
	// BlockSize is the unit of ranged reads and of the read cache;
	// DefaultBlockSize if zero.
	BlockSize int64
	// CacheBytes bounds the read cache; DefaultCacheBytes if zero. It
	// holds at least one block whatever its bound.
	CacheBytes int64
	// PartSize is the part size of multipart uploads, which files larger
	// than it use; DefaultPartSize if zero, at least MinPartSize.
	PartSize int64

	// Timeout bounds every request to the server: a request that moves n
	// bytes may take Timeout plus n/MinRate seconds. DefaultTimeout and
	// DefaultMinRate if zero.
	Timeout time.Duration
	MinRate int64

	// Log receives the store's events; nil discards them.
	Log *slog.Logger

	// transport, if not nil, carries the requests to the server (tests
	// put failures in it).
	transport http.RoundTripper
}

// Credentials are an access key pair, with a session token for temporary
// credentials.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
}

// String hides the secret.
func (c Credentials) String() string { return "access key " + c.AccessKeyID }

// ParseURL parses a store URL:
//
//	s3://BUCKET/PREFIX?endpoint=HOST:PORT&region=R&secure=false
//
// PREFIX may be empty (the whole bucket) or several elements (a/b/c).
// endpoint defaults to DefaultEndpoint, secure to true (https), and the
// region to what the server says. Credentials never appear in the URL;
// Open takes them from the environment or the shared credentials file.
func ParseURL(raw string) (Config, error) {
	bad := func(format string, args ...any) (Config, error) {
		return Config{}, &fs.Error{Op: "parse store URL", Path: redact(raw), Kind: fs.Invalid, Err: fmt.Errorf(format, args...)}
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return bad("not a URL: %v", err)
	}
	switch {
	case u.Scheme != "s3":
		return bad("scheme %q: want s3://BUCKET/PREFIX", u.Scheme)
	case u.Opaque != "":
		return bad("want s3://BUCKET/PREFIX, with two slashes")
	case u.User != nil:
		return bad("credentials do not belong in the URL: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or use a credentials file")
	case u.Port() != "":
		return bad("the host part is the bucket and takes no port: give the server as ?endpoint=HOST:PORT")
	case u.Fragment != "":
		return bad("unexpected fragment #%s", u.Fragment)
	}
	cfg := Config{Bucket: u.Host, Endpoint: DefaultEndpoint, Secure: true}
	if cfg.Bucket == "" {
		return bad("no bucket: want s3://BUCKET/PREFIX")
	}
	if err := s3utils.CheckValidBucketNameStrict(cfg.Bucket); err != nil {
		return bad("bad bucket name %q: %v", cfg.Bucket, err)
	}
	if cfg.Prefix, err = cleanPrefix(u.Path); err != nil {
		return bad("%v", err)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad("bad query: %v", err)
	}
	for k, v := range q {
		if len(v) != 1 {
			return bad("parameter %q given %d times", k, len(v))
		}
		switch k {
		case "endpoint":
			if err := checkEndpoint(v[0]); err != nil {
				return bad("%v", err)
			}
			cfg.Endpoint = v[0]
		case "region":
			if v[0] == "" || strings.ContainsAny(v[0], "/ \t") {
				return bad("bad region %q", v[0])
			}
			cfg.Region = v[0]
		case "secure":
			b, err := strconv.ParseBool(v[0])
			if err != nil {
				return bad("secure=%q: want true or false", v[0])
			}
			cfg.Secure = b
		default:
			return bad("unknown parameter %q (known: endpoint, region, secure)", k)
		}
	}
	return cfg, nil
}

// redact hides anything that looks like credentials in a URL that failed
// to parse well enough to show.
func redact(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	if i := strings.Index(raw, "@"); i >= 0 {
		return "(URL with credentials)"
	}
	return raw
}

// cleanPrefix checks a prefix given as a path and returns it without a
// leading or trailing slash.
func cleanPrefix(p string) (string, error) {
	p = strings.TrimPrefix(p, "/")
	p = strings.TrimSuffix(p, "/")
	if p == "" {
		return "", nil
	}
	for _, e := range strings.Split(p, "/") {
		if err := fs.CheckName("prefix", e); err != nil {
			return "", fmt.Errorf("bad prefix %q: element %q is not a valid name (empty, \".\", \"..\", NUL or too long)", p, e)
		}
	}
	return p, nil
}

// checkEndpoint checks a HOST or HOST:PORT.
func checkEndpoint(e string) error {
	if e == "" {
		return errors.New("empty endpoint: want endpoint=HOST:PORT")
	}
	if strings.Contains(e, "://") {
		return fmt.Errorf("endpoint %q: want HOST:PORT without a scheme (use secure=false for http)", e)
	}
	host := e
	if strings.Contains(e, ":") {
		h, port, err := net.SplitHostPort(e)
		if err != nil {
			return fmt.Errorf("endpoint %q: want HOST:PORT: %v", e, err)
		}
		if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
			return fmt.Errorf("endpoint %q: bad port %q", e, port)
		}
		host = h
	}
	if host == "" || strings.ContainsAny(host, "/?#@ ") {
		return fmt.Errorf("endpoint %q: bad host", e)
	}
	return nil
}

// withDefaults checks cfg and fills its zero fields.
func (cfg Config) withDefaults() (Config, error) {
	bad := func(format string, args ...any) (Config, error) {
		return Config{}, &fs.Error{Op: "open store", Kind: fs.Invalid, Err: fmt.Errorf(format, args...)}
	}
	if err := s3utils.CheckValidBucketNameStrict(cfg.Bucket); err != nil {
		return bad("bad bucket name %q: %v", cfg.Bucket, err)
	}
	p, err := cleanPrefix(cfg.Prefix)
	if err != nil {
		return bad("%v", err)
	}
	cfg.Prefix = p
	if cfg.Endpoint == "" {
		cfg.Endpoint = DefaultEndpoint
	}
	if err := checkEndpoint(cfg.Endpoint); err != nil {
		return bad("%v", err)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MinRate == 0 {
		cfg.MinRate = DefaultMinRate
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = DefaultPartSize
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = DefaultBlockSize
	}
	if cfg.CacheBytes == 0 {
		cfg.CacheBytes = DefaultCacheBytes
	}
	switch {
	case cfg.Timeout < 0 || cfg.MinRate < 0 || cfg.BlockSize < 0 || cfg.CacheBytes < 0:
		return bad("negative timeout, rate, block size or cache size")
	case cfg.PartSize < MinPartSize:
		return bad("part size %d is below the %d bytes S3 takes", cfg.PartSize, MinPartSize)
	}
	if cfg.StagingDir == "" {
		cfg.StagingDir = filepath.Join(os.TempDir(), "strata-objstore")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}

// LoadCredentials returns the credentials of cfg (Credentials, else the
// environment, else the shared credentials file) and says where they came
// from, for error messages. Other users of the same URLs (the cloud's app
// repository) take theirs from here too.
func (cfg Config) LoadCredentials() (*credentials.Credentials, string, error) {
	if c := cfg.Credentials; c != nil {
		if c.AccessKeyID == "" || c.SecretAccessKey == "" {
			return nil, "", errors.New("the configured credentials lack an access key ID or a secret")
		}
		return credentials.NewStaticV4(c.AccessKeyID, c.SecretAccessKey, c.SessionToken), "the configuration", nil
	}
	file := cfg.CredentialsFile
	if file == "" {
		file = os.Getenv("AWS_SHARED_CREDENTIALS_FILE")
	}
	if file == "" {
		home, err := os.UserHomeDir()
		if err == nil {
			file = filepath.Join(home, ".aws", "credentials")
		}
	}
	profile := cfg.Profile
	if profile == "" {
		profile = os.Getenv("AWS_PROFILE")
	}
	if profile == "" {
		profile = "default"
	}
	env := &credentials.EnvAWS{}
	if v, _ := env.Retrieve(); v.AccessKeyID != "" && v.SecretAccessKey != "" {
		return credentials.New(env), "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", nil
	}
	if _, err := os.Stat(file); file != "" && err == nil {
		fp := &credentials.FileAWSCredentials{Filename: file, Profile: profile}
		v, err := fp.Retrieve()
		if err == nil && v.AccessKeyID != "" && v.SecretAccessKey != "" {
			return credentials.New(fp), fmt.Sprintf("%s (profile %s)", file, profile), nil
		}
		if err == nil {
			err = errors.New("no aws_access_key_id and aws_secret_access_key there")
		}
		return nil, "", fmt.Errorf("no credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set, and the credentials file %s (profile %s) cannot be used: %v", file, profile, err)
	}
	return nil, "", fmt.Errorf("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put them in the credentials file %s (profile %s)", file, profile)
}
