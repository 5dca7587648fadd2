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
	// Flood holds the figures of a flood phase; nil in other rows.
	Flood *FloodFigures `json:"flood,omitempty"`
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
	// P50VsNoFlood and P99VsNoFlood divide a flood row's connect latency
	// by the same target's in the no-flood row; 0 elsewhere.
	P50VsNoFlood float64 `json:"p50_vs_no_flood,omitempty"`
	P99VsNoFlood float64 `json:"p99_vs_no_flood,omitempty"`
}

// Row is one figure measured for every target, such as pgbench -S with 8
// clients, or redis-benchmark GET with 50 clients.
type Row struct {
	Name  string `json:"name"`
	Title string `json:"title"`
	Unit  string `json:"unit"`
	// HigherIsBetter is false for memory rows.
	HigherIsBetter bool `json:"higher_is_better"`
	// Kind is "flood" for the rows of the flood scenario, which the
	// report lays out differently; "" for the others.
	Kind     string         `json:"kind,omitempty"`
	CPUUnit  string         `json:"cpu_unit,omitempty"`
	Command  string         `json:"command,omitempty"`
	Note     string         `json:"note,omitempty"`
	BestPeer string         `json:"best_peer,omitempty"`
	Targets  []TargetResult `json:"targets"`
}

// Headline is one of the ratios issue 6 or issue 12 asks for.
type Headline struct {
	// Issue is the issue whose target the headline checks: 6 (the
	// throughput and memory targets; 0 in older results) or 12 (the flood).
	Issue int     `json:"issue,omitempty"`
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
	FloodSockets int      `json:"flood_sockets,omitempty"`
	FloodTries   int      `json:"flood_attempts,omitempty"`
	FDLimit      uint64   `json:"fd_limit"`
	PgbenchScale int      `json:"pgbench_scale"`
}

// FloodFigures are what one phase of the flood scenario measured besides
// the share of psql attempts that got in (Sample.Value, in percent) and
// their connect latency (Sample.P50ms, P99ms: the wall time of psql -c
// 'SELECT 1', over the attempts that got in).
type FloodFigures struct {
	Attempts int `json:"psql_attempts"`
	OK       int `json:"psql_ok"`
	// LatMs are the wall times of the attempts that got in, in order.
	LatMs []float64 `json:"psql_ms,omitempty"`
	// Errors are distinct reasons psql gave for failed attempts, at most
	// a few.
	Errors []string `json:"psql_errors,omitempty"`
	// The pgbench -C trickle: connections made and per second, pgbench's
	// average connection time, clients it aborted on a failed connection,
	// and why it measured nothing, if it did not.
	PgbenchConns    int64   `json:"pgbench_conns"`
	PgbenchConnPerS float64 `json:"pgbench_conn_per_s"`
	PgbenchConnMs   float64 `json:"pgbench_conn_ms,omitempty"`
	PgbenchAborted  int     `json:"pgbench_aborted_clients"`
	PgbenchErr      string  `json:"pgbench_error,omitempty"`
	// CPUPercent is the proxy's CPU time over the phase's wall time, in
	// percent of one core; RSS its VmRSS at the end, flood still on.
	CPUPercent float64 `json:"proxy_cpu_percent"`
	RSS        int64   `json:"proxy_rss_bytes"`
	// Held is the mean number of flood sockets open as the flooder sees
	// them; OpensPerS how many it opened a second (reopening those the
	// proxy closed); HandshakesPerS how many server flights a ClientHello
	// flood received a second.
	Held           float64 `json:"flood_open,omitempty"`
	OpensPerS      float64 `json:"flood_opens_per_s,omitempty"`
	HandshakesPerS float64 `json:"flood_handshakes_per_s,omitempty"`
	// DialErrsPerS is how many flood dials failed a second (refused, or
	// timed out in a full accept queue).
	DialErrsPerS float64 `json:"flood_dial_errors_per_s,omitempty"`
	// LogBytes is how much the proxy wrote to its log over the phase:
	// a flood must not be able to fill the disk.
	LogBytes int64 `json:"proxy_log_bytes"`
	// Load is the machine's 1-minute load average at the phase's end: on
	// a shared machine, what the other figures were measured under.
	Load float64 `json:"loadavg_1m,omitempty"`
}
