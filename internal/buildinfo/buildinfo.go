// Package buildinfo says which build of tqtriage this is: the version,
// commit and build date that `make build` stamps in with -ldflags, or, for
// a binary built otherwise, what the Go toolchain recorded (the module
// version and the VCS revision), or "dev".
package buildinfo

import (
	"runtime/debug"
	"sync"
)

// Stamped by the Makefile:
//
//	-X github.com/tqtriage/tqtriage/internal/buildinfo.version=…
var (
	version string
	commit  string
	date    string
)

// Info is one build's identity.
type Info struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	Date    string `json:"date"`
}

var (
	once sync.Once
	info Info
)

// Get returns this build's identity. Fields nothing recorded are
// "unknown" (Version: "dev").
func Get() Info {
	once.Do(func() {
		info = Info{Version: version, Commit: commit, Date: date}
		if bi, ok := debug.ReadBuildInfo(); ok {
			if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
				info.Version = bi.Main.Version
			}
			for _, s := range bi.Settings {
				switch {
				case s.Key == "vcs.revision" && info.Commit == "":
					info.Commit = s.Value
				case s.Key == "vcs.time" && info.Date == "":
					info.Date = s.Value
				}
			}
		}
		if info.Version == "" {
			info.Version = "dev"
		}
		if info.Commit == "" {
			info.Commit = "unknown"
		}
		if info.Date == "" {
			info.Date = "unknown"
		}
	})
	return info
}

// UserAgent is what tqtriage's HTTP clients send: tqtriage/<version>.
func UserAgent() string { return "tqtriage/" + Get().Version }
