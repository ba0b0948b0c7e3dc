/*
 * Internal declarations shared by the C half of the C API (capi.c) and its Go half. Not installed.
 */
#ifndef FERRY_CAPI_INTERNAL_H
#define FERRY_CAPI_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "ferry.h"

/* Internal: not exported from libferry.so. */
#pragma GCC visibility push(hidden)

/* Records msg[0:len] as the calling thread's last error. */
void ferry_capi_set_error(const char* msg, size_t len);

/* Engine slots: the memory snapshot of each live engine, published under a seqlock so that
   ferry_memory_check reads it in C without entering Go. Slot i belongs to engine registry index i. */
void ferry_capi_slot_publish(uint32_t slot, const ferry_memory_snapshot* snap);
void ferry_capi_slot_open(uint32_t slot, uint64_t handle);
void ferry_capi_slot_close(uint32_t slot);

/* Minimum (version 1) sizes of the size-prefixed structs. */
#define FERRY_CAPI_V1_DEVICE_PROPERTIES 416u
#define FERRY_CAPI_V1_SYSTEM_PROPERTIES 688u
#define FERRY_CAPI_V1_ENGINE_OPTIONS 16u
#define FERRY_CAPI_V1_MEMORY_SNAPSHOT 160u

#pragma GCC visibility pop

#endif
