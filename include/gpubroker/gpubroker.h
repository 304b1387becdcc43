/* The C ABI of the gpubroker client library (libgpubroker.so).
 *
 * Stable across compilers; the Python package binds to it with ctypes.
 * Every fallible function returns a gpb_code (GPB_OK = 0) and, when `err` is
 * not NULL, fills it with the code and a message. Objects returned through
 * out-parameters belong to the caller and are freed with the matching
 * *_release / gpb_free. All functions are thread-safe.
 */
#ifndef GPUBROKER_GPUBROKER_H_
#define GPUBROKER_GPUBROKER_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
#pragma GCC visibility push(default)

#define GPB_MAX_DIMS 8
#define GPB_NAME_BYTES 128

typedef enum gpb_code {
  GPB_OK = 0,
  GPB_INVALID_ARGUMENT = 1,
  GPB_NOT_FOUND = 2,
  GPB_ALREADY_EXISTS = 3,
  GPB_PERMISSION_DENIED = 4,
  GPB_RESOURCE_EXHAUSTED = 5,
  GPB_UNAVAILABLE = 6,
  GPB_PROTOCOL = 7,
  GPB_IO = 8,
  GPB_CONFIG = 9,
  GPB_UNSUPPORTED = 10,
  GPB_INTERNAL = 11
} gpb_code;

typedef enum gpb_backend {
  GPB_BACKEND_DEFAULT = 0,
  GPB_BACKEND_HOST = 1,
  GPB_BACKEND_CUDA_VMM = 2,
  GPB_BACKEND_CUDA_IPC = 3
} gpb_backend;

typedef enum gpb_device_type { GPB_DEVICE_CPU = 1, GPB_DEVICE_CUDA = 2 } gpb_device_type;

typedef struct gpb_error {
  int32_t code;
  char message[256];
} gpb_error;

/* DLPack's (code, bits, lanes). */
typedef struct gpb_dtype {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
} gpb_dtype;

typedef struct gpb_slot_info {
  char name[GPB_NAME_BYTES];
  uint64_t generation;
  uint64_t allocation_id;
  uint64_t allocation_bytes;
  uint64_t byte_offset;
  uint64_t nbytes;
  uint64_t version;
  uint64_t created_ns;
  uint64_t updated_ns;
  int32_t backend;      /* gpb_backend */
  int32_t device_type;  /* gpb_device_type */
  int32_t device_ordinal;
  uint8_t device_uuid[16];
  gpb_dtype dtype;
  int32_t ndim;
  int64_t shape[GPB_MAX_DIMS];
  int64_t strides[GPB_MAX_DIMS]; /* in elements */
  uint32_t owner_uid;
  uint32_t owner_gid;
  uint32_t mode;
  uint32_t lease_count;
} gpb_slot_info;

typedef struct gpb_create_args {
  const char* name;
  gpb_dtype dtype;
  int32_t ndim;
  const int64_t* shape;   /* ndim entries */
  const int64_t* strides; /* ndim entries in elements, or NULL for row-major */
  uint64_t bytes;         /* allocation size, 0: what the shape needs */
  const char* base;       /* NULL or "": new allocation; else a view into base's */
  uint64_t byte_offset;
  int32_t backend;        /* gpb_backend */
  int32_t device;         /* CUDA ordinal in this process's numbering, -1: default */
  const uint8_t* device_uuid; /* 16 bytes or NULL; overrides device */
  uint32_t mode;          /* e.g. 0600 */
} gpb_create_args;

typedef struct gpb_client gpb_client;
typedef struct gpb_view gpb_view;

const char* gpb_code_name(int32_t code);
/* $GPUBROKER_SOCKET or the built-in default. The string is static. */
const char* gpb_default_socket_path(void);
int32_t gpb_parse_dtype(const char* text, gpb_dtype* out, gpb_error* err);

/* socket_path NULL: the default. client_name NULL: the program name. */
int32_t gpb_connect(const char* socket_path, const char* client_name, gpb_client** out,
                    gpb_error* err);
/* Views made from the client stay valid after this. */
void gpb_client_release(gpb_client* client);

/* Creates a slot. out_view NULL: create only; else also attach. out_info may be NULL. */
int32_t gpb_create(gpb_client* client, const gpb_create_args* args, gpb_view** out_view,
                   gpb_slot_info* out_info, gpb_error* err);
int32_t gpb_attach(gpb_client* client, const char* name, int32_t read_only, gpb_view** out,
                   gpb_error* err);
/* Attaches `count` slots into out[0..count), all or none: on an error no view
 * is left and err names the slot. Slots of one arena cost one mapping in all. */
int32_t gpb_attach_many(gpb_client* client, const char* const* names, size_t count, int32_t read_only,
                        gpb_view** out, gpb_error* err);
int32_t gpb_destroy(gpb_client* client, const char* name, gpb_error* err);
int32_t gpb_stat(gpb_client* client, const char* name, gpb_slot_info* out, gpb_error* err);
/* From shared memory, no round trip. */
int32_t gpb_lookup(gpb_client* client, const char* name, gpb_slot_info* out, gpb_error* err);
/* *out is an array of *count entries; free it with gpb_free. */
int32_t gpb_list(gpb_client* client, gpb_slot_info** out, size_t* count, gpb_error* err);
/* Like gpb_list, read from the shared registry: no round trip. */
int32_t gpb_list_registry(gpb_client* client, gpb_slot_info** out, size_t* count, gpb_error* err);
void gpb_free(void* p);

/* The UUID of this process's CUDA device `ordinal` (16 bytes). */
int32_t gpb_device_uuid(int32_t ordinal, uint8_t* out_uuid, gpb_error* err);

/* The view's data pointer (first element) and whether it may be written. */
void* gpb_view_data(const gpb_view* view);
int32_t gpb_view_writable(const gpb_view* view);
void gpb_view_info(const gpb_view* view, gpb_slot_info* out);
/* A new reference sharing the lease. */
gpb_view* gpb_view_retain(const gpb_view* view);
/* Drops one reference; the lease goes with the last. */
void gpb_view_release(gpb_view* view);

/* A DLPack tensor over the view, holding its own reference to it:
 * *out is a DLManagedTensor, or with `versioned` a DLManagedTensorVersioned
 * (DLPack 1.0, read-only flag set for a read-only view). Its deleter drops the
 * reference. Hand it to a consumer, or free it with gpb_dlpack_delete. */
int32_t gpb_view_dlpack(const gpb_view* view, int32_t versioned, void** out, gpb_error* err);
/* gpb_attach_many, each view then exported as by gpb_view_dlpack into
 * out[0..count) (the tensors hold the views): all or none. */
int32_t gpb_attach_many_dlpack(gpb_client* client, const char* const* names, size_t count, int32_t read_only,
                               int32_t versioned, void** out, gpb_error* err);
/* Calls the deleter of a tensor from gpb_view_dlpack that no consumer took. */
void gpb_dlpack_delete(void* managed, int32_t versioned);

#pragma GCC visibility pop
#ifdef __cplusplus
}
#endif

#endif /* GPUBROKER_GPUBROKER_H_ */
