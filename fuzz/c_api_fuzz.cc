// Fuzzes the C ABI's string and size arguments against a real broker: names
// of any bytes and length (NULs, over 127 bytes), shapes, strides, sizes and
// offsets of any value, for create, attach, stat, lookup and destroy.
// Properties beyond "no crash": nothing is ever truncated into another name
// (a created slot is found under exactly the name given), and a name the
// validator refuses is refused by every call.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "gpubroker/gpubroker.h"
#include "common/validate.h"

namespace {

gpb_client* g_client = nullptr;

// Reads fields off the front of the input.
struct Input {
  const uint8_t* p;
  size_t n;
  template <typename T>
  T Take() {
    T v{};
    size_t k = n < sizeof v ? n : sizeof v;
    std::memcpy(&v, p, k);
    p += k;
    n -= k;
    return v;
  }
  std::string Bytes(size_t max) {
    size_t k = Take<uint8_t>();
    k = k * 2 > max ? max : k * 2;  // up to 510 bytes: well past the 127-byte limit
    if (k > n) k = n;
    std::string s(reinterpret_cast<const char*>(p), k);
    p += k;
    n -= k;
    return s;
  }
};

void StartBroker() {
  std::string dir = "/tmp/gpbfuzz-capi-" + std::to_string(::getpid());
  ::mkdir(dir.c_str(), 0700);
  std::string socket = dir + "/s";
  pid_t pid = ::fork();
  if (pid == 0) {
    int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 2);
    ::execl(GPUBROKERD_PATH, GPUBROKERD_PATH, "--socket", socket.c_str(), "--registry",
            ("gpbfuzz-" + std::to_string(::getppid())).c_str(), "--default-backend", "host", "--max-host-bytes",
            "64MiB", "--capacity", "256", "--log-level", "off", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  for (int i = 0; i < 500 && g_client == nullptr; ++i) {
    if (gpb_connect(socket.c_str(), "c_api_fuzz", &g_client, nullptr) != GPB_OK) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // waiting for the broker's socket
    }
  }
  if (g_client == nullptr) std::abort();
  static pid_t broker = pid;
  static std::string socket_dir = dir, socket_path = socket;
  std::atexit([] {
    ::kill(broker, SIGKILL);
    ::unlink(socket_path.c_str());
    ::rmdir(socket_dir.c_str());
  });
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  StartBroker();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in{data, size};
  std::string name_bytes = in.Bytes(510);
  std::string base_bytes = in.Bytes(510);
  const char* name = name_bytes.c_str();  // what a C caller's string is: up to the first NUL
  const bool valid = gpubroker::ValidateName(name).ok();

  int64_t shape[GPB_MAX_DIMS], strides[GPB_MAX_DIMS];
  for (auto& s : shape) s = in.Take<int64_t>() % 4097;
  for (auto& s : strides) s = in.Take<int64_t>();
  gpb_create_args args{};
  // Mostly the right size; else any size up to a little past it (refused below it).
  args.struct_size = in.Take<uint8_t>() & 1 ? in.Take<uint32_t>() % (sizeof args + 8) : sizeof args;
  args.name = name;
  args.dtype = {in.Take<uint8_t>(), in.Take<uint8_t>(), in.Take<uint16_t>()};
  args.ndim = in.Take<int32_t>() % 10;
  args.shape = shape;
  args.strides = in.Take<uint8_t>() & 1 ? strides : nullptr;
  args.bytes = in.Take<uint64_t>();
  args.base = base_bytes.empty() ? nullptr : base_bytes.c_str();
  args.byte_offset = in.Take<uint64_t>();
  args.backend = in.Take<int32_t>() % 5;
  args.device = -1;
  args.mode = in.Take<uint32_t>();

  gpb_error err{};
  gpb_view* view = nullptr;
  gpb_slot_info info{};
  info.struct_size = sizeof info;
  int32_t rc = gpb_create(g_client, &args, (in.Take<uint8_t>() & 1) ? &view : nullptr, &info, &err);
  if (rc == GPB_OK) {
    if (!valid || args.struct_size < sizeof args) std::abort();  // invalid input was accepted
    if (std::strncmp(info.name, name, sizeof info.name) != 0) std::abort();  // stored under another name
    gpb_slot_info again{};
    again.struct_size = sizeof again;
    if (gpb_stat(g_client, name, &again, &err) != GPB_OK || std::strcmp(again.name, name) != 0) std::abort();
  } else if (err.message[0] == '\0') {
    std::abort();  // every refusal says why
  }
  gpb_view* attached = nullptr;
  if (gpb_attach(g_client, name, in.Take<uint8_t>() & 1, &attached, &err) == GPB_OK) {
    if (!valid) std::abort();
    if (gpb_view_info(attached, &info, &err) != GPB_OK) std::abort();
    if (std::strcmp(info.name, name) != 0) std::abort();
    gpb_view_release(attached);
  }
  if (gpb_lookup(g_client, name, &info, &err) == GPB_OK && (!valid || std::strcmp(info.name, name) != 0)) {
    std::abort();
  }
  if (view != nullptr) gpb_view_release(view);
  (void)gpb_destroy(g_client, name, &err);
  return 0;
}
