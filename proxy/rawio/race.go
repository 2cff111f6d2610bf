//go:build linux && race

package rawio

import "syscall"

// Under the race detector the calls go through the syscall package: its
// annotations tell the detector which memory the kernel reads and writes,
// and that a write to any descriptor happens before a read from any (the
// syscall package's own ioSync, which every other read and write in the
// process synchronizes on). A raw call would make none of them. The
// connection's logic around the call is the same; make test also runs this
// package's tests without the detector, through the raw calls.
func sysRead(fd uintptr, b []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), b)
	return n, errnoOf(err)
}

func sysWrite(fd uintptr, b []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), b)
	return n, errnoOf(err)
}

func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	return err.(syscall.Errno) // syscall.Read and Write return no other kind
}
