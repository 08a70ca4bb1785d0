// Command spin never ends: it counts in a tight loop forever. It stands for
// a runaway app, the case a runtime's time limit must stop.
package main

import "fmt"

// counter and stop are package variables, so the compiler keeps the loop:
// every pass loads stop and stores counter. Nothing ever sets stop.
var (
	counter uint64
	stop    bool
)

func main() {
	for !stop {
		counter++
	}
	fmt.Println(counter)
}
