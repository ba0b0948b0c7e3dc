package engine

// Version is ferry's version: the VERSION file's, set by the build (-ldflags -X) and checked against
// it by make check.
var Version = "0.1.0"
