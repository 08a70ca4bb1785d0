//go:build race

package up

// raceEnabled: the race detector slows everything several times over, so
// load tests run smaller.
const raceEnabled = true
