// Command fail writes a partial answer, copies its standard input to its
// standard error, complains and exits with status 3, for testing how a
// runtime reports a failed app and caps its standard error.
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	fmt.Println("partial answer")
	io.Copy(os.Stderr, os.Stdin)
	fmt.Fprintln(os.Stderr, "fail: the request is wrong")
	os.Exit(3)
}
