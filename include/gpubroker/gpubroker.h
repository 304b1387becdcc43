/* The C ABI of the gpubroker client library (libgpubroker.so).
 *
 * Stable across compilers; the Python package binds to it with ctypes.
 * Every fallible function returns a gpb_code (GPB_OK = 0) and, when `err` is
 * not NULL, fills it with the code and a message. Objects returned through
 * out-parameters belong to the caller and are freed with the matching
 * *_release / gpb_free. All functions are thread-safe, and none lets a C++
 * exception out: a failure inside the library (out of memory included) is a
 * returned code like any other.
 *
 * Versioning: gpb_abi_version() is the GPB_ABI_VERSION the library was built
 * with; a caller compiled against another version should refuse to run.
 * gpb_slot_info and gpb_create_args begin with `struct_size`, which the
 * caller sets to sizeof the struct as it knows it: the library reads no
 * field past it and writes no byte past it, so a struct may grow at its end
 * without breaking callers built against an older header. gpb_error and
 * gpb_dtype are frozen (gpb_dtype is DLPack's own triple).
 * gpb_abi_layout() describes every public struct as the library sees it.
 */
#ifndef GPUBROKER_GPUBROKER_H_
#define GPUBROKER_GPUBROKER_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define GPB_NOEXCEPT noexcept
extern "C" {
#else
#define GPB_NOEXCEPT
#endif
#pragma GCC visibility push(default)

#define GPB_ABI_VERSION 4
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
  GPB_INTERNAL = 11,
  GPB_TIMEOUT = 12,
  GPB_BUSY = 13
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
  uint32_t struct_size; /* in: the caller's sizeof(gpb_slot_info); out: the bytes written */
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
  /* ABI 3: versions (docs/live.md) */
  uint32_t buffers;      /* buffers of the allocation, each buffer_bytes long */
  uint32_t reserved;
  uint64_t buffer_bytes;
} gpb_slot_info;

typedef struct gpb_create_args {
  uint32_t struct_size; /* sizeof(gpb_create_args) */
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
  /* ABI 3: 0 plain slot; 1..8 a live slot of that many buffers (docs/live.md) */
  uint32_t buffers;
  uint32_t flags; /* 0, or GPB_CREATE_EXIST_OK (ABI 3; earlier headers called it `reserved`, always 0) */
} gpb_create_args;

/* gpb_create_args.flags: a slot of that name that is the caller's and has the
 * dtype, shape (strides, buffers, backend where given) asked for is returned
 * (and attached) instead of GPB_ALREADY_EXISTS; one that differs, or is
 * another user's, is still GPB_ALREADY_EXISTS, with the difference named. */
#define GPB_CREATE_EXIST_OK 1u

typedef struct gpb_client gpb_client;
typedef struct gpb_view gpb_view;

/* GPB_ABI_VERSION as the library was built. */
uint32_t gpb_abi_version(void) GPB_NOEXCEPT;
/* Every public struct as the library was built: lines of "struct NAME SIZE"
 * each followed by its fields as "  FIELD OFFSET SIZE". Static. */
const char* gpb_abi_layout(void) GPB_NOEXCEPT;

const char* gpb_code_name(int32_t code) GPB_NOEXCEPT;
/* Where gpb_connect(NULL, ...) connects now: $GPUBROKER_SOCKET; else, for a
 * user other than root, $XDG_RUNTIME_DIR/gpubroker/gpubroker.sock if that
 * user's broker made it; else /run/gpubroker/gpubroker.sock. The string
 * is static: it stays valid for the life of the process. */
const char* gpb_default_socket_path(void) GPB_NOEXCEPT;
int32_t gpb_parse_dtype(const char* text, gpb_dtype* out, gpb_error* err) GPB_NOEXCEPT;

/* socket_path NULL: the default. client_name NULL: the program name. */
int32_t gpb_connect(const char* socket_path, const char* client_name, gpb_client** out,
                    gpb_error* err) GPB_NOEXCEPT;
/* gpb_connect with the times ConnectOptions sets in C++, in milliseconds;
 * -1 keeps a default. reply_timeout_ms (default 30000): a broker silent this
 * long is GPB_UNAVAILABLE. reconnect_timeout_ms (default 10000): after the
 * broker went away, how long the next call keeps dialling (a restart) before
 * GPB_UNAVAILABLE; 0 fails at once. */
int32_t gpb_connect_with(const char* socket_path, const char* client_name, int32_t reply_timeout_ms,
                         int32_t reconnect_timeout_ms, gpb_client** out, gpb_error* err) GPB_NOEXCEPT;
/* Views made from the client stay valid after this. */
void gpb_client_release(gpb_client* client) GPB_NOEXCEPT;

/* Creates a slot. out_view NULL: create only; else also attach. out_info may be NULL. */
int32_t gpb_create(gpb_client* client, const gpb_create_args* args, gpb_view** out_view,
                   gpb_slot_info* out_info, gpb_error* err) GPB_NOEXCEPT;
/* read_only: GPB_ATTACH_READ_WRITE (0: write access, or GPB_PERMISSION_DENIED
 * naming the missing bit), GPB_ATTACH_READ_ONLY (1), or GPB_ATTACH_AS_ALLOWED
 * (2: write access where this user may write, else read-only; see
 * gpb_view_writable). The same for every function below that takes it. */
#define GPB_ATTACH_READ_WRITE 0
#define GPB_ATTACH_READ_ONLY 1
#define GPB_ATTACH_AS_ALLOWED 2
int32_t gpb_attach(gpb_client* client, const char* name, int32_t read_only, gpb_view** out,
                   gpb_error* err) GPB_NOEXCEPT;
/* Attaches `count` slots into out[0..count), all or none: on an error no view
 * is left and err names the slot. Slots of one arena cost one mapping in all. */
int32_t gpb_attach_many(gpb_client* client, const char* const* names, size_t count, int32_t read_only,
                        gpb_view** out, gpb_error* err) GPB_NOEXCEPT;
int32_t gpb_destroy(gpb_client* client, const char* name, gpb_error* err) GPB_NOEXCEPT;
int32_t gpb_stat(gpb_client* client, const char* name, gpb_slot_info* out, gpb_error* err) GPB_NOEXCEPT;
/* From shared memory, no round trip. */
int32_t gpb_lookup(gpb_client* client, const char* name, gpb_slot_info* out, gpb_error* err) GPB_NOEXCEPT;
/* *out is an array of *count entries; free it with gpb_free. Entries are the
 * library's sizeof(gpb_slot_info) apart (their struct_size): a caller that
 * checked gpb_abi_version() indexes it as usual. */
int32_t gpb_list(gpb_client* client, gpb_slot_info** out, size_t* count, gpb_error* err) GPB_NOEXCEPT;
/* Like gpb_list, read from the shared registry: no round trip. */
int32_t gpb_list_registry(gpb_client* client, gpb_slot_info** out, size_t* count, gpb_error* err) GPB_NOEXCEPT;
void gpb_free(void* p) GPB_NOEXCEPT;

/* The UUID of this process's CUDA device `ordinal` (16 bytes). */
int32_t gpb_device_uuid(int32_t ordinal, uint8_t* out_uuid, gpb_error* err) GPB_NOEXCEPT;

/* The view's data pointer (first element) and whether it may be written. */
void* gpb_view_data(const gpb_view* view) GPB_NOEXCEPT;
int32_t gpb_view_writable(const gpb_view* view) GPB_NOEXCEPT;
/* The view's slot, as gpb_stat gives it when the view was made. */
int32_t gpb_view_info(const gpb_view* view, gpb_slot_info* out, gpb_error* err) GPB_NOEXCEPT;
/* A new reference sharing the lease. */
gpb_view* gpb_view_retain(const gpb_view* view) GPB_NOEXCEPT;
/* Drops one reference; the lease goes with the last. */
void gpb_view_release(gpb_view* view) GPB_NOEXCEPT;

/* A DLPack tensor over the view, holding its own reference to it:
 * *out is a DLManagedTensor, or with `versioned` a DLManagedTensorVersioned
 * (DLPack 1.0, read-only flag set for a read-only view). Its deleter drops the
 * reference. Hand it to a consumer, or free it with gpb_dlpack_delete. */
int32_t gpb_view_dlpack(const gpb_view* view, int32_t versioned, void** out, gpb_error* err) GPB_NOEXCEPT;
/* gpb_attach_many, each view then exported as by gpb_view_dlpack into
 * out[0..count) (the tensors hold the views): all or none. */
int32_t gpb_attach_many_dlpack(gpb_client* client, const char* const* names, size_t count, int32_t read_only,
                               int32_t versioned, void** out, gpb_error* err) GPB_NOEXCEPT;
/* Calls the deleter of a tensor from gpb_view_dlpack that no consumer took. */
void gpb_dlpack_delete(void* managed, int32_t versioned) GPB_NOEXCEPT;

/* ---- Versions (docs/live.md) ----------------------------------------------
 * A live slot's allocation holds `buffers` buffers; a writer begins one,
 * writes it and commits it as the next version of the whole allocation; a
 * reader waits for a version (a futex in shared memory, no message), pins
 * the newest (acquire), reads it and releases it. Streams are CUstream /
 * cudaStream_t values (NULL: the legacy default stream); host slots ignore
 * them. */

/* Where `buffer` of the view's allocation holds the view's first element;
 * NULL past the last buffer. */
void* gpb_view_data_in(const gpb_view* view, uint32_t buffer) GPB_NOEXCEPT;
/* gpb_view_dlpack over buffer `buffer`. */
int32_t gpb_view_dlpack_in(const gpb_view* view, uint32_t buffer, int32_t versioned, void** out,
                           gpb_error* err) GPB_NOEXCEPT;

typedef struct gpb_writer gpb_writer;
typedef struct gpb_reader gpb_reader;

typedef struct gpb_acquired {
  uint64_t version;
  uint64_t committed_ns;
  uint32_t buffer;
  int32_t writing; /* one-buffer slots: a write was under way; check gpb_reader_unchanged after reading */
} gpb_acquired;

/* Attaches `name` writable and makes a writer of its allocation. */
int32_t gpb_writer_open(gpb_client* client, const char* name, gpb_writer** out, gpb_error* err) GPB_NOEXCEPT;
/* Aborts a write not committed. */
void gpb_writer_close(gpb_writer* writer) GPB_NOEXCEPT;
/* A buffer to write into; every buffer pinned: waits up to wait_ms (-1: no
 * limit, 0: none), then GPB_BUSY. */
int32_t gpb_writer_begin(gpb_writer* writer, int32_t wait_ms, uint32_t* out_buffer, gpb_error* err) GPB_NOEXCEPT;
/* Publishes the begun buffer and returns its version at once; CUDA: it
 * becomes visible once `stream` has run the work queued on it before. */
int32_t gpb_writer_commit(gpb_writer* writer, void* stream, uint64_t* out_version, gpb_error* err) GPB_NOEXCEPT;
int32_t gpb_writer_abort(gpb_writer* writer, gpb_error* err) GPB_NOEXCEPT;

/* Attaches `name` read-only and makes a reader of its allocation. */
int32_t gpb_reader_open(gpb_client* client, const char* name, gpb_reader** out, gpb_error* err) GPB_NOEXCEPT;
/* Releases its pin. */
void gpb_reader_close(gpb_reader* reader) GPB_NOEXCEPT;
/* The newest committed version (0: none yet), from shared memory. */
int32_t gpb_reader_latest(gpb_reader* reader, uint64_t* out_version, gpb_error* err) GPB_NOEXCEPT;
/* Blocks until a version newer than `after` is committed, at most
 * timeout_ms (-1: no limit); GPB_TIMEOUT if none came, GPB_NOT_FOUND once
 * `name` is destroyed or names another allocation (open a new reader). */
int32_t gpb_reader_wait(gpb_reader* reader, uint64_t after, int32_t timeout_ms, uint64_t* out_version,
                        gpb_error* err) GPB_NOEXCEPT;
/* Pins the newest version: whole in memory, readable on any stream at once.
 * The version held before is released once the work queued on `stream` is done.
 * GPB_NOT_FOUND if nothing has been committed yet (wait first). */
int32_t gpb_reader_acquire(gpb_reader* reader, void* stream, gpb_acquired* out, gpb_error* err) GPB_NOEXCEPT;
/* Gives the pin back once the work queued on `stream` is done. */
int32_t gpb_reader_release(gpb_reader* reader, void* stream, gpb_error* err) GPB_NOEXCEPT;
/* One-buffer slots: 1 if no write began since the acquire (the read was whole). */
int32_t gpb_reader_unchanged(gpb_reader* reader, int32_t* out, gpb_error* err) GPB_NOEXCEPT;

/* Batched copies: many device-to-device copies on one GPU in one kernel
 * launch (what Subscriber.copy_into runs). A plan is made once, its table
 * of copies uploaded to the device, and run any number of times; an engine
 * copies the same parameters every step. Addresses are device pointers of
 * `device` (this process's numbering). GPB_UNSUPPORTED where the library
 * has no kernel for this device: copy another way. */
typedef struct gpb_copy {
  const void* src;
  void* dst;
  uint64_t bytes;
} gpb_copy;
typedef struct gpb_copy_plan gpb_copy_plan;

int32_t gpb_copy_plan_create(int32_t device, const gpb_copy* copies, size_t count, gpb_copy_plan** out,
                             gpb_error* err) GPB_NOEXCEPT;
/* Queues the copies on `stream` (a cudaStream_t; NULL: the legacy default
 * stream) and returns at once. */
int32_t gpb_copy_plan_run(gpb_copy_plan* plan, void* stream, gpb_error* err) GPB_NOEXCEPT;
void gpb_copy_plan_destroy(gpb_copy_plan* plan) GPB_NOEXCEPT;

#pragma GCC visibility pop
#ifdef __cplusplus
}
#endif

#endif /* GPUBROKER_GPUBROKER_H_ */
