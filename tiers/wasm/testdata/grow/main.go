// Command grow allocates and touches more memory than its first line of
// input says, in MiB (256 if none), for testing a runtime's memory cap.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

func main() {
	mib := 256
	line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
	if n, err := strconv.Atoi(strings.TrimSpace(line)); err == nil {
		mib = n
	}
	big := make([]byte, mib<<20)
	for i := 0; i < len(big); i += 4096 {
		big[i] = byte(i)
	}
	fmt.Println("allocated", mib, "MiB", big[len(big)-4096])
}
