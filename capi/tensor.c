/*
 * DLPack tensors over ferry memory: ferry_capi_tensor_new builds a DLManagedTensorVersioned that holds one
 * reference on its batch; its deleter drops the reference through Go and frees the tensor.
 */
#include <stdlib.h>
#include <string.h>

#include "capi.h"

/* Implemented in Go (export_batch.go): drops the tensor's reference on its batch. */
extern void ferryTensorDeleted(uint64_t batch);

typedef struct {
    DLManagedTensorVersioned managed; /* first: the pointer handed out is the struct's */
    uint64_t batch;
    int64_t shape[FERRY_MAX_DIMS + 1];
} ferry_tensor;

static void tensor_deleter(DLManagedTensorVersioned* self) {
    if (self == NULL) {
        return;
    }
    ferry_tensor* t = (ferry_tensor*)self;
    if (!ferry_capi_forked()) { /* a forked child cannot enter Go: the batch is the parent's */
        ferryTensorDeleted(t->batch);
    }
    free(t);
}

void ferry_capi_tensor_delete(DLManagedTensorVersioned* tensor) { tensor_deleter(tensor); }

int ferry_capi_tensor_batch(const DLManagedTensorVersioned* tensor, uint64_t* batch) {
    if (tensor == NULL || tensor->deleter != tensor_deleter || tensor->manager_ctx != (const void*)tensor) {
        return 0;
    }
    *batch = ((const ferry_tensor*)tensor)->batch;
    return 1;
}

DLManagedTensorVersioned* ferry_capi_tensor_new(uint64_t batch, uint64_t data, int32_t device_type, int32_t device_id,
                                                int32_t ndim, const int64_t* shape, uint8_t code, uint8_t bits) {
    if (ndim < 0 || ndim > FERRY_MAX_DIMS + 1) {
        return NULL;
    }
    ferry_tensor* t = calloc(1, sizeof *t);
    if (t == NULL) {
        return NULL;
    }
    t->batch = batch;
    memcpy(t->shape, shape, (size_t)ndim * sizeof(int64_t));
    t->managed.version.major = DLPACK_MAJOR_VERSION;
    t->managed.version.minor = DLPACK_MINOR_VERSION;
    t->managed.manager_ctx = t;
    t->managed.deleter = tensor_deleter;
    t->managed.flags = 0;
    t->managed.dl_tensor.data = (void*)(uintptr_t)data; /* a device address, or ferry host memory */
    t->managed.dl_tensor.device.device_type = (DLDeviceType)device_type;
    t->managed.dl_tensor.device.device_id = device_id;
    t->managed.dl_tensor.ndim = ndim;
    t->managed.dl_tensor.dtype.code = code;
    t->managed.dl_tensor.dtype.bits = bits;
    t->managed.dl_tensor.dtype.lanes = 1;
    t->managed.dl_tensor.shape = t->shape;
    t->managed.dl_tensor.strides = NULL;
    t->managed.dl_tensor.byte_offset = 0;
    return &t->managed;
}
