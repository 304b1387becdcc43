// A stand-in for the CUDA driver (libcuda.so.1) over host memory, for tests of
// the logic around streams and their failures on machines without a GPU.
//
// Built as tests/fake_cuda/libcuda.so.1; a test that puts that directory on
// LD_LIBRARY_PATH gets it from common/cuda_driver.cc's dlopen, in the broker
// it starts as in itself. It does what the cuda_vmm backend and the client
// ask of a driver, and no more:
// - memory: cuMemCreate makes a memfd, exported and imported as a file
//   descriptor as the real driver does; cuMemMap maps it, cuMemSetAccess sets
//   its protection (a read-only view faults on a write, as on a GPU); the
//   "device" pointers are host pointers.
// - streams: any handle is a stream, idle until the test holds it. Work
//   queued on a held stream (an event recorded) is done only once the test
//   finishes it; cuStreamQuery says CUDA_ERROR_NOT_READY meanwhile and
//   cuEventSynchronize blocks.
// - failures: the next N calls of a named entry point fail.
// - contexts: one primary context per device, counted; stream queries and
//   events need a current context, and an event whose context was released
//   for good can no longer be waited on.
// Kernels, legacy IPC (cuda_ipc) and anything else: CUDA_ERROR_NOT_SUPPORTED.
// Where it is looser than the driver: every stream handle, the legacy one (0)
// included, is a stream of its own that waits for no other (as streams made
// with CU_STREAM_NON_BLOCKING); handles need not be made first; copies run
// at once; cuMemSetAccess reads only its first descriptor.
//
// The test's controls (extern "C", found with dlsym on the same library):
//   gpbfake_hold(stream), gpbfake_finish(stream), gpbfake_fail(name, times,
//   code), gpbfake_calls(name), gpbfake_reset() (every stream finished,
//   every failure forgotten).
// GPBFAKE_DEVICES sets the number of devices (default 1).
#include <cuda.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

namespace {

constexpr size_t kGranularity = size_t{2} << 20;
constexpr size_t kTotalBytes = size_t{16} << 30;

struct Stream {
  bool held = false;
  uint64_t finished = 0;  // times the test finished it
};

struct Event {
  CUstream stream = nullptr;
  bool pending = false;  // recorded while its stream was held
  uint64_t at = 0;       // the stream's `finished` then
  CUcontext context = nullptr;  // current when it was made
  uint64_t life = 0;            // that context's life then (see Fake::lives)
};

struct Fake {
  std::mutex mu;
  std::condition_variable cv;
  std::map<CUstream, Stream> streams;
  std::map<CUevent, Event> events;
  std::map<CUmemGenericAllocationHandle, int> allocations;  // handle -> memfd
  std::map<std::string, std::pair<int, CUresult>> failures;  // name -> (times left, code)
  std::map<std::string, uint64_t> calls;
  std::map<CUcontext, int> retained;   // primary contexts: retains less releases
  std::map<CUcontext, uint64_t> lives;  // times each went (its last release)
  uintptr_t next = 1;
  size_t used = 0;
};

Fake& F() {
  static Fake* f = new Fake();  // lives as long as the process
  return *f;
}

thread_local CUcontext current = nullptr;

// Counts the call; its injected failure, if any is left.
CUresult Enter(const char* name) {
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  ++f.calls[name];
  auto it = f.failures.find(name);
  if (it == f.failures.end() || it->second.first == 0) return CUDA_SUCCESS;
  --it->second.first;
  return it->second.second;
}

#define FAKE_ENTER(name)                          \
  if (CUresult injected = Enter(name); injected) { \
    return injected;                              \
  }

int Devices() {
  const char* v = std::getenv("GPBFAKE_DEVICES");
  return v != nullptr ? std::atoi(v) : 1;
}

CUcontext ContextOf(CUdevice d) { return reinterpret_cast<CUcontext>(static_cast<uintptr_t>(0x1000 + d)); }

// Whether `ctx` is a primary context retained now.
bool Alive(Fake& f, CUcontext ctx) { return ctx != nullptr && f.retained[ctx] > 0; }

bool Done(const Fake& f, const Event& e) {
  if (!e.pending) return true;
  auto s = f.streams.find(e.stream);
  return s == f.streams.end() || s->second.finished > e.at;
}

}  // namespace

extern "C" {

// ---- the test's controls

__attribute__((visibility("default"))) void gpbfake_hold(void* stream) {
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  f.streams[static_cast<CUstream>(stream)].held = true;
}

__attribute__((visibility("default"))) void gpbfake_finish(void* stream) {
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  Stream& s = f.streams[static_cast<CUstream>(stream)];
  s.held = false;
  ++s.finished;
  f.cv.notify_all();
}

__attribute__((visibility("default"))) void gpbfake_fail(const char* name, int times, int code) {
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  f.failures[name] = {times, static_cast<CUresult>(code)};
}

__attribute__((visibility("default"))) void gpbfake_reset() {
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  for (auto& [handle, stream] : f.streams) {
    if (stream.held) ++stream.finished;
    stream.held = false;
  }
  f.failures.clear();
  f.cv.notify_all();
}

__attribute__((visibility("default"))) uint64_t gpbfake_calls(const char* name) {
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  auto it = f.calls.find(name);
  return it == f.calls.end() ? 0 : it->second;
}

// ---- start-up, devices, contexts

CUresult CUDAAPI cuInit(unsigned int) { return CUDA_SUCCESS; }

CUresult CUDAAPI cuDeviceGetCount(int* count) {
  *count = Devices();
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGet(CUdevice* device, int ordinal) {
  if (ordinal < 0 || ordinal >= Devices()) return CUDA_ERROR_INVALID_DEVICE;
  *device = ordinal;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetUuid(CUuuid* uuid, CUdevice device) {
  std::memset(uuid->bytes, 0, sizeof(uuid->bytes));
  std::memcpy(uuid->bytes, "fake-cuda-dev", 13);
  uuid->bytes[15] = static_cast<char>(device);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetAttribute(int* value, CUdevice_attribute, CUdevice) {
  *value = 1;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice device) {
  if (device < 0 || device >= Devices()) return CUDA_ERROR_INVALID_DEVICE;
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  *ctx = ContextOf(device);
  ++f.retained[*ctx];
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDevicePrimaryCtxRelease(CUdevice device) {
  if (device < 0 || device >= Devices()) return CUDA_ERROR_INVALID_DEVICE;
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  int& n = f.retained[ContextOf(device)];
  if (n <= 0) return CUDA_ERROR_INVALID_CONTEXT;
  if (--n == 0) ++f.lives[ContextOf(device)];  // gone: its events with it
  return CUDA_SUCCESS;
}


CUresult CUDAAPI cuCtxGetCurrent(CUcontext* ctx) {
  *ctx = current;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxSetCurrent(CUcontext ctx) {
  current = ctx;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxGetDevice(CUdevice* device) {
  if (current == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  *device = static_cast<CUdevice>(reinterpret_cast<uintptr_t>(current) - 0x1000);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxSynchronize() { return CUDA_SUCCESS; }

CUresult CUDAAPI cuGetErrorName(CUresult error, const char** name) {
  switch (error) {
    case CUDA_SUCCESS: *name = "CUDA_SUCCESS"; break;
    case CUDA_ERROR_NOT_READY: *name = "CUDA_ERROR_NOT_READY"; break;
    case CUDA_ERROR_LAUNCH_FAILED: *name = "CUDA_ERROR_LAUNCH_FAILED"; break;
    case CUDA_ERROR_ILLEGAL_ADDRESS: *name = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *name = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case CUDA_ERROR_NOT_SUPPORTED: *name = "CUDA_ERROR_NOT_SUPPORTED"; break;
    case CUDA_ERROR_INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; break;
    default: *name = "CUDA_ERROR_UNKNOWN"; break;
  }
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGetErrorString(CUresult, const char** text) {
  *text = "from the test's fake CUDA driver";
  return CUDA_SUCCESS;
}

// ---- virtual memory management (cuda_vmm)

CUresult CUDAAPI cuMemGetAllocationGranularity(size_t* granularity, const CUmemAllocationProp*,
                                               CUmemAllocationGranularity_flags) {
  *granularity = kGranularity;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemCreate(CUmemGenericAllocationHandle* handle, size_t size, const CUmemAllocationProp*,
                             unsigned long long) {
  FAKE_ENTER("cuMemCreate");
  if (size == 0 || size % kGranularity != 0) return CUDA_ERROR_INVALID_VALUE;
  Fake& f = F();
  {
    std::lock_guard<std::mutex> lock(f.mu);
    if (f.used + size > kTotalBytes) return CUDA_ERROR_OUT_OF_MEMORY;
  }
  int fd = ::memfd_create("fake-cuda", MFD_CLOEXEC);
  if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    ::close(fd);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  std::lock_guard<std::mutex> lock(f.mu);
  f.used += size;
  *handle = f.next++;
  f.allocations[*handle] = fd;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemRelease(CUmemGenericAllocationHandle handle) {
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  auto it = f.allocations.find(handle);
  if (it == f.allocations.end()) return CUDA_ERROR_INVALID_VALUE;
  struct stat st {};
  if (::fstat(it->second, &st) == 0 && f.used >= static_cast<size_t>(st.st_size)) f.used -= st.st_size;
  ::close(it->second);
  f.allocations.erase(it);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemExportToShareableHandle(void* shareable, CUmemGenericAllocationHandle handle,
                                              CUmemAllocationHandleType type, unsigned long long) {
  if (type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) return CUDA_ERROR_NOT_SUPPORTED;
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  auto it = f.allocations.find(handle);
  if (it == f.allocations.end()) return CUDA_ERROR_INVALID_VALUE;
  int fd = ::fcntl(it->second, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  *static_cast<int*>(shareable) = fd;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemImportFromShareableHandle(CUmemGenericAllocationHandle* handle, void* os_handle,
                                                CUmemAllocationHandleType type) {
  if (type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) return CUDA_ERROR_NOT_SUPPORTED;
  int fd = ::fcntl(static_cast<int>(reinterpret_cast<intptr_t>(os_handle)), F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return CUDA_ERROR_INVALID_VALUE;
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  struct stat st {};
  if (::fstat(fd, &st) == 0) f.used += st.st_size;
  *handle = f.next++;
  f.allocations[*handle] = fd;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemAddressReserve(CUdeviceptr* ptr, size_t size, size_t, CUdeviceptr, unsigned long long) {
  // Aligned to the granularity, as the driver's are.
  void* p = ::mmap(nullptr, size + kGranularity, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  auto start = reinterpret_cast<uintptr_t>(p);
  uintptr_t aligned = (start + kGranularity - 1) / kGranularity * kGranularity;
  if (aligned > start) ::munmap(p, aligned - start);
  uintptr_t end = start + size + kGranularity;
  if (end > aligned + size) ::munmap(reinterpret_cast<void*>(aligned + size), end - (aligned + size));
  *ptr = aligned;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  return ::munmap(reinterpret_cast<void*>(ptr), size) == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult CUDAAPI cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                          unsigned long long) {
  if (ptr % kGranularity != 0 || size % kGranularity != 0 || offset % kGranularity != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  Fake& f = F();
  int fd;
  {
    std::lock_guard<std::mutex> lock(f.mu);
    auto it = f.allocations.find(handle);
    if (it == f.allocations.end()) return CUDA_ERROR_INVALID_VALUE;
    fd = it->second;
  }
  void* p = ::mmap(reinterpret_cast<void*>(ptr), size, PROT_NONE, MAP_SHARED | MAP_FIXED, fd,
                   static_cast<off_t>(offset));
  return p == MAP_FAILED ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemUnmap(CUdeviceptr ptr, size_t size) {
  void* p = ::mmap(reinterpret_cast<void*>(ptr), size, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc, size_t count) {
  if (count == 0) return CUDA_ERROR_INVALID_VALUE;
  int prot = PROT_NONE;
  if (desc[0].flags == CU_MEM_ACCESS_FLAGS_PROT_READ) prot = PROT_READ;
  if (desc[0].flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE) prot = PROT_READ | PROT_WRITE;
  return ::mprotect(reinterpret_cast<void*>(ptr), size, prot) == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult CUDAAPI cuMemsetD8(CUdeviceptr ptr, unsigned char value, size_t n) {
  std::memset(reinterpret_cast<void*>(ptr), value, n);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemGetInfo(size_t* free_bytes, size_t* total) {
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  *total = kTotalBytes;
  *free_bytes = kTotalBytes - std::min(f.used, kTotalBytes);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyHtoD(CUdeviceptr dst, const void* src, size_t n) {
  std::memcpy(reinterpret_cast<void*>(dst), src, n);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t n, CUstream) {
  std::memcpy(reinterpret_cast<void*>(dst), src, n);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyDtoHAsync(void* dst, CUdeviceptr src, size_t n, CUstream) {
  std::memcpy(dst, reinterpret_cast<const void*>(src), n);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemHostAlloc(void** p, size_t n, unsigned int) {
  *p = std::aligned_alloc(4096, (n + 4095) / 4096 * 4096);
  return *p != nullptr ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult CUDAAPI cuMemFreeHost(void* p) {
  std::free(p);
  return CUDA_SUCCESS;
}

// ---- streams and events

CUresult CUDAAPI cuStreamCreate(CUstream* stream, unsigned int) {
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  *stream = reinterpret_cast<CUstream>(0x100000 + f.next++);
  f.streams[*stream];
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamDestroy(CUstream) {
  return CUDA_SUCCESS;  // its work still runs (kept, until the test finishes a held one)
}

CUresult CUDAAPI cuStreamQuery(CUstream stream) {
  FAKE_ENTER("cuStreamQuery");
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  if (!Alive(f, current)) return CUDA_ERROR_INVALID_CONTEXT;
  auto it = f.streams.find(stream);
  return it != f.streams.end() && it->second.held ? CUDA_ERROR_NOT_READY : CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamWaitEvent(CUstream, CUevent, unsigned int) { return CUDA_SUCCESS; }

CUresult CUDAAPI cuEventCreate(CUevent* event, unsigned int) {
  FAKE_ENTER("cuEventCreate");
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  if (!Alive(f, current)) return CUDA_ERROR_INVALID_CONTEXT;
  *event = reinterpret_cast<CUevent>(0x200000 + f.next++);
  Event& e = f.events[*event];
  e.context = current;
  e.life = f.lives[current];
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventRecord(CUevent event, CUstream stream) {
  FAKE_ENTER("cuEventRecord");
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  auto it = f.events.find(event);
  if (it == f.events.end()) return CUDA_ERROR_INVALID_HANDLE;
  if (!Alive(f, current) || current != it->second.context) return CUDA_ERROR_INVALID_CONTEXT;
  auto s = f.streams.find(stream);
  it->second.stream = stream;
  it->second.pending = s != f.streams.end() && s->second.held;
  it->second.at = s != f.streams.end() ? s->second.finished : 0;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventQuery(CUevent event) {
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  auto it = f.events.find(event);
  if (it == f.events.end()) return CUDA_ERROR_INVALID_HANDLE;
  return Done(f, it->second) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

CUresult CUDAAPI cuEventSynchronize(CUevent event) {
  FAKE_ENTER("cuEventSynchronize");
  Fake& f = F();
  std::unique_lock<std::mutex> lock(f.mu);
  auto it = f.events.find(event);
  if (it == f.events.end()) return CUDA_ERROR_INVALID_HANDLE;
  // An event of a context that went (its last release) is gone with it.
  auto gone = [&] { return f.lives[it->second.context] != it->second.life; };
  if (gone()) return CUDA_ERROR_INVALID_CONTEXT;
  f.cv.wait(lock, [&] { return Done(f, it->second); });
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventDestroy(CUevent event) {
  Fake& f = F();
  std::lock_guard<std::mutex> lock(f.mu);
  f.events.erase(event);
  return CUDA_SUCCESS;
}

// ---- not here: kernels, legacy IPC, host functions

CUresult CUDAAPI cuMemAlloc(CUdeviceptr*, size_t) { return CUDA_ERROR_NOT_SUPPORTED; }
CUresult CUDAAPI cuMemFree(CUdeviceptr) { return CUDA_ERROR_NOT_SUPPORTED; }
CUresult CUDAAPI cuMemGetAddressRange(CUdeviceptr*, size_t*, CUdeviceptr) { return CUDA_ERROR_NOT_SUPPORTED; }
CUresult CUDAAPI cuIpcGetMemHandle(CUipcMemHandle*, CUdeviceptr) { return CUDA_ERROR_NOT_SUPPORTED; }
CUresult CUDAAPI cuIpcOpenMemHandle(CUdeviceptr*, CUipcMemHandle, unsigned int) { return CUDA_ERROR_NOT_SUPPORTED; }
CUresult CUDAAPI cuIpcCloseMemHandle(CUdeviceptr) { return CUDA_ERROR_NOT_SUPPORTED; }
CUresult CUDAAPI cuIpcGetEventHandle(CUipcEventHandle*, CUevent) { return CUDA_ERROR_NOT_SUPPORTED; }
CUresult CUDAAPI cuIpcOpenEventHandle(CUevent*, CUipcEventHandle) { return CUDA_ERROR_NOT_SUPPORTED; }
CUresult CUDAAPI cuLaunchHostFunc(CUstream, CUhostFn, void*) { return CUDA_ERROR_NOT_SUPPORTED; }
CUresult CUDAAPI cuModuleLoadData(CUmodule*, const void*) { return CUDA_ERROR_NOT_SUPPORTED; }
CUresult CUDAAPI cuModuleGetFunction(CUfunction*, CUmodule, const char*) { return CUDA_ERROR_NOT_SUPPORTED; }
CUresult CUDAAPI cuModuleUnload(CUmodule) { return CUDA_ERROR_NOT_SUPPORTED; }
CUresult CUDAAPI cuLaunchKernel(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                                unsigned int, unsigned int, CUstream, void**, void**) {
  return CUDA_ERROR_NOT_SUPPORTED;
}

}  // extern "C"
