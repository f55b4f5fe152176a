package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/term"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
	"github.com/kpd-dir/kpd/auth/atproto"
	"github.com/kpd-dir/kpd/backup"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/jobs"
	"github.com/kpd-dir/kpd/kv"
	"github.com/kpd-dir/kpd/metrics"
	"github.com/kpd-dir/kpd/mls"
	"github.com/kpd-dir/kpd/ratelimit"
	"github.com/kpd-dir/kpd/webhook"
)

// serveConfig is everything `kpd serve` reads from flags and environment.
type serveConfig struct {
	db              string
	listen          string
	authMode        string
	suites          listValue
	maxLifetime     time.Duration
	clockSkew       time.Duration
	identityCheck   bool
	allowX509       bool
	lowWatermark    watermarkValue
	maxAvailable    int
	maxDevices      int
	claimRetention  time.Duration
	logLevel        string
	shutdownTimeout time.Duration

	consumedRetention time.Duration
	welcomeRetention  time.Duration
	sweepInterval     time.Duration
	maxWaiters        int
	metricsAddr       string
	webhook           webhookFlags
	maxOutbox         int
	mmapSize          int

	maxBody, maxKeyPackage, maxWelcome int
	maxWelcomeMembers                  int
	maxPublishBatch, maxClaimTargets   int
	maxClaimDevices, maxRefs           int
	maxWaitersPerDID                   int

	serviceDID   string
	plcURL       string
	maxTokenAge  time.Duration
	trustedProxy listValue

	publishLimit   string
	claimPairLimit string
	claimLimit     string

	admin   adminTokenFlags
	backups backupFlags
}

func (c *serveConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.db, "db", "kpd.db", "database `file`")
	fs.StringVar(&c.listen, "listen", "127.0.0.1:8080", "HTTP listen `address` (port 0 picks a free port)")
	fs.StringVar(&c.authMode, "auth", "token", "authentication `mode`: token, atproto, proxy, or dev (dev: Bearer <did>, loopback only)")
	fs.StringVar(&c.serviceDID, "service-did", "", "kpd's own `DID`, the audience of AT Protocol service tokens (required with --auth atproto)")
	fs.StringVar(&c.plcURL, "plc-url", atproto.DefaultPLCURL, "PLC directory `URL` for resolving did:plc")
	durationVar(fs, &c.maxTokenAge, "max-token-age", atproto.DefaultMaxTokenAge, "how far ahead an AT Protocol service token's exp may be (more than 0)")
	fs.Var(&c.trustedProxy, "trusted-proxy", "`CIDR` or IP allowed to set Kpd-Authenticated-Did with --auth proxy (repeatable; default loopback)")
	fs.StringVar(&c.publishLimit, "publish-limit", "1000/h", "KeyPackages one DID may publish: `RATE` as N/s, N/m or N/h, with an optional :BURST; off disables")
	fs.StringVar(&c.claimPairLimit, "claim-pair-limit", "10/m:20", "claims by one claimer of one target DID (RATE, see --publish-limit)")
	fs.StringVar(&c.claimLimit, "claim-limit", "10/s:200", "target DIDs one claimer may claim (RATE, see --publish-limit)")
	fs.Var(&c.suites, "suite", "extra cipher suite `ID=HASH:SIG`, e.g. 0x0053=sha512:ed25519 (repeatable; comma-separated in the environment)")
	durationVar(fs, &c.maxLifetime, "max-key-package-lifetime", 90*24*time.Hour, "longest accepted KeyPackage lifetime from now (0 = unlimited)")
	durationVar(fs, &c.clockSkew, "clock-skew", time.Hour, "how far in the future a KeyPackage's not_before may be (0 = not at all)")
	fs.BoolVar(&c.identityCheck, "identity-check", true, "require each credential to name the publishing DID (false only for test vectors)")
	fs.BoolVar(&c.allowX509, "allow-x509", false, "accept x509 credentials (their identity is not checked against the DID)")
	c.lowWatermark = kv.DefaultLowWatermark
	fs.Var(&c.lowWatermark, "low-watermark", "`count` of available KeyPackages per device and suite at or below which a device should replenish (a key_packages.low event); off (or 0) turns the low events off")
	fs.IntVar(&c.maxAvailable, "max-available", 200, "available KeyPackages per device and suite (at least 1)")
	fs.IntVar(&c.maxDevices, "max-devices", 20, "devices per DID (at least 1)")
	durationVar(fs, &c.claimRetention, "claim-retention", 30*24*time.Hour, "how long a claimed KeyPackage waits for its Welcome (more than 0)")
	fs.StringVar(&c.logLevel, "log-level", "info", "log `level`: debug, info, warn, error")
	durationVar(fs, &c.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long SIGINT or SIGTERM waits for in-flight requests (0 = not at all); a second signal stops at once")
	c.admin.register(fs, "bearer `token` of the admin routes (/v1/admin/backup, /v1/admin/stats, /v1/admin/tokens), at least 16 characters; without one they are off")
	c.backups.register(fs)
	durationVar(fs, &c.consumedRetention, "consumed-retention", kv.DefaultConsumedRetention, "how long the metadata of consumed KeyPackages, finished deliveries and their Welcomes is kept (more than 0)")
	durationVar(fs, &c.welcomeRetention, "welcome-retention", kv.DefaultWelcomeRetention, "how long a Welcome waits for its device before its delivery expires (more than 0)")
	durationVar(fs, &c.sweepInterval, "sweep-interval", jobs.DefaultSweepInterval, "time between sweeps of expired KeyPackages and of records past their retention (at least 1s)")
	fs.IntVar(&c.maxWaiters, "max-waiters", httpapi.DefaultMaxWaiters, "Welcome listings that may wait (?wait=) at once (at least 1); beyond, 503")
	fs.IntVar(&c.maxWaitersPerDID, "max-waiters-per-did", httpapi.DefaultMaxWaitersPerDID, "Welcome listings of one DID that may wait at once (at least 1); beyond, 503")
	fs.StringVar(&c.metricsAddr, "metrics-addr", "", "serve GET /metrics on this `address` only, instead of on --listen")
	c.webhook.register(fs)
	fs.IntVar(&c.maxOutbox, "max-outbox", kv.DefaultMaxOutbox, "undelivered webhook events kept (at least 1); beyond, the oldest are dropped")
	sizeVar(fs, &c.maxBody, "max-body-size", 8<<20, "largest request body (`size`, e.g. 8MiB); beyond, 413")
	sizeVar(fs, &c.maxKeyPackage, "max-key-package-size", 64<<10, "largest published KeyPackage (`size`); beyond, the item is PayloadTooLarge")
	sizeVar(fs, &c.maxWelcome, "max-welcome-size", 4<<20, "largest posted Welcome (`size`); beyond, 413")
	fs.IntVar(&c.maxWelcomeMembers, "max-welcome-members", httpapi.DefaultMaxWelcomeMembers, "new members one posted Welcome may name (its new_member entries); beyond, 413")
	fs.IntVar(&c.maxPublishBatch, "max-publish-batch", 100, "KeyPackages in one publish; beyond, 413")
	fs.IntVar(&c.maxClaimTargets, "max-claim-targets", 100, "targets in one claim; beyond, 413")
	fs.IntVar(&c.maxClaimDevices, "max-claim-devices", httpapi.DefaultMaxClaimDevices, "devices one claim target names, and devices in exclude_devices; beyond, 413 (keep it at least --max-devices)")
	fs.IntVar(&c.maxRefs, "max-refs", httpapi.DefaultMaxRefs, "refs in one delete or sync request; beyond, 413")
	sizeVar(fs, &c.mmapSize, "mmap-size", 0, "initial `size` of the database's memory map, e.g. 2GiB (0 = bbolt's default); presize it to the expected file size so that writes to a growing file need not wait for a long snapshot")
}

// limits returns the request size limits of the flags (SPEC section 7).
func (c *serveConfig) limits() (httpapi.Limits, error) {
	for _, l := range []struct {
		name string
		n    int
	}{
		{"max-body-size", c.maxBody}, {"max-key-package-size", c.maxKeyPackage}, {"max-welcome-size", c.maxWelcome},
		{"max-welcome-members", c.maxWelcomeMembers}, {"max-publish-batch", c.maxPublishBatch}, {"max-claim-targets", c.maxClaimTargets},
		{"max-claim-devices", c.maxClaimDevices}, {"max-refs", c.maxRefs},
		{"max-waiters", c.maxWaiters}, {"max-waiters-per-did", c.maxWaitersPerDID},
	} {
		if err := atLeast1(l.name, l.n); err != nil {
			return httpapi.Limits{}, err
		}
	}
	if c.maxWelcomeMembers > kv.MaxWelcomeRefs {
		return httpapi.Limits{}, usageErrorf("--max-welcome-members %d: at most %d", c.maxWelcomeMembers, kv.MaxWelcomeRefs)
	}
	// A JSON body holds at most httpapi.MaxBodyValues values.
	if c.maxRefs > httpapi.MaxBodyValues {
		return httpapi.Limits{}, usageErrorf("--max-refs %d: at most %d", c.maxRefs, httpapi.MaxBodyValues)
	}
	if n := c.maxClaimTargets * c.maxClaimDevices; c.maxClaimTargets > httpapi.MaxBodyValues || n > httpapi.MaxBodyValues {
		return httpapi.Limits{}, usageErrorf("--max-claim-targets %d × --max-claim-devices %d: at most %d devices in one claim",
			c.maxClaimTargets, c.maxClaimDevices, httpapi.MaxBodyValues)
	}
	return httpapi.Limits{
		MaxBodyBytes:       int64(c.maxBody),
		MaxKeyPackageBytes: c.maxKeyPackage,
		MaxWelcomeBytes:    c.maxWelcome,
		MaxWelcomeMembers:  c.maxWelcomeMembers,
		MaxPublishBatch:    c.maxPublishBatch,
		MaxClaimTargets:    c.maxClaimTargets,
		MaxClaimDevices:    c.maxClaimDevices,
		MaxRefs:            c.maxRefs,
	}, nil
}

// storeOptions returns the store options of the flags, with the given
// clock and observer, writing events when outbox is set. A count or
// duration of 0, which kv would take for its default, is refused.
func (c *serveConfig) storeOptions(clock kpd.Clock, observer kv.Observer, outbox bool) (*kv.Options, error) {
	for _, err := range []error{
		atLeast1("max-available", c.maxAvailable),
		atLeast1("max-devices", c.maxDevices),
		atLeast1("max-outbox", c.maxOutbox),
		positive("claim-retention", c.claimRetention),
		positive("consumed-retention", c.consumedRetention),
		positive("welcome-retention", c.welcomeRetention),
	} {
		if err != nil {
			return nil, err
		}
	}
	return &kv.Options{
		Clock:                clock,
		LowWatermark:         int(c.lowWatermark),
		MaxAvailablePerSuite: c.maxAvailable,
		MaxDevicesPerDID:     c.maxDevices,
		ClaimRetention:       c.claimRetention,
		ConsumedRetention:    c.consumedRetention,
		WelcomeRetention:     c.welcomeRetention,
		Outbox:               outbox,
		MaxOutbox:            c.maxOutbox,
		InitialMmapSize:      c.mmapSize,
		Observer:             observer,
	}, nil
}

// watermarkValue is the --low-watermark flag: a count of KeyPackages, or
// "off" (also 0) for kv.LowWatermarkOff.
type watermarkValue int

func (w *watermarkValue) String() string {
	if int(*w) == kv.LowWatermarkOff {
		return "off"
	}
	return strconv.Itoa(int(*w))
}

func (w *watermarkValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if s == "off" || s == "0" {
		*w = kv.LowWatermarkOff
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("%q: want a number of KeyPackages, or off", s)
	}
	*w = watermarkValue(n)
	return nil
}

// serve binds the listeners, opens the database and starts serving in the
// background. Bind and open errors are returned here, at start.
func (m *Main) serve(ctx context.Context, args []string) (err error) {
	var c serveConfig
	fs := newFlagSet("serve", m.Stderr, "serve [flags]")
	c.register(fs)
	if err := parseArgs(fs, args, m.Getenv, "serve"); err != nil {
		return err
	}
	logger, err := m.newLogger(c.logLevel)
	if err != nil {
		return err
	}

	registry := mls.NewRegistry()
	for _, s := range c.suites {
		if err := registry.Add(s); err != nil {
			return usageErrorf("--suite %s: %v", s, err)
		}
	}

	authn, err := c.authenticator(m.Clock, logger.With().Str("component", "auth").Logger())
	if err != nil {
		return err
	}
	met := metrics.New(metrics.Options{Logger: logger.With().Str("component", "metrics").Logger()})
	suiteIDs := make([]uint16, 0, len(registry.Suites()))
	for _, s := range registry.Suites() {
		suiteIDs = append(suiteIDs, uint16(s.ID))
	}
	met.InitSuites(suiteIDs)
	rates, err := c.rateLimits(m.Clock, met.RateLimited)
	if err != nil {
		return err
	}
	adminToken, err := c.admin.serverToken()
	if err != nil {
		return err
	}
	if err := c.backups.check(); err != nil {
		return err
	}
	if c.sweepInterval < time.Second {
		return usageErrorf("--sweep-interval %s: want at least 1s", c.sweepInterval)
	}
	if err := positive("max-token-age", c.maxTokenAge); err != nil {
		return err
	}
	limits, err := c.limits()
	if err != nil {
		return err
	}
	hook, err := c.webhook.dispatcher(m.Clock, logger.With().Str("component", "webhook").Logger())
	if err != nil {
		return err
	}

	var observer kv.Observer = met
	if hook != nil {
		hook.Observer = met.WebhookDelivery
		observer = wakingObserver{Metrics: met, wake: hook.Notify}
	}
	storeOpts, err := c.storeOptions(m.Clock, observer, hook != nil)
	if err != nil {
		return err
	}
	storeOpts.MigrationProgress = func(done, total int) {
		logger.Info().Int("done", done).Int("total", total).Msg("migrating KeyPackages to schema 4")
	}
	if err := dirMustExist("--db", c.db); err != nil {
		return err
	}

	// Bound before the database is opened, so that an address in use
	// stops the start before a database file is created or migrated.
	ln, err := listen("--listen", c.listen)
	if err != nil {
		return err
	}
	defer closeOnError(&err, ln)
	var metricsLn net.Listener
	if c.metricsAddr != "" {
		if metricsLn, err = listen("--metrics-addr", c.metricsAddr); err != nil {
			return err
		}
		defer closeOnError(&err, metricsLn)
	}
	db, err := openDB(c.db, storeOpts)
	if err != nil {
		return err
	}
	m.db = db
	met.CollectStats(db)
	// After kv.Open: a migration's heap is large, and default GC keeps it
	// smaller.
	gogc := setServeGC(m.Getenv)
	if authn == nil {
		authn = auth.NewTokenAuth(db)
	}

	var metricsHandler http.Handler
	if metricsLn == nil {
		metricsHandler = met.Handler()
	} else {
		m.serveMetrics(metricsLn, met.Handler(), logger)
	}
	m.ln = ln

	backups := &lastBackup{sched: m.startBackups(ctx, c.backups, db, logger)}
	met.CollectLastBackup(backups.time)
	// Waiting long-polls end when the shutdown begins, not when it times
	// out.
	shuttingDown := make(chan struct{})

	handler := httpapi.New(httpapi.Config{
		Store:    db,
		Auth:     authn,
		Registry: registry,
		Policy: httpapi.Policy{
			MaxLifetime:       c.maxLifetime,
			ClockSkew:         c.clockSkew,
			AllowX509:         c.allowX509,
			SkipIdentityCheck: !c.identityCheck,
		},
		Limits:           limits,
		Clock:            m.Clock,
		Logger:           logger,
		Ready:            db.Ready,
		RateLimits:       rates,
		Metrics:          met,
		MetricsHandler:   metricsHandler,
		MaxWaiters:       c.maxWaiters,
		MaxWaitersPerDID: c.maxWaitersPerDID,
		Done:             shuttingDown,
	})
	// The admin routes have their own token. A snapshot is staged beside
	// the database, on its file system rather than a /tmp that may live
	// in memory.
	admin := httpapi.NewAdmin(httpapi.AdminConfig{
		Token:      adminToken,
		Snapshots:  db,
		SpoolDir:   filepath.Dir(c.db),
		Logger:     logger,
		Metrics:    met,
		Stats:      db,
		LastBackup: backups.time,
		BackupSent: backups.sent,
		Tokens:     db,
		Clock:      m.Clock,
	})
	m.srv = httpapi.NewServer(httpapi.WithAdmin(handler, admin))
	m.srv.ErrorLog = newStdLogger(logger)
	m.srv.BaseContext = func(net.Listener) context.Context { return context.WithoutCancel(ctx) }
	m.srv.RegisterOnShutdown(sync.OnceFunc(func() { close(shuttingDown) }))
	m.shutdownTimeout = c.shutdownTimeout
	m.logger = logger

	if c.authMode == "dev" {
		logger.Warn().Msg("dev authentication: any 'Bearer <did>' is trusted; never expose this server")
	}
	if !c.identityCheck {
		logger.Warn().Msg("identity check off: KeyPackage credentials are not matched against the publishing DID")
	}
	logger.Info().
		Str("addr", ln.Addr().String()).
		Str("db", c.db).
		Str("auth", c.authMode).
		Uints16("suites", suiteIDs).
		Str("metrics", m.MetricsAddr()).
		Str("webhook", c.webhook.target()).
		Str("gogc", gogc).
		Msg("kpd listening on http://" + ln.Addr().String())

	m.startJob(ctx, (&jobs.Sweeper{
		Store:    db,
		Interval: c.sweepInterval,
		Clock:    m.Clock,
		Logger:   logger.With().Str("component", "sweeper").Logger(),
		Observer: met,
	}).Run)
	if hook != nil {
		hook.Source = db
		m.startJob(ctx, hook.Run)
	}

	m.served = make(chan error, 1)
	srv := m.srv
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		m.served <- err
	}()
	return nil
}

// newLogger returns the process logger: zerolog JSON on stderr, or console
// output when stderr is a terminal.
func (m *Main) newLogger(level string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Logger{}, usageErrorf("--log-level %q: want debug, info, warn or error", level)
	}
	w := m.Stderr
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		w = zerolog.ConsoleWriter{Out: f, TimeFormat: time.RFC3339}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// authenticator returns the Authenticator of --auth, or nil for token mode,
// whose token store is the database opened later.
// Its logger hears why a DID document could not be fetched (atproto).
func (c *serveConfig) authenticator(clock kpd.Clock, logger zerolog.Logger) (auth.Authenticator, error) {
	switch c.authMode {
	case "token":
		return nil, nil
	case "dev":
		// Every listen address (SPEC section 6), the metrics one too.
		if err := auth.CheckLoopback(c.listen); err != nil {
			return nil, usageErrorf("--auth dev needs a loopback --listen address: %v", err)
		}
		if c.metricsAddr != "" {
			if err := auth.CheckLoopback(c.metricsAddr); err != nil {
				return nil, usageErrorf("--auth dev needs a loopback --metrics-addr: %v", err)
			}
		}
		return auth.NewDevAuth(), nil
	case "proxy":
		prefixes, err := auth.ParsePrefixes(c.trustedProxy)
		if err != nil {
			return nil, usageErrorf("--trusted-proxy: %v", err)
		}
		return auth.NewProxyAuth(prefixes)
	case "atproto":
		if c.serviceDID == "" {
			return nil, usageErrorf("--auth atproto needs --service-did")
		}
		a, err := atproto.New(atproto.Config{
			ServiceDID:  c.serviceDID,
			PLCURL:      c.plcURL,
			MaxTokenAge: c.maxTokenAge,
			Clock:       clock,
			Logger:      logger,
		})
		if err != nil {
			return nil, usageErrorf("%v", err)
		}
		return a, nil
	default:
		return nil, usageErrorf("--auth %q: want token, atproto, proxy or dev", c.authMode)
	}
}

// rateLimits returns the rate-limit policy of the --*-limit flags, which
// reports every refusal to onLimited.
func (c *serveConfig) rateLimits(clock kpd.Clock, onLimited func(limit string)) (httpapi.RateLimiter, error) {
	cfg := ratelimit.Config{Clock: clock, OnLimited: onLimited}
	for _, f := range []struct {
		flag, spec string
		dst        *ratelimit.Limit
	}{
		{"publish-limit", c.publishLimit, &cfg.Publish},
		{"claim-pair-limit", c.claimPairLimit, &cfg.ClaimsPerPair},
		{"claim-limit", c.claimLimit, &cfg.ClaimsPerClaimer},
	} {
		l, err := parseRate(f.spec)
		if err != nil {
			return nil, usageErrorf("--%s: %v", f.flag, err)
		}
		*f.dst = l
	}
	if cfg.Publish == ratelimit.Off && cfg.ClaimsPerPair == ratelimit.Off && cfg.ClaimsPerClaimer == ratelimit.Off {
		return nil, nil
	}
	p, err := ratelimit.NewPolicy(cfg)
	if err != nil {
		return nil, usageErrorf("%v", err)
	}
	return p, nil
}

// parseRate parses a rate limit: N/s, N/m (or N/min) or N/h, optionally
// followed by :BURST (default N); "off" or "0" turns the limit off.
func parseRate(spec string) (ratelimit.Limit, error) {
	spec = strings.TrimSpace(spec)
	if spec == "off" || spec == "0" {
		return ratelimit.Off, nil
	}
	rate, burstStr, hasBurst := strings.Cut(spec, ":")
	nStr, unit, ok := strings.Cut(rate, "/")
	n, err := strconv.Atoi(nStr)
	if !ok || err != nil || n <= 0 {
		return ratelimit.Limit{}, fmt.Errorf("%q: want N/s, N/m or N/h with an optional :BURST, or off", spec)
	}
	burst := n
	if hasBurst {
		if burst, err = strconv.Atoi(burstStr); err != nil || burst <= 0 {
			return ratelimit.Limit{}, fmt.Errorf("%q: burst must be a positive integer", spec)
		}
	}
	switch unit {
	case "s":
		return ratelimit.PerSecond(n, burst), nil
	case "m", "min":
		return ratelimit.PerMinute(n, burst), nil
	case "h":
		l := ratelimit.PerHour(n)
		l.Burst = burst
		return l, nil
	}
	return ratelimit.Limit{}, fmt.Errorf("%q: unit must be s, m or h", spec)
}

// minWebhookSecretLength is the shortest webhook secret `kpd serve`
// accepts.
const minWebhookSecretLength = 16

// defaultWebhookMaxAge is the default of --webhook-max-age: events are
// push hints and pool warnings, stale after a day.
const defaultWebhookMaxAge = 24 * time.Hour

// webhookFlags are the webhook flags of `kpd serve`.
type webhookFlags struct {
	url, secret, secretFile string
	maxAge                  time.Duration
	concurrency             int
}

func (f *webhookFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.url, "webhook-url", "", "POST every event (low and exhausted pools, last resorts, new Welcomes) to this `URL`; off when empty")
	fs.StringVar(&f.secret, "webhook-secret", "", "`secret` (at least 16 characters) that signs webhook requests (prefer --webhook-secret-file or KPD_WEBHOOK_SECRET: a flag shows in ps)")
	fs.StringVar(&f.secretFile, "webhook-secret-file", "", "read the webhook secret from this `file` (surrounding white space ignored)")
	durationVar(fs, &f.maxAge, "webhook-max-age", defaultWebhookMaxAge, "give a webhook event up (delete it undelivered) when an attempt fails and it is older than this `duration` (0 = retry for ever)")
	fs.IntVar(&f.concurrency, "webhook-concurrency", webhook.DefaultConcurrency, "webhook events in flight at once, each of a different device (a device's events go one at a time, in order)")
}

// dispatcher returns the webhook dispatcher of the flags, without its
// Source, or nil when --webhook-url is not set.
func (f *webhookFlags) dispatcher(clock kpd.Clock, logger zerolog.Logger) (*webhook.Dispatcher, error) {
	if f.concurrency < 1 {
		return nil, usageErrorf("--webhook-concurrency %d: want at least 1", f.concurrency)
	}
	if f.url == "" {
		return nil, nil
	}
	u, err := url.Parse(f.url)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// Not the URL itself: its query or user info may hold a credential.
		return nil, usageErrorf("--webhook-url: want an http or https URL with a host")
	}
	secret, err := readSecret("webhook-secret", f.secret, f.secretFile)
	if err != nil {
		return nil, err
	}
	if len(secret) < minWebhookSecretLength {
		return nil, usageErrorf("--webhook-url needs --webhook-secret or --webhook-secret-file of at least %d characters (for example: openssl rand -hex 32)", minWebhookSecretLength)
	}
	return &webhook.Dispatcher{
		URL:         f.url,
		Secret:      []byte(secret),
		Clock:       clock,
		MaxAge:      f.maxAge,
		Concurrency: f.concurrency,
		Logger:      logger,
	}, nil
}

// target names the webhook receiver for the start-up log: scheme and host
// only, since the rest of a URL may carry credentials.
func (f *webhookFlags) target() string {
	u, err := url.Parse(f.url)
	if f.url == "" || err != nil {
		return ""
	}
	return u.Scheme + "://" + u.Host
}

// readSecret returns a secret given as --NAME or, from a file, as
// --NAME-file; "" when neither is set.
func readSecret(name, value, file string) (string, error) {
	if file == "" {
		return value, nil
	}
	if value != "" {
		return "", usageErrorf("give --%s or --%s-file, not both", name, name)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--%s-file: %w", name, err)
	}
	secret := strings.TrimSpace(string(b))
	if secret == "" {
		return "", usageErrorf("--%s-file %s is empty", name, file)
	}
	return secret, nil
}

// wakingObserver counts the store's changes in the metrics and wakes the
// webhook dispatcher after every commit, so that the events a commit wrote
// go out at once rather than at the next poll.
type wakingObserver struct {
	*metrics.Metrics
	wake func()
}

func (o wakingObserver) CommitBatch(ops int, d time.Duration) {
	o.Metrics.CommitBatch(ops, d)
	o.wake()
}

// listen binds addr, the value of flagName; its error names the flag.
func listen(flagName, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("listen on %s: %w; stop the process that uses this address, or give %s another one", flagName, err, flagName)
	}
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", flagName, err)
	}
	return ln, nil
}

// closeOnError closes c when *err is set: for a resource that serve hands
// over to Main only once the whole start succeeded.
func closeOnError(err *error, c io.Closer) {
	if *err != nil {
		c.Close()
	}
}

// serveMetrics serves h at GET /metrics on its own listener ln, until
// Close.
func (m *Main) serveMetrics(ln net.Listener, h http.Handler, logger zerolog.Logger) {
	mux := http.NewServeMux()
	mux.Handle("GET "+httpapi.MetricsPath, h)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          newStdLogger(logger),
	}
	m.metricsLn, m.metricsSrv = ln, srv
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			logger.Error().Err(err).Msg("metrics listener stopped")
		}
	}()
}

// lastBackup is the time of the newest backup of a running server: a
// scheduled snapshot (--backup-dir) or one the admin route sent in full
// (kpd backup --url), for kpd_backup_last_success_timestamp_seconds and
// the admin stats.
type lastBackup struct {
	sched *backup.Scheduler // nil without scheduled backups
	admin atomic.Int64      // Unix nanoseconds; 0 for none
}

func (l *lastBackup) sent(t time.Time) { l.admin.Store(t.UnixNano()) }

// time returns the newest backup's time, zero for none.
func (l *lastBackup) time() time.Time {
	var t time.Time
	if l.sched != nil {
		t = l.sched.LastSuccess()
	}
	if n := l.admin.Load(); n != 0 && time.Unix(0, n).After(t) {
		t = time.Unix(0, n).UTC()
	}
	return t
}
