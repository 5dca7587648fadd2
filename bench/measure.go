package main

import (
	"fmt"
	"time"
)

// probe watches the proxy process of a target over one run.
type probe struct {
	pid   int
	cpu0  time.Duration
	start time.Time
}

// startProbe resets the proxy's peak RSS and notes its CPU time. It
// returns nil for a target without a proxy.
func startProbe(t *target) (*probe, error) {
	if t.svc == nil || t.svc.proc == nil {
		return nil, nil
	}
	pid := t.svc.proc.pid()
	if err := resetPeak(pid); err != nil {
		return nil, err
	}
	cpu, err := cpuTime(pid)
	if err != nil {
		return nil, err
	}
	return &probe{pid: pid, cpu0: cpu, start: time.Now()}, nil
}

// finish fills s.CPUus with the proxy's CPU microseconds per unit of work
// and s.PeakRSS with its peak RSS since startProbe. A nil probe leaves s
// alone.
func (p *probe) finish(s *Sample, units float64) error {
	if p == nil {
		return nil
	}
	cpu, err := cpuTime(p.pid)
	if err != nil {
		return err
	}
	_, peak, err := memory(p.pid)
	if err != nil {
		return err
	}
	if units <= 0 {
		return fmt.Errorf("no work done, so no CPU time per unit")
	}
	s.CPUus = float64((cpu - p.cpu0).Microseconds()) / units
	s.PeakRSS = peak
	return nil
}
