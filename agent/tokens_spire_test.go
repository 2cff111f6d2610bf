package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credflow/credflow/agent"
	"github.com/credflow/credflow/internal/spiretest"
	"github.com/credflow/credflow/internal/testenv"
)

// tokenReport is what one workload process found (see tokenWorkload).
type tokenReport struct {
	ID        string   `json:"id"`
	Fetched   int      `json:"fetched"`   // tokens returned while the agent was up
	Distinct  int      `json:"distinct"`  // distinct tokens among them
	WrongSub  int      `json:"wrong_sub"` // a token of another workload
	WrongAud  int      `json:"wrong_aud"` // audiences other than exactly the one asked for
	Invalid   int      `json:"invalid"`   // did not validate against the JWT bundle
	TooOld    int      `json:"too_old"`   // returned with less than the floor left
	Refreshed int      `json:"refreshed"` // audiences that got a second token
	DownOK    int      `json:"down_ok"`   // answered from the cache while the agent was down
	DownErrs  int      `json:"down_errs"` // refused while it was down
	DownSlow  int      `json:"down_slow"` // calls that outlived their 2 s deadline by > 1 s
	Errors    []string `json:"errors"`    // distinct error texts while down
	PeakGo    int      `json:"peak_goroutines"`
	BaseGo    int      `json:"base_goroutines"`
	Recovered bool     `json:"recovered"`
}

// The workload process: the test binary re-run as another uid.
func init() {
	if os.Getenv("CREDFLOW_TEST_TOKENS") == "1" {
		tokenWorkload()
	}
}

const (
	// slack is the scheduling delay allowed between the Source's floor
	// check and the caller's, with 60 callers under the race detector.
	slack          = time.Second
	tokenAudiences = 12
	tokenCallers   = 60 // concurrent callers while the agent is down
)

// tokenWorkload asks for JWT-SVIDs for tokenAudiences audiences, four
// times a second, until told on stdin that the agent is down; then
// hammers FetchJWTSVID with tokenCallers concurrent callers until told
// it is back; then waits for a fresh token; and prints its report.
func tokenWorkload() {
	in := bufio.NewScanner(os.Stdin)
	src, err := agent.New(agent.Config{Addr: os.Getenv("CREDFLOW_TEST_ADDR"), MaxBackoff: time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go src.Run(ctx)
	deadline := time.Now().Add(60 * time.Second)
	for src.Ready() != nil {
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, "not ready:", src.Ready())
			os.Exit(1)
		}
		time.Sleep(100 * time.Millisecond)
	}
	self, _ := src.GetX509SVID()
	rep := tokenReport{ID: self.ID.String(), BaseGo: runtime.NumGoroutine()}
	aud := func(i int) string { return fmt.Sprintf("spiffe://example.org/service-%d", i) }
	seen := map[string]map[string]bool{}
	var mu sync.Mutex
	check := func(a string) {
		svid, err := src.FetchJWTSVID(ctx, a)
		returned := time.Now()
		if err != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		rep.Fetched++
		if svid.ID != self.ID {
			rep.WrongSub++
		}
		if !slices.Equal(svid.Audience, []string{a}) {
			rep.WrongAud++
		}
		if svid.Expiry.Sub(returned) < agent.DefaultJWTMinRemaining-slack {
			rep.TooOld++
		}
		if v, err := agent.ValidateJWTSVID(svid.Marshal(), src, a); err != nil || v.ID != self.ID {
			rep.Invalid++
		}
		if seen[a] == nil {
			seen[a] = map[string]bool{}
		}
		seen[a][svid.Marshal()] = true
	}

	// Up: steady use until the parent says "down".
	lines := make(chan string)
	go func() {
		for in.Scan() {
			lines <- in.Text()
		}
		close(lines)
	}()
	fmt.Println("up")
	tick := time.NewTicker(250 * time.Millisecond)
up:
	for {
		select {
		case <-lines:
			break up
		case <-tick.C:
			var wg sync.WaitGroup
			for i := range tokenAudiences {
				wg.Go(func() { check(aud(i)) })
			}
			wg.Wait()
		}
	}
	for _, toks := range seen {
		rep.Distinct += len(toks)
		if len(toks) > 1 {
			rep.Refreshed++
		}
	}

	// Down: many callers, each call bounded by its own deadline.
	stop := make(chan struct{})
	errs := map[string]bool{}
	var wg sync.WaitGroup
	for c := range tokenCallers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
				start := time.Now()
				svid, err := src.FetchJWTSVID(cctx, aud(c%(2*tokenAudiences))) // half of them never cached
				returned := time.Now()
				ccancel()
				mu.Lock()
				if time.Since(start) > 3*time.Second {
					rep.DownSlow++
				}
				switch {
				case err != nil:
					rep.DownErrs++
					if len(errs) < 4 {
						errs[err.Error()] = true
					}
				case svid.Expiry.Sub(returned) < agent.DefaultJWTMinRemaining-slack || svid.ID != self.ID:
					rep.TooOld++
				default:
					rep.DownOK++
				}
				if g := runtime.NumGoroutine(); g > rep.PeakGo {
					rep.PeakGo = g
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	fmt.Println("down")
	<-lines
	close(stop)
	wg.Wait()
	for e := range errs {
		rep.Errors = append(rep.Errors, e)
	}

	// Back: a fresh token within 30 s.
	deadline = time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && !rep.Recovered {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := src.FetchJWTSVID(cctx, aud(2*tokenAudiences+1)) // never asked before: not from the cache
		ccancel()
		rep.Recovered = err == nil
		time.Sleep(200 * time.Millisecond)
	}
	cancel()
	json.NewEncoder(os.Stdout).Encode(rep)
	os.Exit(0)
}

// TestJWTManyWorkloadsAndAudiences is L8 on real SPIRE: five workloads (five
// uids, each its own process and Source) ask for JWT-SVIDs for twelve
// audiences each, four times a second, across refreshes (20 s tokens);
// then the agent is stopped while 60 callers per workload keep asking for
// 24 audiences; then it returns.
//
// Every token carries its own workload's ID and exactly the audience asked
// for, validates, and has more than the floor left; each audience is
// refreshed before expiry; while the agent is down, cached tokens are
// served only while they have more than the floor left, the others are
// refused with an error that names the Workload API, no call outlives its
// deadline, and goroutines stay bounded; after the agent returns, new
// tokens are served.
func TestJWTManyWorkloadsAndAudiences(t *testing.T) {
	testenv.NeedsRoot(t, "running workloads as distinct uids")
	s := startSPIRE(t, spiretest.Options{})
	self, err := s.InstallBinary(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	const workloads = 5
	type proc struct {
		uid  int
		cmd  *exec.Cmd
		out  *bufio.Scanner
		in   io.WriteCloser
		want string
	}
	var procs []*proc
	for i := range workloads {
		uid := 1101 + i
		id := s.ID(fmt.Sprintf("/tokens/w%d", i))
		if _, err := s.Register(t.Context(), spiretest.Entry{ID: id, UID: uid, JWTSVIDTTL: 20 * time.Second}); err != nil {
			t.Fatal(err)
		}
		cmd := s.Command(t.Context(), uid, self, "-test.run=^$")
		cmd.Env = append(os.Environ(), "CREDFLOW_TEST_TOKENS=1", "CREDFLOW_TEST_ADDR="+s.AgentAddr())
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		procs = append(procs, &proc{uid: uid, cmd: cmd, out: bufio.NewScanner(stdout), in: stdin, want: id.String()})
	}
	expect := func(p *proc, line string) {
		t.Helper()
		if !p.out.Scan() || p.out.Text() != line {
			t.Fatalf("workload uid %d: %q, want %q (%v)", p.uid, p.out.Text(), line, p.out.Err())
		}
	}
	for _, p := range procs {
		expect(p, "up")
	}
	time.Sleep(25 * time.Second) // past the first refresh point (10 s) of every audience
	for _, p := range procs {
		io.WriteString(p.in, "down\n")
	}
	if err := s.StopAgent(); err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		expect(p, "down")
	}
	time.Sleep(12 * time.Second) // past the floor of every cached token
	if err := s.StartAgent(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		io.WriteString(p.in, "up\n")
	}
	for _, p := range procs {
		if !p.out.Scan() {
			t.Fatalf("workload uid %d: no report: %v", p.uid, p.out.Err())
		}
		var r tokenReport
		if err := json.Unmarshal(p.out.Bytes(), &r); err != nil {
			t.Fatalf("workload uid %d: %v: %q", p.uid, err, p.out.Text())
		}
		t.Logf("%s: %d tokens (%d distinct, %d/%d audiences refreshed); agent down: %d from the cache, %d refused, peak %d goroutines (base %d); errors %q",
			r.ID, r.Fetched, r.Distinct, r.Refreshed, tokenAudiences, r.DownOK, r.DownErrs, r.PeakGo, r.BaseGo, r.Errors)
		switch {
		case r.ID != p.want:
			t.Errorf("uid %d has identity %s, want %s", p.uid, r.ID, p.want)
		case r.WrongSub+r.WrongAud+r.Invalid+r.TooOld != 0:
			t.Errorf("%s: %d tokens of another workload, %d with another audience, %d invalid, %d under the floor",
				r.ID, r.WrongSub, r.WrongAud, r.Invalid, r.TooOld)
		case r.Fetched < 20*tokenAudiences || r.Refreshed != tokenAudiences:
			t.Errorf("%s: %d tokens, %d of %d audiences refreshed", r.ID, r.Fetched, r.Refreshed, tokenAudiences)
		case r.DownErrs == 0 || r.DownSlow != 0:
			t.Errorf("%s: while the agent was down, %d refusals and %d calls past their deadline", r.ID, r.DownErrs, r.DownSlow)
		case r.PeakGo > r.BaseGo+tokenCallers+2*tokenAudiences+20:
			t.Errorf("%s: %d goroutines at the peak, from %d", r.ID, r.PeakGo, r.BaseGo)
		case !r.Recovered:
			t.Errorf("%s: no new token after the agent returned", r.ID)
		}
		for _, e := range r.Errors {
			if !containsAny(e, "Workload API", "connection refused", "no such file", "Unavailable", "deadline") {
				t.Errorf("%s: an unclear error while the agent was down: %q", r.ID, e)
			}
		}
	}
}

func containsAny(s string, subs ...string) bool {
	return slices.ContainsFunc(subs, func(sub string) bool { return strings.Contains(s, sub) })
}
