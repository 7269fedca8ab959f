package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/mdnctl/mdnctl/launcher"
)

// version is set at build time with -ldflags "-X main.version=..."; otherwise read from build info.
var version = "dev"

func init() { register(newVersionCmd) }

func versionString() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v = "dev+" + s.Value[:12]
			}
		}
	}
	return v
}

func newVersionCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the mdnctl version and protocol version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			info := map[string]any{"mdnctl": versionString(), "protocol": launcher.ProtocolVersion, "go": runtime.Version()}
			if g.JSON {
				return json.NewEncoder(g.Stdout).Encode(info)
			}
			fmt.Fprintf(g.Stdout, "mdnctl %s (protocol v%d, %s)\n", info["mdnctl"], launcher.ProtocolVersion, runtime.Version())
			return nil
		},
	}
}
