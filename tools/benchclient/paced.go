package main

import (
	"context"
	"sync"
	"time"
)

// sample is one call of a paced run: when it started (Unix ns), how long it took (ms), its error if any.
type sample struct {
	Start int64   `json:"start_ns"`
	Ms    float64 `json:"ms"`
	Error string  `json:"error,omitempty"`
}

// paced calls `call` at `rate` calls per second in total from `clients` goroutines for `duration`, on a
// fixed schedule (an open loop: a slow call does not delay the ones after it on other goroutines, and a
// goroutine that falls behind calls again at once), and reports every call. bench/scale.py reads the
// samples around the moment it forces a relist to see whether issuance stalled.
func paced[T any](ctx context.Context, clients int, rate float64, duration time.Duration, setup func() (T, func(), error), call func(context.Context, T) error) error {
	states := make([]T, clients)
	for i := range states {
		state, done, err := setup()
		if err != nil {
			return err
		}
		defer done()
		states[i] = state
		_ = call(ctx, state) // connection and handshake outside the measurement
	}
	interval := time.Duration(float64(clients) * float64(time.Second) / rate)
	begin := time.Now()
	results := make([][]sample, clients)
	var wg sync.WaitGroup
	for i := range states {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			next := begin.Add(time.Duration(i) * interval / time.Duration(clients))
			for next.Sub(begin) < duration {
				time.Sleep(time.Until(next))
				start := time.Now()
				callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := call(callCtx, states[i])
				cancel()
				s := sample{Start: start.UnixNano(), Ms: millis(time.Since(start))}
				if err != nil {
					s.Error = err.Error()
				}
				results[i] = append(results[i], s)
				next = next.Add(interval)
			}
		}(i)
	}
	wg.Wait()
	all := []sample{}
	for _, r := range results {
		all = append(all, r...)
	}
	emit(map[string]any{"samples": all})
	return nil
}
