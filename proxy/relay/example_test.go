package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"time"

	"github.com/credflow/credflow/proxy/relay"
)

// A sidecar accepts a connection, dials the local app and hands both to
// Copy. The client half-closes after its request; the app sees EOF, replies,
// and the reply still reaches the client.
func ExampleCopy() {
	app := listen()
	defer app.Close()
	go func() { // the local app: upper-cases the request
		c, err := app.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, _ := io.ReadAll(c)
		c.Write(bytes.ToUpper(req))
	}()

	sidecar := listen()
	defer sidecar.Close()
	done := make(chan relay.Result, 1)
	go func() {
		in, err := sidecar.Accept()
		if err != nil {
			log.Fatal(err)
		}
		out, err := net.Dial("tcp", app.Addr().String())
		if err != nil {
			in.Close()
			log.Fatal(err)
		}
		done <- relay.Copy(context.Background(), in, out, relay.Options{IdleTimeout: time.Minute})
	}()

	client, err := net.Dial("tcp", sidecar.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	client.Write([]byte("hello, app"))
	client.(*net.TCPConn).CloseWrite()
	reply, _ := io.ReadAll(client)
	res := <-done

	fmt.Printf("%s\n", reply)
	fmt.Printf("a->b %d bytes, b->a %d bytes, err: %v\n", res.AToB, res.BToA, res.Err)
	// Output:
	// HELLO, APP
	// a->b 10 bytes, b->a 10 bytes, err: <nil>
}

func listen() net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	return ln
}
