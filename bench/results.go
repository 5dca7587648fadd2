package main

// Sample is one measurement of one target in one round.
type Sample struct {
	Round int `json:"round"`
	// Value is the row's figure: transactions, operations or connections
	// per second, MiB per second, or KiB of proxy RSS per idle connection.
	Value float64 `json:"value"`
	// P50ms and P99ms are latency percentiles in milliseconds, 0 when the
	// scenario has none.
	P50ms float64 `json:"p50_ms,omitempty"`
	P99ms float64 `json:"p99_ms,omitempty"`
	// CPUus is the proxy's user+system CPU time per unit of work in
	// microseconds (per transaction, operation, connection or MiB), 0 for
	// the direct path.
	CPUus float64 `json:"proxy_cpu_us,omitempty"`
	// PeakRSS is the proxy's VmHWM during the run in bytes, 0 for the
	// direct path.
	PeakRSS int64 `json:"proxy_peak_rss_bytes,omitempty"`
	// Ops is the amount of work done: transactions, requests, bytes or
	// connections.
	Ops int64 `json:"ops"`
	// Seconds is the run's wall time.
	Seconds float64 `json:"seconds"`
	// Err says why the run failed; such a sample is left out of medians.
	Err string `json:"error,omitempty"`
}

// TargetResult is every sample of one target in one row, and their
// medians.
type TargetResult struct {
	Target  string   `json:"target"`
	Role    string   `json:"role"`
	Samples []Sample `json:"samples"`
	// Median holds the median of each field over the good samples.
	Median Sample `json:"median"`
	// Min and Max bound Value over the good samples.
	Min float64 `json:"min"`
	Max float64 `json:"max"`
	// VsBestPeer is Median.Value divided by the best peer's (stunnel,
	// PgBouncer) median; 0 when no peer took part.
	VsBestPeer float64 `json:"vs_best_peer,omitempty"`
	// CPUVsFloor is Median.CPUus divided by HAProxy's; 0 when either is
	// missing.
	CPUVsFloor float64 `json:"cpu_vs_haproxy,omitempty"`
}

// Row is one figure measured for every target, such as pgbench -S with 8
// clients, or redis-benchmark GET with 50 clients.
type Row struct {
	Name  string `json:"name"`
	Title string `json:"title"`
	Unit  string `json:"unit"`
	// HigherIsBetter is false for memory rows.
	HigherIsBetter bool           `json:"higher_is_better"`
	CPUUnit        string         `json:"cpu_unit,omitempty"`
	Command        string         `json:"command,omitempty"`
	Note           string         `json:"note,omitempty"`
	BestPeer       string         `json:"best_peer,omitempty"`
	Targets        []TargetResult `json:"targets"`
}

// Headline is one of the ratios issue 6 asks for.
type Headline struct {
	What  string  `json:"what"`
	Row   string  `json:"row"`
	Ratio float64 `json:"ratio"`
	// Detail gives both figures.
	Detail string `json:"detail"`
	// Better reports whether spacegate did better than the comparison.
	Better bool `json:"better"`
	// Goal is issue 6's target for Ratio, or 0 where it sets none; Met
	// reports whether Ratio reaches it.
	Goal float64 `json:"goal,omitempty"`
	Met  bool    `json:"met,omitempty"`
	// Lower: a lower ratio is the better one (CPU, memory).
	Lower bool `json:"lower,omitempty"`
}

// Results is everything one run of the harness found.
type Results struct {
	Started   string     `json:"started"`
	Seconds   float64    `json:"seconds"`
	Machine   Machine    `json:"machine"`
	Settings  Settings   `json:"settings"`
	Headlines []Headline `json:"headlines"`
	Rows      []Row      `json:"rows"`
}

// Settings records how the run was made.
type Settings struct {
	Rounds       int      `json:"rounds"`
	RunSeconds   float64  `json:"run_seconds"`
	Quick        bool     `json:"quick"`
	Scenarios    []string `json:"scenarios"`
	CopyMiB      int      `json:"copy_mib"`
	IdleConns    []int    `json:"idle_conns"`
	FDLimit      uint64   `json:"fd_limit"`
	PgbenchScale int      `json:"pgbench_scale"`
}
