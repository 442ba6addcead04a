//go:build race

package cache_test

// raceEnabled labels reported figures: under the race detector the Go
// side of every round trip is several times slower.
const raceEnabled = true
