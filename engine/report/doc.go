// Package report is the report model (the JSON schema ferry.report/1 that a monitor's Report fills in),
// its HTML page with charts, and the merge of per-rank reports into one (ferry.merged-report/1) with its
// text and HTML views. It depends on nothing else of ferry but its version, so a report file can be read,
// merged and rendered anywhere.
//
// # Concurrency
//
// Reports are values: rendering and merging read them and may run concurrently; nothing here keeps
// state between calls.
package report
