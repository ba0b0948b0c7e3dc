package report

// The internals that the external tests (package report_test) use.
var (
	TextRate          = textRate
	RequireWellFormed = requireWellFormed
)
