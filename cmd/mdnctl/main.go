// Command mdnctl: kernel variants, sweeps, training and reports for Momentum DeltaNet.
package main

import (
	"os"
)

func main() {
	os.Exit(execute(os.Args[1:], os.Stdout, os.Stderr))
}
