package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/credflow/credflow/internal/inject"
	"github.com/credflow/credflow/internal/logkey"
)

// runInject serves the mutating admission webhook over TLS until ctx ends.
func runInject(ctx context.Context, args []string, _, stderr io.Writer) error {
	var (
		cfg               inject.Config
		listen, cert, key string
	)
	fs := newFlagSet("inject", commands()["inject"].usage, stderr)
	fs.StringVar(&listen, "listen", ":9443", "address to serve the webhook on (TLS)")
	fs.StringVar(&cert, "cert", "/etc/credflow-injector/tls.crt", "TLS certificate (PEM), re-read when it changes")
	fs.StringVar(&key, "key", "/etc/credflow-injector/tls.key", "TLS private key (PEM)")
	fs.StringVar(&cfg.Image, "image", "", "the credflow image to inject (required)")
	fs.Int64Var(&cfg.ProxyUID, "proxy-uid", 1337, "the sidecar's uid")
	fs.StringVar(&cfg.ConfigMap, "configmap", "credflow-sidecar", "default ConfigMap with the sidecar's credflow.yaml")
	fs.StringVar(&cfg.SocketHostPath, "socket-host-path", "", "mount the Workload API from this host directory instead of the SPIFFE CSI driver")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if cfg.Image == "" {
		return fmt.Errorf("%w: -image is required", errUsage)
	}
	log := newLogger(stderr, "info", "json")
	h, err := inject.Handler(cfg, log)
	if err != nil {
		return err
	}
	kp := &keyPair{cert: cert, key: key}
	if _, err := kp.get(nil); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("inject: %w", err)
	}
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: kp.get},
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Info("credflow inject: serving", slog.String(logkey.Admin, ln.Addr().String()))
	if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// keyPair loads a certificate and key, again whenever either file changes
// (cert-manager renews them in place).
type keyPair struct {
	cert, key string

	mu     sync.Mutex
	loaded *tls.Certificate
	stamp  [2]time.Time
}

func (k *keyPair) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var stamp [2]time.Time
	for i, f := range []string{k.cert, k.key} {
		st, err := os.Stat(f)
		if err != nil {
			if k.loaded != nil {
				return k.loaded, nil
			}
			return nil, fmt.Errorf("inject: %w", err)
		}
		stamp[i] = st.ModTime()
	}
	if k.loaded != nil && stamp == k.stamp {
		return k.loaded, nil
	}
	c, err := tls.LoadX509KeyPair(k.cert, k.key)
	if err != nil {
		if k.loaded != nil {
			return k.loaded, nil // a half-written renewal; keep the last good pair
		}
		return nil, fmt.Errorf("inject: %w", err)
	}
	k.loaded, k.stamp = &c, stamp
	return k.loaded, nil
}

// runProbe exits 0 when the sidecar's /readyz answers 200: the pod's
// startup and readiness probes, since the admin server listens on loopback
// only.
func runProbe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var admin string
	fs := newFlagSet("probe", commands()["probe"].usage, stderr)
	fs.StringVar(&admin, "admin", "127.0.0.1:15000", "the sidecar's admin address")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("probe: not ready: %s", body)
	}
	_, err = fmt.Fprintf(stdout, "%s", body)
	return err
}
