package main

import (
	"flag"
	"fmt"
	"io"
	"runtime"

	"github.com/tqtriage/tqtriage/internal/buildinfo"
)

// cmdVersion prints which build this is: what `make build` stamped in
// (docs/cli.md), so that a report or an image can be matched to a commit.
func cmdVersion(args []string, stdout io.Writer) error {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprintln(stdout, "usage: tqtriage version (or tqtriage --version): the version, commit and build date")
		return flag.ErrHelp
	}
	if len(args) > 0 {
		return usageErr("version takes no arguments")
	}
	bi := buildinfo.Get()
	fmt.Fprintf(stdout, "tqtriage %s\n  commit  %s\n  built   %s\n  go      %s %s/%s\n", bi.Version, bi.Commit, bi.Date, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}
