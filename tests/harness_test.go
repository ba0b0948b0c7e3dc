// Package tests is the cross-language harness: it loads the built libferry.so through purego and calls
// it exactly as a C program would, with the structs of ferry.h mirrored field by field.
package tests

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Status codes, as in ferry.h.
const (
	ferryOK                 int32 = 0
	ferryErrInvalidArgument int32 = 1
	ferryErrInvalidHandle   int32 = 2
	ferryErrNoDevice        int32 = 3
	ferryErrCUDA            int32 = 4
	ferryErrNVML            int32 = 5
	ferryErrOutOfMemory     int32 = 6
	ferryErrUnsupported     int32 = 7
	ferryErrIO              int32 = 8
	ferryErrFormat          int32 = 9
	ferryErrClosed          int32 = 10
	ferryErrTimeout         int32 = 11
	ferryErrLimit           int32 = 12
	ferryEndOfEpoch         int32 = 13
	ferryErrInternal        int32 = 99
)

// Other constants of ferry.h.
const (
	ferryDeviceCPU int32 = -1 //nolint:staticcheck // the others stay untyped: they are used as ints
	maxEngines           = 256

	deviceFlagPCIE = 0x1
	systemFlagCUDA = 0x1
	systemFlagNVML = 0x2

	memoryFlagDevice  = 0x1
	memoryFlagProcess = 0x2
	memoryFlagHost    = 0x4
	memoryFlagLive    = 0x8

	pressureNone = 0

	maxDims = 8

	tokensUint16 = 1
	tokensUint32 = 2
	tokensLLMC   = 3
	tokensRandom = 0x1
	tokensWindow = 0x2

	iteratorShuffle  = 0x1
	iteratorDropLast = 0x2

	transformNormalize    int32 = 1
	transformShiftTokens  int32 = 2
	transformPadSequences int32 = 3

	layoutCHW int32 = 0
	layoutHWC int32 = 1

	stagingAuto   int32 = 0
	stagingGather int32 = 1
	stagingDMA    int32 = 2
	stagingMapped int32 = 3

	kDLCPU  = 1
	kDLCUDA = 2

	monitorFStart = 0x1

	kDLInt    = 0
	kDLUInt   = 1
	kDLFloat  = 2
	kDLBfloat = 4
	kDLBool   = 6
)

// Element types of fields (ferry_dtype).
const (
	dtypeBool     int32 = 1
	dtypeUint8    int32 = 2
	dtypeInt8     int32 = 3
	dtypeUint16   int32 = 4
	dtypeInt16    int32 = 5
	dtypeUint32   int32 = 6
	dtypeInt32    int32 = 7
	dtypeUint64   int32 = 8
	dtypeInt64    int32 = 9
	dtypeFloat16  int32 = 10
	dtypeBfloat16 int32 = 11
	dtypeFloat32  int32 = 12
	dtypeFloat64  int32 = 13
)

// engineHandle mirrors ferry_engine: an opaque ID with the size of a pointer.
type engineHandle uintptr

// deviceProperties mirrors ferry_device_properties.
type deviceProperties struct {
	Size                   uint32
	Index                  int32
	Name                   [256]byte
	UUID                   [16]uint8
	UUIDString             [48]byte
	PCIBusID               [32]byte
	ComputeCapabilityMajor int32
	ComputeCapabilityMinor int32
	MultiprocessorCount    int32
	PCIeGenerationCurrent  int32
	PCIeGenerationMax      int32
	PCIeWidthCurrent       int32
	PCIeWidthMax           int32
	Flags                  uint32
	TotalMemoryBytes       uint64
	L2CacheBytes           int32
	MemoryBusWidthBits     int32
	AsyncEngineCount       int32
	Reserved0              int32
}

// systemProperties mirrors ferry_system_properties.
type systemProperties struct {
	Size              uint32
	Flags             uint32
	CUDADriverVersion int32
	DeviceCount       int32
	DriverVersion     [80]byte
	NVMLVersion       [80]byte
	CUDAStatus        [256]byte
	NVMLStatus        [256]byte
}

// engineOptions mirrors ferry_engine_options.
type engineOptions struct {
	Size             uint32
	Device           int32
	SampleIntervalMS uint32
	Flags            uint32
}

// memorySnapshot mirrors ferry_memory_snapshot.
type memorySnapshot struct {
	Size                   uint32
	Flags                  uint32
	Device                 int32
	Level                  int32
	Sequence               uint64
	TimestampNS            uint64
	AgeNS                  uint64
	SampleTimestampNS      uint64
	DeviceTotalBytes       uint64
	DeviceFreeBytes        uint64
	DeviceUsedBytes        uint64
	ProcessDeviceBytes     uint64
	EngineAllocatedBytes   uint64
	EngineReservedBytes    uint64
	EnginePeakBytes        uint64
	EngineAllocCount       uint64
	EngineAllocFailures    uint64
	HostTotalBytes         uint64
	HostAvailableBytes     uint64
	HostPinnedBytes        uint64
	WarnThresholdBytes     uint64
	CriticalThresholdBytes uint64
}

// sourceHandle, iteratorHandle and batchHandle mirror ferry_source, ferry_iterator and ferry_batch.
type (
	sourceHandle   uintptr
	iteratorHandle uintptr
	batchHandle    uintptr
)

// field mirrors ferry_field. Name points to memory outside the Go heap (see cmem).
type field struct {
	Name   *byte
	DType  int32
	NDim   int32
	Shape  [maxDims]int64
	Offset int64
}

// tokenOptions mirrors ferry_token_options.
type tokenOptions struct {
	Size     uint32
	Format   int32
	SeqLen   int64
	Seed     uint64
	Flags    uint32
	Reserved uint32
}

// raggedOptions mirrors ferry_ragged_options.
type raggedOptions struct {
	Size      uint32
	Format    int32
	MaxLen    int64
	FieldName *byte
}

// iteratorOptions mirrors ferry_iterator_options.
type iteratorOptions struct {
	Size      uint32
	Flags     uint32
	BatchSize int64
	Seed      uint64
	Workers   int32
	Prefetch  int32
	Rank      int32
	WorldSize int32
	TimeoutMS uint32
	Reserved  uint32
	// Appended: transforms and staging.
	Transforms    uintptr
	NumTransforms int32
	Staging       int32
	PinnedBudget  int64
	// Appended: on_error.
	OnError   int32
	Reserved2 int32
}

// transform mirrors ferry_transform.
type transform struct {
	Size        uint32
	Kind        int32
	Field       uintptr
	Channels    int32
	Layout      int32
	Mean        [4]float32
	Std         [4]float32
	Scale       float32
	DType       int32
	Flip        float64
	XName       uintptr
	YName       uintptr
	PadValue    int64
	FixedLength int32
	Reserved    int32
	MaskName    uintptr
	LengthsName uintptr
	InputLayout int32
	Reserved2   int32
	// Appended: the GPT outputs of SHIFT_TOKENS.
	LossMaskName    uintptr
	PositionIDsName uintptr
	EOD             int64
	ShiftFlags      uint32
	CropFlags       uint32
	// Appended: the crops.
	CropSize  int32
	ResizeTo  int32
	ScaleMin  float64
	ScaleMax  float64
	RatioMin  float64
	RatioMax  float64
	MaxPixels int64
	// Appended: DecodeImage.
	Height int32
	Width  int32
}

// imageSourceOptions mirrors ferry_image_source_options.
type imageSourceOptions struct {
	Size      uint32
	Flags     uint32
	MaxBytes  int64
	ImageKeys *byte
	LabelKey  *byte
	CacheDir  *byte
}

// megatronOptions mirrors ferry_megatron_options.
type megatronOptions struct {
	Size      uint32
	Reserved  int32
	MaxLen    int64
	FieldName *byte
}

// gptOptions mirrors ferry_gpt_options.
type gptOptions struct {
	Size       uint32
	Order      int32
	SeqLen     int64
	FieldName  *byte
	Seed       uint64
	Split      *byte
	Which      int32
	Flags      uint32
	NumSamples int64
	CacheDir   *byte
}

// gptIndexInfo mirrors ferry_gpt_index_info.
type gptIndexInfo struct {
	Size       uint32
	Cached     int32
	Epochs     int64
	Seconds    float64
	Path       [1024]byte
	CacheError [1024]byte
}

// blendOptions mirrors ferry_blend_options.
type blendOptions struct {
	Size       uint32
	Order      int32
	NumSamples int64
	Seed       uint64
}

// iteratorPosition mirrors ferry_iterator_position.
type iteratorPosition struct {
	Size     uint32
	Reserved uint32
	Epoch    uint64
	Batch    int64
}

// iteratorPositionV2 mirrors ferry_iterator_position with its appended fields (the elastic position);
// iteratorPosition is the first version, which callers built against it still pass.
type iteratorPositionV2 struct {
	iteratorPosition
	Offset    int64
	Consumed  int64
	WorldSize int64
}

// batchProperties mirrors ferry_batch_properties.
type batchProperties struct {
	Size       uint32
	NumFields  int32
	Epoch      uint64
	Index      int64
	NumSamples int64
}

// dlDataType mirrors DLDataType.
type dlDataType struct {
	Code  uint8
	Bits  uint8
	Lanes uint16
}

// dlTensor mirrors DLTensor.
type dlTensor struct {
	Data       unsafe.Pointer
	DeviceType int32
	DeviceID   int32
	NDim       int32
	DType      dlDataType
	Shape      *int64
	Strides    *int64
	ByteOffset uint64
}

// dlManagedTensor mirrors DLManagedTensorVersioned. Deleter is a C function pointer.
type dlManagedTensor struct {
	VersionMajor uint32
	VersionMinor uint32
	ManagerCtx   unsafe.Pointer
	Deleter      uintptr
	Flags        uint64
	DLTensor     dlTensor
}

// advisorHandle mirrors ferry_advisor.
type advisorHandle uintptr

// Pressure metrics (ferry_pressure_metric) and levels (ferry_pressure).
const (
	pressureDeviceUsed     int32 = 1
	pressureProcessUsed    int32 = 2
	pressureEngineReserved int32 = 3

	pressureWarn     int32 = 1
	pressureCritical int32 = 2
)

// pressureOptions mirrors ferry_pressure_options.
type pressureOptions struct {
	Size             uint32
	Metric           int32
	WarnBytes        uint64
	CriticalBytes    uint64
	WarnFraction     float64
	CriticalFraction float64
}

// optimizeResult mirrors ferry_optimize_result.
type optimizeResult struct {
	Size                 uint32
	LevelBefore          int32
	LevelAfter           int32
	CallbacksCalled      int32
	CallbacksFailed      int32
	Reserved             int32
	TrimmedBytes         uint64
	RecommendedBatchSize int64
}

// advisorFit mirrors ferry_advisor_fit.
type advisorFit struct {
	Size             uint32
	Observations     int32
	FixedBytes       float64
	PerSampleBytes   float64
	RSquared         float64
	MaxResidualBytes float64
	OOMCeiling       int64
	Reserved         int64
}

// monitorHandle mirrors ferry_monitor.
type monitorHandle uintptr

// monitorOptions mirrors ferry_monitor_options. Node and DiskPaths point to memory outside the Go heap
// (see cmem).
type monitorOptions struct {
	Size             uint32
	Flags            uint32
	GPUIntervalUS    int64
	PCIeIntervalUS   int64
	SystemIntervalUS int64
	SketchAccuracy   float64
	SeriesPoints     int32
	Rank             int32
	LocalRank        int32
	NumDiskPaths     int32
	Node             uintptr
	DiskPaths        uintptr
}

// metricSummary mirrors ferry_metric_summary.
type metricSummary struct {
	Size      uint32
	Reserved  uint32
	Count     uint64
	NonFinite uint64
	Mean      float64
	Min       float64
	Max       float64
	Std       float64
	Last      float64
	P50       float64
	P90       float64
	P99       float64
	P999      float64
	FirstNS   uint64
	LastNS    uint64
}

// The functions of ferry.h, bound by loadLibrary.
var (
	ferryStatusString      func(status int32) *byte
	ferryLastError         func() *byte
	ferryVersion           func(major, minor, patch *int32) int32
	ferryDeviceCount       func(count *int32) int32
	ferryDeviceInfo        func(index int32, info *deviceProperties) int32
	ferrySystemInfo        func(info *systemProperties) int32
	ferryEngineOptionsInit func(opts *engineOptions) int32
	ferryEngineCreate      func(opts *engineOptions, engine *engineHandle) int32
	ferryEngineDestroy     func(engine engineHandle) int32
	ferryEngineDevice      func(engine engineHandle, device *int32) int32
	ferryEngineSampleNow   func(engine engineHandle) int32
	ferryMemoryCheck       func(engine engineHandle, out *memorySnapshot) int32
	ferryMemoryCheckLive   func(engine engineHandle, out *memorySnapshot) int32

	ferrySourceMemory           func(n int64, fields *field, numFields int32, data *uintptr, source *sourceHandle) int32
	ferrySourceRecords          func(path *byte, recordSize, headerSize int64, fields *field, numFields int32, source *sourceHandle) int32
	ferrySourceCIFAR10          func(path *byte, source *sourceHandle) int32
	ferrySourceNpy              func(names, paths **byte, count int32, source *sourceHandle) int32
	ferryTokenOptionsInit       func(opts *tokenOptions) int32
	ferrySourceTokens           func(path *byte, opts *tokenOptions, source *sourceHandle) int32
	ferryRaggedOptionsInit      func(opts *raggedOptions) int32
	ferrySourceRaggedTokens     func(tokensPath, offsetsPath *byte, opts *raggedOptions, source *sourceHandle) int32
	ferryImageSourceOptionsInit func(opts *imageSourceOptions) int32
	ferrySourceImageFolder      func(root *byte, opts *imageSourceOptions, source *sourceHandle) int32
	ferrySourceWebDataset       func(shards **byte, count int32, opts *imageSourceOptions, source *sourceHandle) int32
	ferrySourceSampleName       func(source sourceHandle, index int64, name *byte, n uint32) int32
	ferryMegatronOptionsInit    func(opts *megatronOptions) int32
	ferrySourceMegatron         func(prefixes **byte, count int32, opts *megatronOptions, source *sourceHandle) int32
	ferryGPTOptionsInit         func(opts *gptOptions) int32
	ferrySourceGPT              func(prefixes **byte, count int32, opts *gptOptions, source *sourceHandle) int32
	ferrySourceGPTIndexInfo     func(source sourceHandle, info *gptIndexInfo) int32
	ferryBlendOptionsInit       func(opts *blendOptions) int32
	ferrySourceBlend            func(sources *sourceHandle, weights *float64, count int32, opts *blendOptions, source *sourceHandle) int32
	ferryMegatronBlendSizes     func(weights *float64, count int32, size int64, perSource *int64, blendSize *int64) int32
	ferrySourceCallback         func(n int64, fields *field, numFields int32, fn uintptr, user uintptr, source *sourceHandle) int32
	ferrySourceLen              func(source sourceHandle, n *int64) int32
	ferrySourceNumFields        func(source sourceHandle, n *int32) int32
	ferrySourceField            func(source sourceHandle, index int32, out *field) int32
	ferrySourceDestroy          func(source sourceHandle) int32
	ferryIteratorOptionsInit    func(opts *iteratorOptions) int32
	ferryIteratorCreate         func(engine engineHandle, source sourceHandle, opts *iteratorOptions, it *iteratorHandle) int32
	ferryIteratorNext           func(it iteratorHandle, stream uintptr, batch *batchHandle) int32
	ferryIteratorNextWait       func(it iteratorHandle, stream uintptr, waitMS uint32, batch *batchHandle) int32
	ferryIteratorLen            func(it iteratorHandle, batches *int64) int32
	ferryIteratorState          func(it iteratorHandle, state *iteratorPosition) int32
	ferryIteratorRestore        func(it iteratorHandle, state *iteratorPosition) int32
	ferryIteratorRestoreElastic func(it iteratorHandle, epoch uint64, consumed int64) int32
	ferryIteratorSetEpoch       func(it iteratorHandle, epoch uint64) int32
	ferryIteratorDestroy        func(it iteratorHandle) int32
	ferryIteratorStaging        func(it iteratorHandle, staging *int32, why *byte, whyLen uint32) int32
	ferryIteratorNumFields      func(it iteratorHandle, n *int32) int32
	ferryIteratorField          func(it iteratorHandle, index int32, f *field) int32
	ferryTransformInit          func(t *transform, kind int32, field *byte) int32
	ferryTransformLaunch        func(engine engineHandle, t *transform, in *field, batch int64, src uint64, dst *uint64, numDst int32, stream uintptr) int32
	ferryBatchInfo              func(b batchHandle, info *batchProperties) int32
	ferryBatchIndices           func(b batchHandle, indices *int64, capacity int64) int32
	ferryBatchField             func(b batchHandle, index int32, tensor **dlManagedTensor) int32
	ferryBatchFieldByName       func(b batchHandle, name *byte, tensor **dlManagedTensor) int32
	ferryBatchWait              func(b batchHandle, stream uintptr) int32
	ferryBatchRelease           func(b batchHandle, stream uintptr) int32
	ferryTensorWait             func(tensor *dlManagedTensor, stream uintptr) int32
	ferryIteratorStats          func(it iteratorHandle, stats *pipelineStats) int32
	ferryIteratorNextTensors    func(it iteratorHandle, stream uintptr, waitMS uint32, tensors **dlManagedTensor, capacity int32, info *batchProperties) int32
	ferryBatchFieldName         func(b batchHandle, index int32, name *byte, n uint32) int32
	ferryBatchFieldOrigin       func(b batchHandle, index int32, origin *int32) int32

	ferryFeedOptionsInit   func(opts *feedOptions) int32
	ferryFeedCreate        func(e engineHandle, opts *feedOptions, feed *feedHandle) int32
	ferryFeedPush          func(f feedHandle, tensors *hostTensor, n int32, batch *batchHandle) int32
	ferryFeedAddStall      func(f feedHandle, ns uint64) int32
	ferryFeedStats         func(f feedHandle, stats *pipelineStats) int32
	ferryFeedDestroy       func(f feedHandle) int32
	ferryMonitorAttachFeed func(m monitorHandle, name *byte, f feedHandle) int32

	ferryPressureOptionsInit  func(opts *pressureOptions) int32
	ferryEngineSetPressure    func(engine engineHandle, opts *pressureOptions) int32
	ferryMemoryOnPressure     func(engine engineHandle, fn uintptr, user uintptr, id *uint64) int32
	ferryMemoryRemoveCallback func(engine engineHandle, id uint64) int32
	ferryMemoryOptimize       func(engine engineHandle, currentBatchSize int64, result *optimizeResult) int32
	ferryAdvisorCreate        func(multiple int64, advisor *advisorHandle) int32
	ferryAdvisorObserve       func(advisor advisorHandle, batchSize int64, peakBytes uint64) int32
	ferryAdvisorReportOOM     func(advisor advisorHandle, batchSize int64) int32
	ferryAdvisorModel         func(advisor advisorHandle, model *advisorFit) int32
	ferryAdvisorRecommend     func(advisor advisorHandle, budgetBytes uint64, headroom float64, batchSize *int64) int32
	ferryAdvisorSetReduce     func(advisor advisorHandle, fn uintptr, user uintptr) int32
	ferryEngineSetAdvisor     func(engine engineHandle, advisor advisorHandle) int32
	ferryAdvisorDestroy       func(advisor advisorHandle) int32

	ferryMonitorOptionsInit     func(opts *monitorOptions) int32
	ferryMonitorCreate          func(opts *monitorOptions, monitor *monitorHandle) int32
	ferryMonitorStart           func(monitor monitorHandle) int32
	ferryMonitorStop            func(monitor monitorHandle) int32
	ferryMetricID               func(monitor monitorHandle, name *byte, id *uint32) int32
	ferryMetricFind             func(monitor monitorHandle, name *byte, id *uint32) int32
	ferryMetricLog              func(monitor monitorHandle, id uint32, value float64) int32
	ferryMetricLogMany          func(monitor monitorHandle, id uint32, values *float64, count int64) int32
	ferryMetricLogManyAt        func(monitor monitorHandle, id uint32, values *float64, timestampsNS *uint64, count int64) int32
	ferryMetricSummaryGet       func(monitor monitorHandle, id uint32, out *metricSummary) int32
	ferryMonitorReportJSON      func(monitor monitorHandle, buf *byte, capacity uint64, length *uint64) int32
	ferryMonitorWriteReport     func(monitor monitorHandle, path *byte) int32
	ferryMonitorStreamJSONL     func(monitor monitorHandle, path *byte) int32
	ferryMonitorServePrometheus func(monitor monitorHandle, addr *byte, bound *byte, boundLen uint32) int32
	ferryMonitorAttachIterator  func(monitor monitorHandle, name *byte, it iteratorHandle) int32
	ferryMonitorDestroy         func(monitor monitorHandle) int32
)

// boundFunctions lists every function of ferry.h with the variable it is bound to.
// TestBoundFunctionsMatchHeader keeps it complete.
var boundFunctions = []struct {
	name string
	fptr any
}{
	{"ferry_status_string", &ferryStatusString},
	{"ferry_last_error", &ferryLastError},
	{"ferry_version", &ferryVersion},
	{"ferry_device_count", &ferryDeviceCount},
	{"ferry_device_info", &ferryDeviceInfo},
	{"ferry_system_info", &ferrySystemInfo},
	{"ferry_engine_options_init", &ferryEngineOptionsInit},
	{"ferry_engine_create", &ferryEngineCreate},
	{"ferry_engine_destroy", &ferryEngineDestroy},
	{"ferry_engine_device", &ferryEngineDevice},
	{"ferry_engine_sample_now", &ferryEngineSampleNow},
	{"ferry_memory_check", &ferryMemoryCheck},
	{"ferry_memory_check_live", &ferryMemoryCheckLive},
	{"ferry_source_memory", &ferrySourceMemory},
	{"ferry_source_records", &ferrySourceRecords},
	{"ferry_source_cifar10", &ferrySourceCIFAR10},
	{"ferry_source_npy", &ferrySourceNpy},
	{"ferry_token_options_init", &ferryTokenOptionsInit},
	{"ferry_source_tokens", &ferrySourceTokens},
	{"ferry_ragged_options_init", &ferryRaggedOptionsInit},
	{"ferry_source_ragged_tokens", &ferrySourceRaggedTokens},
	{"ferry_image_source_options_init", &ferryImageSourceOptionsInit},
	{"ferry_source_image_folder", &ferrySourceImageFolder},
	{"ferry_source_webdataset", &ferrySourceWebDataset},
	{"ferry_source_sample_name", &ferrySourceSampleName},
	{"ferry_megatron_options_init", &ferryMegatronOptionsInit},
	{"ferry_source_megatron", &ferrySourceMegatron},
	{"ferry_gpt_options_init", &ferryGPTOptionsInit},
	{"ferry_source_gpt", &ferrySourceGPT},
	{"ferry_source_gpt_index_info", &ferrySourceGPTIndexInfo},
	{"ferry_blend_options_init", &ferryBlendOptionsInit},
	{"ferry_source_blend", &ferrySourceBlend},
	{"ferry_megatron_blend_sizes", &ferryMegatronBlendSizes},
	{"ferry_source_callback", &ferrySourceCallback},
	{"ferry_source_len", &ferrySourceLen},
	{"ferry_source_num_fields", &ferrySourceNumFields},
	{"ferry_source_field", &ferrySourceField},
	{"ferry_source_destroy", &ferrySourceDestroy},
	{"ferry_iterator_options_init", &ferryIteratorOptionsInit},
	{"ferry_iterator_create", &ferryIteratorCreate},
	{"ferry_iterator_next", &ferryIteratorNext},
	{"ferry_iterator_next_wait", &ferryIteratorNextWait},
	{"ferry_iterator_len", &ferryIteratorLen},
	{"ferry_iterator_state", &ferryIteratorState},
	{"ferry_iterator_restore", &ferryIteratorRestore},
	{"ferry_iterator_restore_elastic", &ferryIteratorRestoreElastic},
	{"ferry_iterator_set_epoch", &ferryIteratorSetEpoch},
	{"ferry_iterator_destroy", &ferryIteratorDestroy},
	{"ferry_iterator_staging", &ferryIteratorStaging},
	{"ferry_iterator_num_fields", &ferryIteratorNumFields},
	{"ferry_iterator_field", &ferryIteratorField},
	{"ferry_transform_init", &ferryTransformInit},
	{"ferry_transform_launch", &ferryTransformLaunch},
	{"ferry_batch_info", &ferryBatchInfo},
	{"ferry_batch_indices", &ferryBatchIndices},
	{"ferry_batch_field", &ferryBatchField},
	{"ferry_batch_field_by_name", &ferryBatchFieldByName},
	{"ferry_batch_wait", &ferryBatchWait},
	{"ferry_tensor_wait", &ferryTensorWait},
	{"ferry_iterator_stats", &ferryIteratorStats},
	{"ferry_iterator_next_tensors", &ferryIteratorNextTensors},
	{"ferry_batch_field_name", &ferryBatchFieldName},
	{"ferry_batch_field_origin", &ferryBatchFieldOrigin},
	{"ferry_feed_options_init", &ferryFeedOptionsInit},
	{"ferry_feed_create", &ferryFeedCreate},
	{"ferry_feed_push", &ferryFeedPush},
	{"ferry_feed_add_stall", &ferryFeedAddStall},
	{"ferry_feed_stats", &ferryFeedStats},
	{"ferry_feed_destroy", &ferryFeedDestroy},
	{"ferry_monitor_attach_feed", &ferryMonitorAttachFeed},
	{"ferry_batch_release", &ferryBatchRelease},
	{"ferry_pressure_options_init", &ferryPressureOptionsInit},
	{"ferry_engine_set_pressure", &ferryEngineSetPressure},
	{"ferry_memory_on_pressure", &ferryMemoryOnPressure},
	{"ferry_memory_remove_callback", &ferryMemoryRemoveCallback},
	{"ferry_memory_optimize", &ferryMemoryOptimize},
	{"ferry_advisor_create", &ferryAdvisorCreate},
	{"ferry_advisor_observe", &ferryAdvisorObserve},
	{"ferry_advisor_report_oom", &ferryAdvisorReportOOM},
	{"ferry_advisor_model", &ferryAdvisorModel},
	{"ferry_advisor_recommend", &ferryAdvisorRecommend},
	{"ferry_advisor_set_reduce", &ferryAdvisorSetReduce},
	{"ferry_engine_set_advisor", &ferryEngineSetAdvisor},
	{"ferry_advisor_destroy", &ferryAdvisorDestroy},
	{"ferry_monitor_options_init", &ferryMonitorOptionsInit},
	{"ferry_monitor_create", &ferryMonitorCreate},
	{"ferry_monitor_start", &ferryMonitorStart},
	{"ferry_monitor_stop", &ferryMonitorStop},
	{"ferry_metric_id", &ferryMetricID},
	{"ferry_metric_find", &ferryMetricFind},
	{"ferry_metric_log", &ferryMetricLog},
	{"ferry_metric_log_many", &ferryMetricLogMany},
	{"ferry_metric_log_many_at", &ferryMetricLogManyAt},
	{"ferry_metric_summary_get", &ferryMetricSummaryGet},
	{"ferry_monitor_report_json", &ferryMonitorReportJSON},
	{"ferry_monitor_write_report", &ferryMonitorWriteReport},
	{"ferry_monitor_stream_jsonl", &ferryMonitorStreamJSONL},
	{"ferry_monitor_serve_prometheus", &ferryMonitorServePrometheus},
	{"ferry_monitor_attach_iterator", &ferryMonitorAttachIterator},
	{"ferry_monitor_destroy", &ferryMonitorDestroy},
}

// libraryPath is the absolute path of the library under test.
var libraryPath string

// TestMain loads the library once; without it no test can run.
func TestMain(m *testing.M) {
	if os.Getenv(bindNowEnv) == "1" {
		// TestBindNowChild loads the library itself, the way ctypes does.
		os.Exit(m.Run())
	}
	if err := loadLibrary(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// resolveLibraryPath returns $FERRY_LIBRARY, or ../build/lib/libferry.so relative to the package.
func resolveLibraryPath() (string, error) {
	p := os.Getenv("FERRY_LIBRARY")
	if p == "" {
		p = filepath.Join("..", "build", "lib", "libferry.so")
	}
	return filepath.Abs(p)
}

func loadLibrary() error {
	p, err := resolveLibraryPath()
	if err != nil {
		return err
	}
	libraryPath = p
	if _, err := os.Stat(p); err != nil {
		return fmt.Errorf("libferry.so not found at %s (%v): run `make build` first, or set FERRY_LIBRARY", p, err)
	}
	// Lazy binding, as the dynamic loader does for a C program linked with -lferry.
	// TestBindNow covers loaders that bind everything at once.
	h, err := purego.Dlopen(p, purego.RTLD_LAZY|purego.RTLD_GLOBAL)
	if err != nil {
		return fmt.Errorf("cannot load %s: %w", p, err)
	}
	var missing []string
	for _, f := range boundFunctions {
		if _, err := purego.Dlsym(h, f.name); err != nil {
			missing = append(missing, f.name)
			continue
		}
		purego.RegisterLibFunc(f.fptr, h, f.name)
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s does not export %s: rebuild it with `make build`", p, strings.Join(missing, ", "))
	}
	return nil
}

// headerPath is the public header: $FERRY_HEADER, or ../capi/ferry.h relative to the package.
func headerPath() string {
	if p := os.Getenv("FERRY_HEADER"); p != "" {
		return p
	}
	return filepath.Join("..", "capi", "ferry.h")
}

// goString copies a NUL-terminated C string. It stops after limit bytes so that a missing terminator
// fails a test instead of reading on forever.
func goString(p *byte) (string, error) {
	const limit = 1 << 16
	if p == nil {
		return "", errors.New("NULL string")
	}
	var b strings.Builder
	for i := 0; i < limit; i++ {
		c := *(*byte)(unsafe.Add(unsafe.Pointer(p), i))
		if c == 0 {
			return b.String(), nil
		}
		b.WriteByte(c)
	}
	return "", fmt.Errorf("string not terminated within %d bytes", limit)
}

// fixedString returns a fixed char array up to its first NUL and whether it has one.
func fixedString(b []byte) (string, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), true
		}
	}
	return string(b), false
}

func statusString(t testing.TB, s int32) string {
	t.Helper()
	str, err := goString(ferryStatusString(s))
	require.NoError(t, err, "ferry_status_string(%d)", s)
	return str
}

// lastError reads ferry_last_error() on the calling thread; callers lock the thread.
func lastError(t testing.TB) string {
	t.Helper()
	str, err := goString(ferryLastError())
	require.NoError(t, err, "ferry_last_error()")
	return str
}

// call runs fn and reads ferry_last_error() on the same OS thread, since the message is thread-local.
func call(t testing.TB, fn func() int32) (int32, string) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	s := fn()
	return s, lastError(t)
}

// requireStatus checks fn's status and, for a failure, that ferry_last_error() is non-empty and
// mentions every word in want (case-insensitive).
func requireStatus(t testing.TB, want int32, fn func() int32, words ...string) {
	t.Helper()
	got, msg := call(t, fn)
	require.Equal(t, statusString(t, want), statusString(t, got), "status (last error: %q)", msg)
	if want == ferryOK {
		return
	}
	require.NotEmpty(t, msg, "ferry_last_error() after %s", statusString(t, got))
	for _, w := range words {
		require.Contains(t, strings.ToLower(msg), strings.ToLower(w), "ferry_last_error() should name the problem")
	}
}

func requireOK(t testing.TB, fn func() int32) {
	t.Helper()
	requireStatus(t, ferryOK, fn)
}

// deviceCount returns ferry_device_count().
func deviceCount(t testing.TB) int32 {
	t.Helper()
	var n int32 = -7
	requireOK(t, func() int32 { return ferryDeviceCount(&n) })
	require.GreaterOrEqual(t, n, int32(0))
	return n
}

// requireGPU skips the test when no GPU is visible, or fails it when FERRY_REQUIRE_GPU=1.
func requireGPU(t testing.TB) int32 {
	t.Helper()
	n := deviceCount(t)
	if n > 0 {
		return n
	}
	if os.Getenv("FERRY_REQUIRE_GPU") == "1" {
		var info systemProperties
		info.Size = uint32(unsafe.Sizeof(info))
		ferrySystemInfo(&info)
		cuda, _ := fixedString(info.CUDAStatus[:])
		t.Fatalf("FERRY_REQUIRE_GPU=1 but ferry_device_count() is 0 (CUDA status: %q)", cuda)
	}
	t.Skip("no GPU visible (ferry_device_count() == 0); set FERRY_REQUIRE_GPU=1 to fail instead")
	return 0
}

// defaultOptions returns options filled by ferry_engine_options_init.
func defaultOptions(t testing.TB) engineOptions {
	t.Helper()
	var o engineOptions
	requireOK(t, func() int32 { return ferryEngineOptionsInit(&o) })
	return o
}

// newEngine creates an engine on device with the given sampler period and destroys it at cleanup.
func newEngine(t testing.TB, device int32, intervalMS uint32) engineHandle {
	t.Helper()
	o := defaultOptions(t)
	o.Device = device
	o.SampleIntervalMS = intervalMS
	var e engineHandle
	requireOK(t, func() int32 { return ferryEngineCreate(&o, &e) })
	require.NotZero(t, e, "ferry_engine_create returned OK with a NULL handle")
	t.Cleanup(func() {
		s := ferryEngineDestroy(e)
		if s != ferryOK && s != ferryErrInvalidHandle {
			t.Errorf("ferry_engine_destroy: %s", statusString(t, s))
		}
	})
	return e
}

// newCPUEngine creates a CPU engine with the given sampler period.
func newCPUEngine(t testing.TB, intervalMS uint32) engineHandle {
	t.Helper()
	return newEngine(t, ferryDeviceCPU, intervalMS)
}

// check returns ferry_memory_check() of e, which must succeed.
func check(t testing.TB, e engineHandle) memorySnapshot {
	t.Helper()
	s := memorySnapshot{Size: uint32(unsafe.Sizeof(memorySnapshot{}))}
	requireOK(t, func() int32 { return ferryMemoryCheck(e, &s) })
	return s
}

// checkLive returns ferry_memory_check_live() of e, which must succeed.
func checkLive(t testing.TB, e engineHandle) memorySnapshot {
	t.Helper()
	s := memorySnapshot{Size: uint32(unsafe.Sizeof(memorySnapshot{}))}
	requireOK(t, func() int32 { return ferryMemoryCheckLive(e, &s) })
	return s
}

// requireUsable checks that the library still works: a CPU engine can be created, checked and destroyed.
func requireUsable(t testing.TB) {
	t.Helper()
	o := defaultOptions(t)
	o.Device = ferryDeviceCPU
	var e engineHandle
	requireOK(t, func() int32 { return ferryEngineCreate(&o, &e) })
	s := check(t, e)
	require.NotZero(t, s.Flags&memoryFlagHost, "CPU engine snapshot lacks FERRY_MEMORY_F_HOST")
	require.NotZero(t, s.HostTotalBytes)
	requireOK(t, func() int32 { return ferryEngineDestroy(e) })
}

// monotonicNS reads CLOCK_MONOTONIC, the clock of the snapshot timestamps.
func monotonicNS(t testing.TB) uint64 {
	t.Helper()
	var ts unix.Timespec
	require.NoError(t, unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts))
	return uint64(ts.Nano())
}

// guardByte fills the memory around a struct so that a write past the bytes a call may touch shows.
const guardByte = 0xA5

// guardBuf is memory for one struct plus 64 guard bytes, for calls made with a wrong or larger size.
type guardBuf struct {
	words      []uint64 // 8-byte aligned, like the structs
	structSize uintptr
}

func newGuardBuf(structSize uintptr) *guardBuf {
	g := &guardBuf{words: make([]uint64, (structSize+64+7)/8), structSize: structSize}
	b := g.bytes()
	for i := range b {
		b[i] = guardByte
	}
	return g
}

func (g *guardBuf) ptr() unsafe.Pointer { return unsafe.Pointer(&g.words[0]) }

func (g *guardBuf) bytes() []byte {
	return unsafe.Slice((*byte)(g.ptr()), len(g.words)*8)
}

// setSize writes the leading uint32 size field.
func (g *guardBuf) setSize(n uintptr) { *(*uint32)(g.ptr()) = uint32(n) }

// requireUntouchedFrom checks that every byte from offset on still holds the guard pattern.
func (g *guardBuf) requireUntouchedFrom(t testing.TB, offset uintptr) {
	t.Helper()
	b := g.bytes()
	for i := int(offset); i < len(b); i++ {
		if b[i] != guardByte {
			t.Fatalf("byte %d was written (struct size %d, allowed up to %d): 0x%02x", i, g.structSize, offset, b[i])
		}
	}
}
