package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"strata/tiers/appedge"
	"strata/tiers/cloud"
	"strata/tiers/edge"
	"strata/tiers/keyring"
	"strata/tiers/tier"
	"strata/tiers/up"
	"strata/tiers/wasm"
	"strata/tiers/web"
)

// tierFlags are the flags every `serve` of a tier takes.
type tierFlags struct {
	fl          *flag.FlagSet
	listen      *string
	local       *string
	publicLocal *bool
	data        *string
	keys        *string
	level       *string
	grace       *time.Duration
	callTimeout *time.Duration
}

func newTierFlags(name, listen, local string) *tierFlags {
	fl := flag.NewFlagSet(name, flag.ContinueOnError)
	return &tierFlags{
		fl:          fl,
		listen:      fl.String("listen", listen, "TCP `address` of the encrypted port"),
		local:       fl.String("local", local, "TCP `address` of the plain 9P port for local tools (both dialects); empty for none"),
		publicLocal: fl.Bool("public-local", false, "allow the plain port on a non-loopback address (it has no encryption or authentication)"),
		data:        fl.String("data", "", "`directory` of the tier's data (created if missing)"),
		keys:        fl.String("keys", "", "keyring `directory` made by strata keygen"),
		level:       fl.String("log-level", "info", "log `level`: debug, info, warn, error"),
		grace:       fl.Duration("shutdown-timeout", 5*time.Second, "how long to wait for connections at shutdown"),
		callTimeout: fl.Duration("call-timeout", tier.DefaultCallTimeout, "budget of an invocation that starts at this tier"),
	}
}

func (f *tierFlags) parse(args []string) (*slog.Logger, *keyring.Ring, error) {
	if err := f.fl.Parse(args); err != nil {
		return nil, nil, err
	}
	if *f.data == "" || *f.keys == "" || f.fl.NArg() != 0 {
		f.fl.Usage()
		return nil, nil, fmt.Errorf("%s: -data DIR and -keys DIR are required and no arguments are taken", f.fl.Name())
	}
	log, err := newLogger(*f.level)
	if err != nil {
		return nil, nil, err
	}
	if _, err := os.Stat(filepath.Join(*f.keys, keyring.KEKFile)); err != nil {
		return nil, nil, fmt.Errorf("%s: no keyring in %s: run strata keygen -keys %s first", f.fl.Name(), *f.keys, *f.keys)
	}
	ring, err := keyring.Open(*f.keys, log.With("unit", "keys"))
	return log, ring, err
}

func appLimitFlags(fl *flag.FlagSet) *wasm.Limits {
	var l wasm.Limits
	fl.DurationVar(&l.Timeout, "app-timeout", wasm.DefaultTimeout, "time limit of one app run")
	fl.Func("app-memory-mib", fmt.Sprintf("memory cap of one app run in MiB (default %d)", wasm.DefaultMemoryMiB), func(s string) error {
		var n uint32
		_, err := fmt.Sscan(s, &n)
		l.MemoryMiB = n
		return err
	})
	return &l
}

// runServer waits for the server to stop or a signal, then shuts it down.
func runServer(ctx context.Context, s *tier.Server, grace time.Duration) error {
	werr := s.Wait(ctx)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	if err := s.Shutdown(sctx); err != nil && werr == nil {
		werr = err
	}
	return werr
}

func serveCloud(ctx context.Context, args []string) error {
	f := newTierFlags("serve cloud", "127.0.0.1:5640", "127.0.0.1:5641")
	lim := appLimitFlags(f.fl)
	store := f.fl.String("store", "", "`URL` of an object store for the apps instead of -data's disk: s3://BUCKET/PREFIX?endpoint=HOST:PORT&region=R&secure=false (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the AWS credentials file); cloud nodes given one URL serve the same apps")
	backupStore := f.fl.String("backup-store", "", "`URL` of the apps' backup copy with -store (default: the same bucket, PREFIX-backup)")
	refresh := f.fl.Duration("refresh", 0, fmt.Sprintf("with -store, how often the apps' manifest is checked for other nodes' deploys (default %v)", cloud.DefaultRefresh))
	log, ring, err := f.parse(args)
	if err != nil {
		return err
	}
	if *backupStore != "" && *store == "" {
		return fmt.Errorf("serve cloud: -backup-store goes with -store")
	}
	s, err := cloud.Start(ctx, cloud.Config{
		Ports: tier.Ports{Listen: *f.listen, Local: *f.local, PublicLocal: *f.publicLocal,
			Wrap: ring.Listen("cloud", keyring.MethodB, keyring.CloudPeers, log.With("unit", "link"))},
		Data: *f.data, Store: *store, BackupStore: *backupStore, Refresh: *refresh,
		Limits: *lim, CallTimeout: *f.callTimeout, Log: log,
	})
	if err != nil {
		return err
	}
	return runServer(ctx, s, *f.grace)
}

func serveAppEdge(ctx context.Context, args []string) error {
	f := newTierFlags("serve appedge", "127.0.0.1:5650", "127.0.0.1:5651")
	group := f.fl.String("group", "g1", "`name` of the group")
	parent := f.fl.String("parent", "127.0.0.1:5640", "`addresses` of the cloud's encrypted port, comma-separated for several cloud nodes (tried in turn)")
	pin := f.fl.String("pin", "upper", "comma-separated `apps` always held here")
	capMiB := f.fl.Int64("cap-mib", appedge.DefaultCapBytes>>20, "size cap in MiB of the replicas that are not pinned")
	pullAfter := f.fl.Int("pull-after", tier.DefaultPullAfter, "misses of an app before it is pulled in as a replica (-1: never)")
	refresh := f.fl.Duration("refresh", tier.DefaultRefresh, "how often replicas are checked against the cloud")
	timeout := f.fl.Duration("timeout", 0, "bound of each step on the link to the cloud (0: default)")
	lim := appLimitFlags(f.fl)
	log, ring, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := keyring.CheckName("group", *group); err != nil {
		return err
	}
	name := "appedge/" + *group
	var pinned []string
	for _, p := range strings.Split(*pin, ",") {
		if p = strings.TrimSpace(p); p != "" {
			pinned = append(pinned, p)
		}
	}
	s, err := appedge.Start(ctx, appedge.Config{
		Name: name,
		Ports: tier.Ports{Listen: *f.listen, Local: *f.local, PublicLocal: *f.publicLocal,
			Wrap: ring.Listen(name, keyring.MethodA, keyring.AppEdgePeers(*group), log.With("unit", "link"))},
		Parent: tier.Parent{Name: "cloud", Addr: *parent, Dial: ring.Dial(name, keyring.LinkB(*group)), Timeout: *timeout},
		Data:   *f.data, Pinned: pinned, CapBytes: *capMiB << 20, PullAfter: *pullAfter, Refresh: *refresh,
		Limits: *lim, CallTimeout: *f.callTimeout, Log: log,
	})
	if err != nil {
		return err
	}
	return runServer(ctx, s, *f.grace)
}

func serveEdge(ctx context.Context, args []string) error {
	f := newTierFlags("serve edge", "127.0.0.1:5652", "127.0.0.1:5653")
	group := f.fl.String("group", "g1", "`name` of the group")
	parent := f.fl.String("parent", "127.0.0.1:5650", "`addresses` of the app edge's encrypted port, comma-separated for several (tried in turn)")
	timeout := f.fl.Duration("timeout", 0, "bound of each step on the link to the app edge (0: default)")
	httpAddr := f.fl.String("http", "", "TCP `address` of the web page and its API (empty for none)")
	cert := f.fl.String("http-cert", "", "certificate `file` (PEM): serve the web page over HTTPS")
	key := f.fl.String("http-key", "", "private key `file` (PEM) of -http-cert")
	public := f.fl.Bool("http-public", false, "allow plain HTTP on a non-loopback address (tokens cross the network in clear)")
	tokens := f.fl.String("tokens", "", "web token `file` made by strata token (default: tokens.json in -keys)")
	maxUpload := f.fl.Int64("max-upload-mib", web.DefaultMaxUpload>>20, "cap of one upload through the web page, in MiB")
	threshold1 := f.fl.Int("threshold1", web.DefaultThreshold1, "the page downloads an app invoked more than this many times")
	threshold2 := f.fl.Int64("threshold2", web.DefaultThreshold2, "link speed in `bytes/s` below which the page runs a held copy")
	storeURL := f.fl.String("store", "", "`URL` of an object store for /store instead of -data's disk: s3://BUCKET/PREFIX?endpoint=HOST:PORT&region=R&secure=false (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the AWS credentials file); the edges of a group share one")
	log, ring, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := keyring.CheckName("group", *group); err != nil {
		return err
	}
	if (*cert == "") != (*key == "") {
		return fmt.Errorf("serve edge: -http-cert and -http-key go together")
	}
	name := "edge/" + *group
	s, err := edge.Start(ctx, edge.Config{
		Name: name,
		Ports: tier.Ports{Listen: *f.listen, Local: *f.local, PublicLocal: *f.publicLocal,
			Wrap: ring.Listen(name, keyring.MethodClient, keyring.EdgePeers, log.With("unit", "link"))},
		Parent:      tier.Parent{Name: "appedge/" + *group, Addr: *parent, Dial: ring.Dial(name, keyring.LinkA(*group)), Timeout: *timeout},
		Data:        *f.data,
		Store:       *storeURL,
		CallTimeout: *f.callTimeout, Log: log,
	})
	if err != nil {
		return err
	}
	if *httpAddr != "" {
		tf := *tokens
		if tf == "" {
			tf = filepath.Join(*f.keys, up.TokensFile)
		}
		tok, err := web.OpenTokens(tf)
		if err != nil {
			s.Shutdown(context.WithoutCancel(ctx))
			return err
		}
		_, err = edge.Web(ctx, s, web.Config{
			Tokens: tok, MaxUpload: *maxUpload << 20, Threshold1: *threshold1, Threshold2: *threshold2,
			CallTimeout: *f.callTimeout, Secure: *cert != "", Log: log,
		}, web.Listen{Addr: *httpAddr, CertFile: *cert, KeyFile: *key, Public: *public})
		if err != nil {
			s.Shutdown(context.WithoutCancel(ctx))
			return err
		}
	}
	return runServer(ctx, s, *f.grace)
}
