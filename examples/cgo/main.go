// A Go program using libpyroscope through its C header (cgo): proof that the header serves
// languages other than C. Usage: cgo-example EXPORT_DIR. Build after `cargo build -p pyroscope-ffi`.
package main

/*
#cgo CFLAGS: -I${SRCDIR}/../../bindings/c/include
#cgo LDFLAGS: -L${SRCDIR}/../../target/debug -lpyroscope -Wl,-rpath,${SRCDIR}/../../target/debug
#include <stdlib.h>
#include <signal.h>
#include "pyroscope.h"
*/
import "C"

import (
	"fmt"
	"os"
	"runtime"
	"time"
	"unsafe"
)

func check(status uint32, what string) {
	if status != uint32(C.PYROSCOPE_STATUS_OK) {
		fmt.Fprintf(os.Stderr, "%s: status %d: %s\n", what, int(status), C.GoString(C.pyroscope_last_error()))
		os.Exit(1)
	}
}

func cstr(s string) *C.char { return C.CString(s) }

//go:noinline
func goBurn(d time.Duration) uint64 {
	x := uint64(1)
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		for i := uint64(0); i < 10000; i++ {
			x = x*6364136223846793005 + i
		}
	}
	return x
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: cgo-example EXPORT_DIR")
		os.Exit(2)
	}
	var cfg *C.pyroscope_config
	name, dir, tags := cstr("cgo-example"), cstr(os.Args[1]), cstr("lang=go")
	defer C.free(unsafe.Pointer(name))
	defer C.free(unsafe.Pointer(dir))
	defer C.free(unsafe.Pointer(tags))
	check(C.pyroscope_config_new(name, &cfg), "config_new")
	check(C.pyroscope_config_set_export_dir(cfg, dir), "export_dir")
	check(C.pyroscope_config_set_tags(cfg, tags), "tags")
	// Go requires SA_ONSTACK of every signal handler in a cgo program; its signal stacks are 32 KiB.
	check(C.pyroscope_config_set_signal(cfg, C.SIGPROF, true), "signal")
	var agent *C.pyroscope_agent
	check(C.pyroscope_agent_start(cfg, &agent), "agent_start")
	C.pyroscope_config_free(&cfg)

	done := make(chan uint64)
	go func() {
		// Labels belong to an OS thread: keep this goroutine on one.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		k, v := cstr("vehicle"), cstr("car")
		defer C.free(unsafe.Pointer(k))
		defer C.free(unsafe.Pointer(v))
		check(C.pyroscope_labels_push(k, v), "labels_push")
		r := goBurn(600 * time.Millisecond)
		check(C.pyroscope_labels_pop(), "labels_pop")
		done <- r
	}()
	r := <-done
	check(C.pyroscope_agent_stop(agent), "agent_stop")
	C.pyroscope_agent_free(&agent)
	fmt.Printf("cgo example done (%d)\n", r%10)
}
