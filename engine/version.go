package engine

// Version is ferry's version, as reports and the CLI carry it. The builds of the Makefile set it from the
// VERSION file (-ldflags -X github.com/ferry-ml/ferry/engine.Version=...); this default is for plain go
// build and go test, and make check fails when it differs from VERSION.
var Version = "0.1.0"
