package tests

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMetricFindDoesNotCreate: ferry_metric_find gives an existing metric's ID and refuses, naming it, a
// name no metric has, without creating that metric (ferry_metric_id creates).
func TestMetricFindDoesNotCreate(t *testing.T) {
	m := newQuietMonitor(t)
	loss := metricID(t, m, "loss")
	var id uint32
	requireOK(t, func() int32 { return ferryMetricFind(m, cname("loss"), &id) })
	require.Equal(t, loss, id)
	for range 2 { // still absent the second time
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMetricFind(m, cname("lsos"), &id) }, "lsos")
	}
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMetricFind(m, cname("bad name"), &id) })
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMetricFind(m, nil, &id) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMetricFind(m, cname("loss"), nil) }, "NULL")
	require.Equal(t, loss+1, metricID(t, m, "next"), "the failed look-ups created no metric")
}
