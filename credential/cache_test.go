package credential

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// source is a Source the tests script: each fetch returns the next
// answer of its func, and may wait for release.
type source struct {
	fetches atomic.Int64
	release chan struct{} // if set, each fetch waits for a value on it
	answer  func(n int64) (Credential, error)
}

func (s *source) Fetch(ctx context.Context) (Credential, error) {
	n := s.fetches.Add(1)
	if s.release != nil {
		select {
		case <-s.release:
		case <-ctx.Done():
			return Credential{}, ctx.Err()
		}
	}
	return s.answer(n)
}

func secret(t *testing.T, v string) Secret {
	t.Helper()
	s, err := NewSecret(v)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// token returns an answer func giving token-<n> valid for ttl from now.
func token(t *testing.T, ttl time.Duration) func(int64) (Credential, error) {
	return func(n int64) (Credential, error) {
		return Credential{Value: secret(t, fmt.Sprintf("token-%d", n)), Expires: time.Now().Add(ttl)}, nil
	}
}

// TestColdCacheOneFetch: 1000 concurrent callers on a cold cache cause
// exactly one fetch, and all get its credential.
func TestColdCacheOneFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &source{release: make(chan struct{}), answer: token(t, time.Hour)}
		c := &Cache{Name: "api", Source: src}
		var wg sync.WaitGroup
		got := make([]string, 1000)
		for i := range got {
			wg.Go(func() {
				cred, err := c.Get(t.Context())
				if err != nil {
					t.Error(err)
					return
				}
				got[i] = cred.Value.Reveal()
			})
		}
		synctest.Wait() // every caller waits on the one fetch
		if st := c.State(); st.Status != StatusRefreshing {
			t.Errorf("status %q during the fetch, want %q", st.Status, StatusRefreshing)
		}
		close(src.release)
		wg.Wait()
		if n := src.fetches.Load(); n != 1 {
			t.Errorf("%d fetches for 1000 callers on a cold cache, want 1", n)
		}
		for i, v := range got {
			if v != "token-1" {
				t.Fatalf("caller %d got %q", i, v)
			}
		}
	})
}

// TestRefreshAhead: Run replaces a token after 80% of its life, so
// callers never wait and never see an expired one.
func TestRefreshAhead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &source{answer: token(t, 100*time.Second)}
		c := &Cache{Name: "api", Source: src}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go c.Run(ctx)
		synctest.Wait()
		if n := src.fetches.Load(); n != 1 {
			t.Fatalf("%d fetches at start, want 1", n)
		}
		time.Sleep(79 * time.Second)
		synctest.Wait()
		if n := src.fetches.Load(); n != 1 {
			t.Fatalf("%d fetches at 79%% of the life, want 1", n)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := src.fetches.Load(); n != 2 {
			t.Fatalf("%d fetches past 80%% of the life, want 2", n)
		}
		// Over ten lifetimes, every Get answers from memory.
		for range 1000 {
			time.Sleep(time.Second)
			cred, err := c.Get(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !cred.Expires.After(time.Now()) {
				t.Fatalf("served a token that expired at %v", cred.Expires)
			}
		}
		st := c.State()
		if st.Hits != 1000 || st.Failures != 0 || st.Status != StatusFresh {
			t.Errorf("state %+v", st)
		}
	})
}

// TestFailingRefreshKeepsServing: a refresh that fails leaves the valid
// token served, retries with growing backoff, and once the token nears
// its expiry Get fails with ErrUnavailable naming the source's error; a
// later success recovers.
func TestFailingRefreshKeepsServing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var down atomic.Bool
		src := &source{}
		src.answer = func(n int64) (Credential, error) {
			if down.Load() {
				return Credential{}, errors.New("token endpoint: 503 Service Unavailable")
			}
			return token(t, 100*time.Second)(n)
		}
		var logs bytes.Buffer
		c := &Cache{Name: "api", Source: src, MinBackoff: time.Second, MaxBackoff: 8 * time.Second,
			Log: slog.New(slog.NewTextHandler(&logs, nil))}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go c.Run(ctx)
		synctest.Wait()
		down.Store(true)
		time.Sleep(81 * time.Second) // the refresh fails
		synctest.Wait()
		if _, err := c.Get(ctx); err != nil {
			t.Fatalf("the token still valid was not served: %v", err)
		}
		st := c.State()
		if st.Status != StatusFailing || st.FailingSince.IsZero() || !strings.Contains(st.LastError, "503") {
			t.Errorf("state after a failed refresh: %+v", st)
		}
		// Up to the token's last tenth (10 s before expiry here, capped at
		// 5 s), retries: backoff 1, 2, 4, 8, 8... seconds, halved by jitter
		// at most.
		time.Sleep(13 * time.Second) // 94 s
		synctest.Wait()
		fetches := src.fetches.Load()
		if fetches < 4 || fetches > 12 {
			t.Errorf("%d fetches in 13 s of failures with backoff from 1 s to 8 s", fetches)
		}
		if _, err := c.Get(ctx); err != nil {
			t.Fatalf("at 94 s of a 100 s token: %v", err)
		}
		time.Sleep(2 * time.Second) // 96 s: inside the 5 s margin
		_, err := c.Get(ctx)
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), `"api"`) {
			t.Fatalf("near expiry with the source down: %v", err)
		}
		down.Store(false)
		time.Sleep(9 * time.Second) // the next retry succeeds
		synctest.Wait()
		if _, err := c.Get(ctx); err != nil {
			t.Fatalf("after the source recovered: %v", err)
		}
		if st := c.State(); st.Status != StatusFresh || st.LastError != "" || !st.FailingSince.IsZero() {
			t.Errorf("state after recovery: %+v", st)
		}
		if !strings.Contains(logs.String(), "fetch failed") || !strings.Contains(logs.String(), "succeeded again") {
			t.Errorf("log lacks the failure or the recovery:\n%s", logs.String())
		}
		if strings.Contains(logs.String(), "token-") {
			t.Errorf("log holds a credential:\n%s", logs.String())
		}
	})
}

// TestNoExpiry: a credential with no expiry is fetched again every
// Refresh, and a new version is served from then on.
func TestNoExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &source{answer: func(n int64) (Credential, error) {
			return Credential{Value: secret(t, fmt.Sprintf("key-v%d", n)), Version: fmt.Sprint(n)}, nil
		}}
		c := &Cache{Name: "vault", Source: src, Refresh: 30 * time.Second}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go c.Run(ctx)
		synctest.Wait()
		time.Sleep(31 * time.Second)
		synctest.Wait()
		cred, err := c.Get(ctx)
		if err != nil || cred.Value.Reveal() != "key-v2" || cred.Version != "2" {
			t.Fatalf("after one Refresh: %v %q %q", err, cred.Value.Reveal(), cred.Version)
		}
	})
}

// TestInvalidate: a 401 for the credential held drops it and fetches one
// new credential; a 401 for an older one, or a second within MinBackoff,
// does nothing.
func TestInvalidate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &source{answer: token(t, time.Hour)}
		c := &Cache{Name: "api", Source: src, MinBackoff: time.Second}
		first, err := c.Get(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		c.Invalidate(secret(t, "token-older"))
		synctest.Wait()
		if n := src.fetches.Load(); n != 1 {
			t.Fatalf("a 401 for a credential not held caused a fetch (%d)", n)
		}
		for range 100 { // many requests refused with the same token
			c.Invalidate(first.Value)
		}
		synctest.Wait()
		if n := src.fetches.Load(); n != 2 {
			t.Fatalf("%d fetches after 100 refusals of one token, want 2", n)
		}
		second, err := c.Get(t.Context())
		if err != nil || second.Value.Reveal() != "token-2" {
			t.Fatalf("after the refusal: %v %q", err, second.Value.Reveal())
		}
		// An upstream that refuses every token: one fetch per MinBackoff.
		c.Invalidate(second.Value)
		synctest.Wait()
		if n := src.fetches.Load(); n != 2 {
			t.Fatalf("a refusal within MinBackoff of the last fetched again (%d)", n)
		}
		time.Sleep(time.Second)
		c.Invalidate(second.Value)
		synctest.Wait()
		if n := src.fetches.Load(); n != 3 {
			t.Fatalf("%d fetches after a refusal past MinBackoff, want 3", n)
		}
	})
}

// TestBadAnswers: an empty value, an already expired credential and a
// fetch past Timeout are failures, never served.
func TestBadAnswers(t *testing.T) {
	for name, answer := range map[string]func(int64) (Credential, error){
		"empty": func(int64) (Credential, error) { return Credential{Expires: time.Now().Add(time.Hour)}, nil },
		"expired": func(int64) (Credential, error) {
			return Credential{Value: Secret{v: "t"}, Expires: time.Now().Add(-time.Second)}, nil
		},
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := &Cache{Name: "api", Source: &source{answer: answer}}
				if _, err := c.Get(t.Context()); !errors.Is(err, ErrUnavailable) {
					t.Fatalf("got %v, want ErrUnavailable", err)
				}
			})
		})
	}
	t.Run("timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			src := &source{release: make(chan struct{}), answer: token(t, time.Hour)} // never released
			c := &Cache{Name: "api", Source: src, Timeout: 2 * time.Second}
			start := time.Now()
			_, err := c.Get(t.Context())
			if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("got %v, want ErrUnavailable and the deadline", err)
			}
			if d := time.Since(start); d != 2*time.Second {
				t.Errorf("gave up after %v, want the 2 s Timeout", d)
			}
		})
	})
}

// TestSecretNeverPrinted: a Secret formats, logs and marshals without
// its value, and values that could split a header are refused.
func TestSecretNeverPrinted(t *testing.T) {
	s := secret(t, "sk_live_abc123")
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "secret", s, "cred", Credential{Value: s})
	js, err := json.Marshal(Credential{Value: s})
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{
		fmt.Sprint(s), fmt.Sprintf("%s %v %+v %#v %q %x", s, s, s, s, s, s),
		fmt.Sprintf("%v %+v %#v", Credential{Value: s}, Credential{Value: s}, Credential{Value: s}),
		logs.String(), string(js), fmt.Sprint(&s),
	} {
		if strings.Contains(out, "abc123") || strings.Contains(out, "616263") {
			t.Errorf("the value shows: %s", out)
		}
		if !strings.Contains(out, "[redacted]") {
			t.Errorf("no [redacted] in %s", out)
		}
	}
	for _, bad := range []string{"", "abc\r\nX-Evil: 1", "abc\n", "a\x00b", "a\x7fb"} {
		if _, err := NewSecret(bad); err == nil {
			t.Errorf("NewSecret(%q) accepted", bad)
		} else if bad != "" && strings.Contains(err.Error(), bad) {
			t.Errorf("the error repeats the value: %v", err)
		}
	}
	if _, err := NewSecret("Basic dXNlcjpwYXNz\t"); err != nil {
		t.Errorf("a tab refused: %v", err)
	}
}

// TestFile: a mounted secret is read without its line end, a rewrite is
// served at the next fetch, and a value with a CR/LF inside, an oversized
// file or a directory are refused without the value in the error.
func TestFile(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/api-key"
	write := func(v string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("key-one\n")
	cred, err := File{Path: path}.Fetch(t.Context())
	if err != nil || cred.Value.Reveal() != "key-one" || cred.Version == "" || !cred.Expires.IsZero() {
		t.Fatalf("got %q %q %v, %v", cred.Value.Reveal(), cred.Version, cred.Expires, err)
	}
	write("key-two\r\n")
	if cred, err = (File{Path: path}).Fetch(t.Context()); err != nil || cred.Value.Reveal() != "key-two" {
		t.Fatalf("after the rewrite: %q, %v", cred.Value.Reveal(), err)
	}
	for name, content := range map[string]string{
		"CR/LF inside": "secret-part\r\nX-Injected: 1",
		"oversized":    strings.Repeat("k", MaxFileSize+1),
		"empty":        "\n",
	} {
		write(content)
		_, err := File{Path: path}.Fetch(t.Context())
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "secret-part") || strings.Contains(err.Error(), "kkkk") {
			t.Errorf("%s: the error holds the value: %v", name, err)
		}
	}
	if _, err := (File{Path: dir}).Fetch(t.Context()); err == nil {
		t.Error("a directory was read as a credential")
	}
}

// TestCollector: the metrics follow the cache's counters and its
// credential's remaining life, and hold no value.
func TestCollector(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &source{answer: token(t, time.Hour)}
		c := &Cache{Name: "api", Source: src}
		col := &Collector{Caches: []*Cache{c}}
		for range 3 {
			if _, err := c.Get(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(10 * time.Minute)
		const want = `
# HELP credflow_credential_cache_hits_total Requests given a credential from memory, by credential source.
# TYPE credflow_credential_cache_hits_total counter
credflow_credential_cache_hits_total{credential="api"} 2
# HELP credflow_credential_fetch_failures_total Fetches from a credential source that failed, by credential source.
# TYPE credflow_credential_fetch_failures_total counter
credflow_credential_fetch_failures_total{credential="api"} 0
# HELP credflow_credential_fetches_total Credentials fetched from their source, by credential source.
# TYPE credflow_credential_fetches_total counter
credflow_credential_fetches_total{credential="api"} 1
# HELP credflow_credential_remaining_seconds Seconds until the credential held expires, by credential source; absent for a credential with no expiry or none held.
# TYPE credflow_credential_remaining_seconds gauge
credflow_credential_remaining_seconds{credential="api"} 3000
# HELP credflow_credential_usable 1 if the source has a credential it injects now, else 0 (requests that need it are answered 503).
# TYPE credflow_credential_usable gauge
credflow_credential_usable{credential="api"} 1
`
		if err := testutil.CollectAndCompare(col, strings.NewReader(want)); err != nil {
			t.Error(err)
		}
	})
}
