/*
 * The preamble of every Go file in capi. cgo writes its own prototype for each //export function, in Go's
 * terms: no const, and handles as uintptr_t (so that the Go garbage collector never sees a caller's
 * made-up handle as a pointer). Those prototypes would conflict with ferry.h's, so the header's
 * prototypes of the functions exported from Go with such parameters are renamed away here. The ABI is
 * identical; the C, C++ and purego tests call every one of them through the real header.
 */
#ifndef FERRY_CAPI_EXPORTS_H
#define FERRY_CAPI_EXPORTS_H

#define ferry_engine_create ferry_engine_create_header_decl
#define ferry_engine_destroy ferry_engine_destroy_header_decl
#define ferry_engine_device ferry_engine_device_header_decl
#define ferry_engine_sample_now ferry_engine_sample_now_header_decl
#define ferry_memory_check_live ferry_memory_check_live_header_decl
#define ferry_source_memory ferry_source_memory_header_decl
#define ferry_source_records ferry_source_records_header_decl
#define ferry_source_cifar10 ferry_source_cifar10_header_decl
#define ferry_source_npy ferry_source_npy_header_decl
#define ferry_source_tokens ferry_source_tokens_header_decl
#define ferry_source_callback ferry_source_callback_header_decl
#define ferry_source_len ferry_source_len_header_decl
#define ferry_source_num_fields ferry_source_num_fields_header_decl
#define ferry_source_field ferry_source_field_header_decl
#define ferry_source_destroy ferry_source_destroy_header_decl
#define ferry_iterator_create ferry_iterator_create_header_decl
#define ferry_iterator_next ferry_iterator_next_header_decl
#define ferry_iterator_len ferry_iterator_len_header_decl
#define ferry_iterator_state ferry_iterator_state_header_decl
#define ferry_iterator_restore ferry_iterator_restore_header_decl
#define ferry_iterator_set_epoch ferry_iterator_set_epoch_header_decl
#define ferry_iterator_destroy ferry_iterator_destroy_header_decl
#define ferry_batch_info ferry_batch_info_header_decl
#define ferry_batch_indices ferry_batch_indices_header_decl
#define ferry_batch_field ferry_batch_field_header_decl
#define ferry_batch_field_by_name ferry_batch_field_by_name_header_decl
#define ferry_batch_wait ferry_batch_wait_header_decl
#define ferry_batch_release ferry_batch_release_header_decl
#include "capi.h"
#undef ferry_engine_create
#undef ferry_engine_destroy
#undef ferry_engine_device
#undef ferry_engine_sample_now
#undef ferry_memory_check_live
#undef ferry_source_memory
#undef ferry_source_records
#undef ferry_source_cifar10
#undef ferry_source_npy
#undef ferry_source_tokens
#undef ferry_source_callback
#undef ferry_source_len
#undef ferry_source_num_fields
#undef ferry_source_field
#undef ferry_source_destroy
#undef ferry_iterator_create
#undef ferry_iterator_next
#undef ferry_iterator_len
#undef ferry_iterator_state
#undef ferry_iterator_restore
#undef ferry_iterator_set_epoch
#undef ferry_iterator_destroy
#undef ferry_batch_info
#undef ferry_batch_indices
#undef ferry_batch_field
#undef ferry_batch_field_by_name
#undef ferry_batch_wait
#undef ferry_batch_release

#endif
