// Command sleep sleeps for an hour, for testing that a runtime's time limit
// also stops an app that waits rather than computes.
package main

import (
	"fmt"
	"time"
)

func main() {
	time.Sleep(time.Hour)
	fmt.Println("woke up")
}
