//go:build !race

package up

const raceEnabled = false
