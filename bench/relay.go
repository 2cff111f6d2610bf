package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"sync"
)

// relayMain runs a plain TCP relay (T1, T2): every connection to -listen
// is copied both ways to -to, with half-close, by io.Copy (splice between
// two TCP sockets on Linux). It is what a proxy does without TLS, the floor
// the sidecars are compared with.
func relayMain(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("credflow-bench relay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	to := fs.String("to", "", "address to relay to")
	if err := fs.Parse(args); err != nil || *to == "" {
		fmt.Fprintln(stderr, "usage: credflow-bench relay -listen ADDR -to ADDR")
		return 2
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(stderr, "relay:", err)
		return 1
	}
	context.AfterFunc(ctx, func() { l.Close() })
	for {
		c, err := l.Accept()
		if err != nil {
			return 0
		}
		go relay(c.(*net.TCPConn), *to)
	}
}

func relay(a *net.TCPConn, to string) {
	defer a.Close()
	conn, err := net.Dial("tcp", to)
	if err != nil {
		return
	}
	b := conn.(*net.TCPConn)
	defer b.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	half := func(dst, src *net.TCPConn) {
		defer wg.Done()
		io.Copy(dst, src)
		dst.CloseWrite()
	}
	go half(b, a)
	go half(a, b)
	wg.Wait()
}
