// Command spacegate is the mTLS edge gate for private PostgreSQL and Redis
// servers. See README.md, or run `spacegate help`.
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
