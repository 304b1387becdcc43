// The C ABI over the C++ client. Every entry point is noexcept and runs its
// body inside Guard, the one exception barrier: nothing thrown inside the
// library (std::bad_alloc included) unwinds into a C caller.
#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "gpubroker/client.hpp"
#include "gpubroker/gpubroker.h"
#include "client/src/batch_copy.h"
#include "client/src/dlpack.h"
#include "client/src/mapping.h"

using gpubroker::Status;

struct gpb_client {
  gpubroker::Client client;
};
struct gpb_view {
  gpubroker::View view;
};
struct gpb_writer {
  gpubroker::Writer writer;
};
struct gpb_reader {
  gpubroker::Reader reader;
};

struct gpb_copy_plan {
  gpubroker::CopyPlan plan;
};

namespace {

void CopyMessage(std::string_view text, gpb_error* err) noexcept {
  std::memset(err->message, 0, sizeof err->message);
  std::memcpy(err->message, text.data(), std::min(text.size(), sizeof err->message - 1));
}

int32_t Fail(const Status& s, gpb_error* err) noexcept {
  if (err != nullptr) {
    err->code = static_cast<int32_t>(s.code());
    CopyMessage(s.message(), err);
  }
  return static_cast<int32_t>(s.code());
}

// For the barrier's own failures: builds no std::string, so it cannot throw.
int32_t FailStatic(gpb_code code, const char* message, gpb_error* err) noexcept {
  if (err != nullptr) {
    err->code = code;
    CopyMessage(message, err);
  }
  return code;
}

int32_t Done(gpb_error* err) noexcept {
  if (err != nullptr) *err = gpb_error{};
  return GPB_OK;
}

// Runs `body` (returning a gpb_code); an exception becomes a code and a message.
template <typename Body>
int32_t Guard(gpb_error* err, Body&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return FailStatic(GPB_RESOURCE_EXHAUSTED, "out of memory in the client library", err);
  } catch (const std::exception& e) {
    int32_t rc = FailStatic(GPB_INTERNAL, "unexpected exception in the client library: ", err);
    if (err != nullptr) {
      size_t used = std::strlen(err->message);
      std::strncat(err->message, e.what(), sizeof err->message - 1 - used);
    }
    return rc;
  } catch (...) {
    return FailStatic(GPB_INTERNAL, "unexpected exception in the client library", err);
  }
}

bool NullArg(const void* p, const char* what, gpb_error* err) {
  if (p != nullptr) return false;
  Fail(gpubroker::InvalidArgument(std::string(what) + " is NULL"), err);
  return true;
}

// The sizes of the structs as GPB_ABI_VERSION 2 defined them. A later
// version may add fields at the end; callers built against version 2 keep
// passing these sizes, so they stay fixed numbers, not sizeof.
constexpr uint32_t kSlotInfoV2 = 384;
constexpr uint32_t kCreateArgsV2 = 88;
constexpr uint32_t kSlotInfoV3 = 400;
constexpr uint32_t kCreateArgsV3 = 96;
static_assert(sizeof(gpb_slot_info) == kSlotInfoV3 && sizeof(gpb_create_args) == kCreateArgsV3,
              "a public struct changed: bump GPB_ABI_VERSION and add the new size beside these");

// A caller's gpb_slot_info: struct_size must at least reach the fields it has.
bool BadOut(const gpb_slot_info* out, gpb_error* err) {
  if (NullArg(out, "out", err)) return true;
  if (out->struct_size >= offsetof(gpb_slot_info, name)) return false;
  Fail(gpubroker::InvalidArgument("gpb_slot_info.struct_size is " + std::to_string(out->struct_size) +
                                  ": set it to sizeof(gpb_slot_info)"),
       err);
  return true;
}

// Writes the slot into the caller's struct, no byte past its struct_size.
void Fill(const gpubroker::SlotInfo& s, gpb_slot_info* out) {
  gpb_slot_info full{};
  full.struct_size = kSlotInfoV3;
  std::strncpy(full.name, s.name.c_str(), sizeof full.name - 1);
  full.generation = s.generation;
  full.allocation_id = s.allocation_id;
  full.allocation_bytes = s.allocation_bytes;
  full.byte_offset = s.byte_offset;
  full.nbytes = s.nbytes;
  full.version = s.version;
  full.created_ns = s.created_ns;
  full.updated_ns = s.updated_ns;
  full.backend = static_cast<int32_t>(s.backend);
  full.device_type = s.device.type;
  full.device_ordinal = s.device.ordinal;
  std::memcpy(full.device_uuid, s.device.uuid.data(), sizeof full.device_uuid);
  full.dtype = {s.dtype.code, s.dtype.bits, s.dtype.lanes};
  full.ndim = static_cast<int32_t>(s.shape.size());
  std::copy(s.shape.begin(), s.shape.end(), full.shape);
  std::copy(s.strides.begin(), s.strides.end(), full.strides);
  full.owner_uid = s.owner_uid;
  full.owner_gid = s.owner_gid;
  full.mode = s.mode;
  full.lease_count = s.lease_count;
  full.buffers = s.buffers;
  full.buffer_bytes = s.buffer_bytes;
  full.struct_size = std::min(out->struct_size, kSlotInfoV3);
  std::memcpy(out, &full, full.struct_size);
}

gpubroker::AttachMode Mode(int32_t read_only) {
  switch (read_only) {
    case GPB_ATTACH_READ_WRITE: return gpubroker::AttachMode::kReadWrite;
    case GPB_ATTACH_AS_ALLOWED: return gpubroker::AttachMode::kAsAllowed;
    default: return gpubroker::AttachMode::kReadOnly;  // GPB_ATTACH_READ_ONLY, and any other non-zero
  }
}

// The views for `names` into *views, all or none; GPB_OK or the code, with `err` filled.
int32_t AttachAll(gpb_client* client, const char* const* names, size_t count, int32_t read_only, const void* out,
                  std::vector<gpubroker::View>* views, gpb_error* err) {
  if (NullArg(client, "client", err) ||
      (count > 0 && (NullArg(names, "names", err) || NullArg(out, "out", err)))) {
    return GPB_INVALID_ARGUMENT;
  }
  std::vector<std::string_view> list;
  list.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    if (names[i] == nullptr) {
      return Fail(gpubroker::InvalidArgument("names[" + std::to_string(i) + "] is NULL"), err);
    }
    list.emplace_back(names[i]);
  }
  auto attached = client->client.AttachMany(list, Mode(read_only));
  if (!attached.ok()) return Fail(attached.status(), err);
  *views = std::move(attached).value();
  return GPB_OK;
}

int32_t InfoCall(gpubroker::Result<gpubroker::SlotInfo> r, gpb_slot_info* out, gpb_error* err) {
  if (!r.ok()) return Fail(r.status(), err);
  Fill(*r, out);
  return Done(err);
}

int32_t ListCall(gpubroker::Result<std::vector<gpubroker::SlotInfo>> slots, gpb_slot_info** out, size_t* count,
                 gpb_error* err) {
  if (!slots.ok()) return Fail(slots.status(), err);
  auto* array = static_cast<gpb_slot_info*>(std::calloc(slots->size() + 1, sizeof(gpb_slot_info)));
  if (array == nullptr) return Fail(gpubroker::ResourceExhausted("out of memory"), err);
  for (size_t i = 0; i < slots->size(); ++i) {
    array[i].struct_size = kSlotInfoV3;
    Fill((*slots)[i], &array[i]);
  }
  *out = array;
  *count = slots->size();
  return Done(err);
}

// One line per struct and per field, in the format gpb_abi_layout documents.
#define GPB_LAYOUT_STRUCT(S) out += "struct " #S " " + std::to_string(sizeof(S)) + "\n"
#define GPB_LAYOUT_FIELD(S, f) \
  out += "  " #f " " + std::to_string(offsetof(S, f)) + " " + std::to_string(sizeof(S::f)) + "\n"

std::string Layout() {
  std::string out;
  GPB_LAYOUT_STRUCT(gpb_error);
  GPB_LAYOUT_FIELD(gpb_error, code);
  GPB_LAYOUT_FIELD(gpb_error, message);
  GPB_LAYOUT_STRUCT(gpb_dtype);
  GPB_LAYOUT_FIELD(gpb_dtype, code);
  GPB_LAYOUT_FIELD(gpb_dtype, bits);
  GPB_LAYOUT_FIELD(gpb_dtype, lanes);
  GPB_LAYOUT_STRUCT(gpb_slot_info);
  GPB_LAYOUT_FIELD(gpb_slot_info, struct_size);
  GPB_LAYOUT_FIELD(gpb_slot_info, name);
  GPB_LAYOUT_FIELD(gpb_slot_info, generation);
  GPB_LAYOUT_FIELD(gpb_slot_info, allocation_id);
  GPB_LAYOUT_FIELD(gpb_slot_info, allocation_bytes);
  GPB_LAYOUT_FIELD(gpb_slot_info, byte_offset);
  GPB_LAYOUT_FIELD(gpb_slot_info, nbytes);
  GPB_LAYOUT_FIELD(gpb_slot_info, version);
  GPB_LAYOUT_FIELD(gpb_slot_info, created_ns);
  GPB_LAYOUT_FIELD(gpb_slot_info, updated_ns);
  GPB_LAYOUT_FIELD(gpb_slot_info, backend);
  GPB_LAYOUT_FIELD(gpb_slot_info, device_type);
  GPB_LAYOUT_FIELD(gpb_slot_info, device_ordinal);
  GPB_LAYOUT_FIELD(gpb_slot_info, device_uuid);
  GPB_LAYOUT_FIELD(gpb_slot_info, dtype);
  GPB_LAYOUT_FIELD(gpb_slot_info, ndim);
  GPB_LAYOUT_FIELD(gpb_slot_info, shape);
  GPB_LAYOUT_FIELD(gpb_slot_info, strides);
  GPB_LAYOUT_FIELD(gpb_slot_info, owner_uid);
  GPB_LAYOUT_FIELD(gpb_slot_info, owner_gid);
  GPB_LAYOUT_FIELD(gpb_slot_info, mode);
  GPB_LAYOUT_FIELD(gpb_slot_info, lease_count);
  GPB_LAYOUT_FIELD(gpb_slot_info, buffers);
  GPB_LAYOUT_FIELD(gpb_slot_info, reserved);
  GPB_LAYOUT_FIELD(gpb_slot_info, buffer_bytes);
  GPB_LAYOUT_STRUCT(gpb_create_args);
  GPB_LAYOUT_FIELD(gpb_create_args, struct_size);
  GPB_LAYOUT_FIELD(gpb_create_args, name);
  GPB_LAYOUT_FIELD(gpb_create_args, dtype);
  GPB_LAYOUT_FIELD(gpb_create_args, ndim);
  GPB_LAYOUT_FIELD(gpb_create_args, shape);
  GPB_LAYOUT_FIELD(gpb_create_args, strides);
  GPB_LAYOUT_FIELD(gpb_create_args, bytes);
  GPB_LAYOUT_FIELD(gpb_create_args, base);
  GPB_LAYOUT_FIELD(gpb_create_args, byte_offset);
  GPB_LAYOUT_FIELD(gpb_create_args, backend);
  GPB_LAYOUT_FIELD(gpb_create_args, device);
  GPB_LAYOUT_FIELD(gpb_create_args, device_uuid);
  GPB_LAYOUT_FIELD(gpb_create_args, mode);
  GPB_LAYOUT_FIELD(gpb_create_args, buffers);
  GPB_LAYOUT_FIELD(gpb_create_args, flags);
  GPB_LAYOUT_STRUCT(gpb_acquired);
  GPB_LAYOUT_FIELD(gpb_acquired, version);
  GPB_LAYOUT_FIELD(gpb_acquired, committed_ns);
  GPB_LAYOUT_FIELD(gpb_acquired, buffer);
  GPB_LAYOUT_FIELD(gpb_acquired, writing);
  GPB_LAYOUT_STRUCT(gpb_copy);
  GPB_LAYOUT_FIELD(gpb_copy, src);
  GPB_LAYOUT_FIELD(gpb_copy, dst);
  GPB_LAYOUT_FIELD(gpb_copy, bytes);
  return out;
}

// Built once and kept for the process's life (a static pointer, so leak
// checkers see it reachable); "" if even that allocation failed.
const char* StaticText(const std::string* text) noexcept { return text != nullptr ? text->c_str() : ""; }

template <typename Make>
const std::string* MakeStatic(Make make) noexcept {
  try {
    return new std::string(make());
  } catch (...) {
    return nullptr;
  }
}

}  // namespace

extern "C" {

uint32_t gpb_abi_version(void) noexcept { return GPB_ABI_VERSION; }

const char* gpb_abi_layout(void) noexcept {
  static const std::string* layout = MakeStatic(Layout);
  return StaticText(layout);
}

const char* gpb_code_name(int32_t code) noexcept {
  if (code < 0 || code > GPB_BUSY) return "unknown";
  return gpubroker::CodeName(static_cast<gpubroker::Code>(code)).data();
}

const char* gpb_default_socket_path(void) noexcept {
  // Worked out on each call (whether the user's own broker runs decides it);
  // each distinct answer is kept for the life of the process, so a pointer
  // once returned stays valid, in any thread.
  static std::mutex mu;
  static std::set<std::string>* seen = new std::set<std::string>();
  try {
    std::string path = gpubroker::DefaultSocketPath();
    std::lock_guard<std::mutex> lock(mu);
    return seen->insert(std::move(path)).first->c_str();
  } catch (...) {
    return "";
  }
}

int32_t gpb_parse_dtype(const char* text, gpb_dtype* out, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(text, "text", err) || NullArg(out, "out", err)) return int32_t{GPB_INVALID_ARGUMENT};
    auto d = gpubroker::ParseDType(text);
    if (!d.ok()) return Fail(d.status(), err);
    *out = {d->code, d->bits, d->lanes};
    return Done(err);
  });
}

int32_t gpb_connect(const char* socket_path, const char* client_name, gpb_client** out, gpb_error* err) noexcept {
  return gpb_connect_with(socket_path, client_name, -1, -1, out, err);
}

int32_t gpb_connect_with(const char* socket_path, const char* client_name, int32_t reply_timeout_ms,
                         int32_t reconnect_timeout_ms, gpb_client** out, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(out, "out", err)) return int32_t{GPB_INVALID_ARGUMENT};
    gpubroker::ConnectOptions options;
    if (socket_path != nullptr && *socket_path != '\0') options.socket_path = socket_path;
    if (client_name != nullptr) options.client_name = client_name;
    if (reply_timeout_ms < -1 || reconnect_timeout_ms < -1) {
      return Fail(gpubroker::InvalidArgument("timeouts are milliseconds, 0 or more (-1: the default)"), err);
    }
    if (reply_timeout_ms >= 0) options.reply_timeout_ms = reply_timeout_ms;
    if (reconnect_timeout_ms >= 0) options.reconnect_timeout_ms = reconnect_timeout_ms;
    auto c = gpubroker::Client::Connect(options);
    if (!c.ok()) return Fail(c.status(), err);
    *out = new gpb_client{std::move(c).value()};
    return Done(err);
  });
}

void gpb_client_release(gpb_client* client) noexcept { delete client; }

int32_t gpb_create(gpb_client* client, const gpb_create_args* args, gpb_view** out_view, gpb_slot_info* out_info,
                   gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(client, "client", err) || NullArg(args, "args", err)) return int32_t{GPB_INVALID_ARGUMENT};
    if (args->struct_size < kCreateArgsV2) {
      return Fail(gpubroker::InvalidArgument("gpb_create_args.struct_size is " + std::to_string(args->struct_size) +
                                             ": set it to sizeof(gpb_create_args)"),
                  err);
    }
    if (NullArg(args->name, "args->name", err) || (out_info != nullptr && BadOut(out_info, err))) {
      return int32_t{GPB_INVALID_ARGUMENT};
    }
    if (args->ndim < 0 || args->ndim > GPB_MAX_DIMS || (args->ndim > 0 && args->shape == nullptr)) {
      return Fail(gpubroker::InvalidArgument("ndim must be 0..8 with a shape array"), err);
    }
    gpubroker::CreateOptions o;
    o.name = args->name;
    o.dtype = {args->dtype.code, args->dtype.bits, args->dtype.lanes};
    o.shape.assign(args->shape, args->shape + args->ndim);
    if (args->strides != nullptr) o.strides.assign(args->strides, args->strides + args->ndim);
    o.bytes = args->bytes;
    if (args->base != nullptr) o.base = args->base;
    o.byte_offset = args->byte_offset;
    if (args->backend != GPB_BACKEND_DEFAULT) o.backend = static_cast<gpubroker::BackendKind>(args->backend);
    o.device = args->device;
    if (args->device_uuid != nullptr) {
      gpubroker::DeviceUuid u;
      std::memcpy(u.data(), args->device_uuid, u.size());
      o.device_uuid = u;
    }
    o.mode = args->mode;
    if (args->struct_size >= kCreateArgsV3) {
      o.buffers = args->buffers;
      if ((args->flags & ~GPB_CREATE_EXIST_OK) != 0) {
        return Fail(gpubroker::InvalidArgument("gpb_create_args.flags has unknown bits " + std::to_string(args->flags)),
                    err);
      }
      o.exist_ok = (args->flags & GPB_CREATE_EXIST_OK) != 0;
    }
    if (out_view == nullptr) {
      auto info = client->client.Create(o);
      if (!info.ok()) return Fail(info.status(), err);
      if (out_info != nullptr) Fill(*info, out_info);
      return Done(err);
    }
    auto view = client->client.CreateAndAttach(o);
    if (!view.ok()) return Fail(view.status(), err);
    if (out_info != nullptr) Fill(view->slot(), out_info);
    *out_view = new gpb_view{std::move(view).value()};
    return Done(err);
  });
}

int32_t gpb_attach(gpb_client* client, const char* name, int32_t read_only, gpb_view** out,
                   gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(client, "client", err) || NullArg(name, "name", err) || NullArg(out, "out", err)) {
      return int32_t{GPB_INVALID_ARGUMENT};
    }
    auto view = client->client.Attach(name, Mode(read_only));
    if (!view.ok()) return Fail(view.status(), err);
    *out = new gpb_view{std::move(view).value()};
    return Done(err);
  });
}

int32_t gpb_attach_many(gpb_client* client, const char* const* names, size_t count, int32_t read_only,
                        gpb_view** out, gpb_error* err) noexcept {
  return Guard(err, [&] {
    std::vector<gpubroker::View> views;
    if (int32_t rc = AttachAll(client, names, count, read_only, out, &views, err); rc != GPB_OK) return rc;
    // Handles first, published only once every one exists: all or none.
    std::vector<gpb_view*> made;
    made.reserve(count);
    try {
      for (size_t i = 0; i < count; ++i) made.push_back(new gpb_view{std::move(views[i])});
    } catch (...) {
      for (gpb_view* v : made) delete v;
      throw;
    }
    std::copy(made.begin(), made.end(), out);
    return Done(err);
  });
}

int32_t gpb_destroy(gpb_client* client, const char* name, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(client, "client", err) || NullArg(name, "name", err)) return int32_t{GPB_INVALID_ARGUMENT};
    Status s = client->client.Destroy(name);
    return s.ok() ? Done(err) : Fail(s, err);
  });
}

int32_t gpb_stat(gpb_client* client, const char* name, gpb_slot_info* out, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(client, "client", err) || NullArg(name, "name", err) || BadOut(out, err)) {
      return int32_t{GPB_INVALID_ARGUMENT};
    }
    return InfoCall(client->client.Stat(name), out, err);
  });
}

int32_t gpb_lookup(gpb_client* client, const char* name, gpb_slot_info* out, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(client, "client", err) || NullArg(name, "name", err) || BadOut(out, err)) {
      return int32_t{GPB_INVALID_ARGUMENT};
    }
    return InfoCall(client->client.Lookup(name), out, err);
  });
}

int32_t gpb_list(gpb_client* client, gpb_slot_info** out, size_t* count, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(client, "client", err) || NullArg(out, "out", err) || NullArg(count, "count", err)) {
      return int32_t{GPB_INVALID_ARGUMENT};
    }
    return ListCall(client->client.List(), out, count, err);
  });
}

int32_t gpb_list_registry(gpb_client* client, gpb_slot_info** out, size_t* count, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(client, "client", err) || NullArg(out, "out", err) || NullArg(count, "count", err)) {
      return int32_t{GPB_INVALID_ARGUMENT};
    }
    return ListCall(client->client.ListRegistry(), out, count, err);
  });
}

void gpb_free(void* p) noexcept { std::free(p); }

int32_t gpb_device_uuid(int32_t ordinal, uint8_t* out_uuid, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(out_uuid, "out_uuid", err)) return int32_t{GPB_INVALID_ARGUMENT};
    auto uuid = gpubroker::LocalDeviceUuid(ordinal);
    if (!uuid.ok()) return Fail(uuid.status(), err);
    std::memcpy(out_uuid, uuid->data(), uuid->size());
    return Done(err);
  });
}

void* gpb_view_data(const gpb_view* view) noexcept { return view != nullptr ? view->view.data() : nullptr; }
int32_t gpb_view_writable(const gpb_view* view) noexcept { return view != nullptr && view->view.writable(); }

int32_t gpb_view_info(const gpb_view* view, gpb_slot_info* out, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(view, "view", err) || BadOut(out, err)) return int32_t{GPB_INVALID_ARGUMENT};
    Fill(view->view.slot(), out);
    return Done(err);
  });
}

gpb_view* gpb_view_retain(const gpb_view* view) noexcept {
  if (view == nullptr) return nullptr;
  try {
    return new gpb_view{view->view};  // copying the View allocates too
  } catch (...) {
    return nullptr;
  }
}

void gpb_view_release(gpb_view* view) noexcept { delete view; }

int32_t gpb_view_dlpack(const gpb_view* view, int32_t versioned, void** out, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(view, "view", err) || NullArg(out, "out", err)) return int32_t{GPB_INVALID_ARGUMENT};
    auto managed = gpubroker::ExportDlpack(view->view, versioned != 0);
    if (!managed.ok()) return Fail(managed.status(), err);
    *out = *managed;
    return Done(err);
  });
}

int32_t gpb_attach_many_dlpack(gpb_client* client, const char* const* names, size_t count, int32_t read_only,
                               int32_t versioned, void** out, gpb_error* err) noexcept {
  return Guard(err, [&] {
    std::vector<gpubroker::View> views;
    if (int32_t rc = AttachAll(client, names, count, read_only, out, &views, err); rc != GPB_OK) return rc;
    size_t made = 0;
    auto unwind = [&] {
      while (made > 0) gpubroker::DeleteDlpack(out[--made], versioned != 0);
    };
    try {
      for (; made < count; ++made) {
        auto managed = gpubroker::ExportDlpack(std::move(views[made]), versioned != 0);
        if (!managed.ok()) {
          unwind();
          return Fail(managed.status(), err);
        }
        out[made] = *managed;
      }
    } catch (...) {
      unwind();  // all or none, also when an allocation fails
      throw;
    }
    return Done(err);
  });
}

void gpb_dlpack_delete(void* managed, int32_t versioned) noexcept { gpubroker::DeleteDlpack(managed, versioned != 0); }

}  // extern "C"

void* gpb_view_data_in(const gpb_view* view, uint32_t buffer) noexcept {
  return view != nullptr ? view->view.data(buffer) : nullptr;
}

int32_t gpb_view_dlpack_in(const gpb_view* view, uint32_t buffer, int32_t versioned, void** out,
                           gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(view, "view", err) || NullArg(out, "out", err)) return int32_t{GPB_INVALID_ARGUMENT};
    auto managed = gpubroker::ExportDlpack(view->view, versioned != 0, buffer);
    if (!managed.ok()) return Fail(managed.status(), err);
    *out = *managed;
    return Done(err);
  });
}

int32_t gpb_writer_open(gpb_client* client, const char* name, gpb_writer** out, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(client, "client", err) || NullArg(name, "name", err) || NullArg(out, "out", err)) {
      return int32_t{GPB_INVALID_ARGUMENT};
    }
    auto w = client->client.OpenWriter(name);
    if (!w.ok()) return Fail(w.status(), err);
    *out = new gpb_writer{std::move(w).value()};
    return Done(err);
  });
}

void gpb_writer_close(gpb_writer* writer) noexcept {
  try {
    delete writer;
  } catch (...) {  // the abort it sends allocates
  }
}

int32_t gpb_writer_begin(gpb_writer* writer, int32_t wait_ms, uint32_t* out_buffer, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(writer, "writer", err) || NullArg(out_buffer, "out_buffer", err)) return int32_t{GPB_INVALID_ARGUMENT};
    auto b = writer->writer.Begin(wait_ms);
    if (!b.ok()) return Fail(b.status(), err);
    *out_buffer = *b;
    return Done(err);
  });
}

int32_t gpb_writer_commit(gpb_writer* writer, void* stream, uint64_t* out_version, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(writer, "writer", err)) return int32_t{GPB_INVALID_ARGUMENT};
    auto v = writer->writer.Commit(stream);
    if (!v.ok()) return Fail(v.status(), err);
    if (out_version != nullptr) *out_version = *v;
    return Done(err);
  });
}

int32_t gpb_writer_abort(gpb_writer* writer, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(writer, "writer", err)) return int32_t{GPB_INVALID_ARGUMENT};
    if (Status s = writer->writer.Abort(); !s.ok()) return Fail(s, err);
    return Done(err);
  });
}

int32_t gpb_reader_open(gpb_client* client, const char* name, gpb_reader** out, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(client, "client", err) || NullArg(name, "name", err) || NullArg(out, "out", err)) {
      return int32_t{GPB_INVALID_ARGUMENT};
    }
    auto r = client->client.OpenReader(name);
    if (!r.ok()) return Fail(r.status(), err);
    *out = new gpb_reader{std::move(r).value()};
    return Done(err);
  });
}

void gpb_reader_close(gpb_reader* reader) noexcept {
  try {
    delete reader;
  } catch (...) {  // the release it sends allocates
  }
}

int32_t gpb_reader_latest(gpb_reader* reader, uint64_t* out_version, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(reader, "reader", err) || NullArg(out_version, "out_version", err)) return int32_t{GPB_INVALID_ARGUMENT};
    auto v = reader->reader.Latest();
    if (!v.ok()) return Fail(v.status(), err);
    *out_version = *v;
    return Done(err);
  });
}

int32_t gpb_reader_wait(gpb_reader* reader, uint64_t after, int32_t timeout_ms, uint64_t* out_version,
                        gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(reader, "reader", err)) return int32_t{GPB_INVALID_ARGUMENT};
    auto v = reader->reader.Wait(after, timeout_ms);
    if (!v.ok()) return Fail(v.status(), err);
    if (out_version != nullptr) *out_version = *v;
    return Done(err);
  });
}

int32_t gpb_reader_acquire(gpb_reader* reader, void* stream, gpb_acquired* out, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(reader, "reader", err) || NullArg(out, "out", err)) return int32_t{GPB_INVALID_ARGUMENT};
    auto a = reader->reader.Acquire(stream);
    if (!a.ok()) return Fail(a.status(), err);
    *out = gpb_acquired{a->version, a->committed_ns, a->buffer, a->writing ? 1 : 0};
    return Done(err);
  });
}

int32_t gpb_reader_release(gpb_reader* reader, void* stream, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(reader, "reader", err)) return int32_t{GPB_INVALID_ARGUMENT};
    if (Status s = reader->reader.Release(stream); !s.ok()) return Fail(s, err);
    return Done(err);
  });
}

int32_t gpb_reader_unchanged(gpb_reader* reader, int32_t* out, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(reader, "reader", err) || NullArg(out, "out", err)) return int32_t{GPB_INVALID_ARGUMENT};
    auto u = reader->reader.Unchanged();
    if (!u.ok()) return Fail(u.status(), err);
    *out = *u ? 1 : 0;
    return Done(err);
  });
}

int32_t gpb_copy_plan_create(int32_t device, const gpb_copy* copies, size_t count, gpb_copy_plan** out,
                             gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(out, "out", err) || (count > 0 && NullArg(copies, "copies", err))) return int32_t{GPB_INVALID_ARGUMENT};
    std::vector<gpubroker::CopySegment> segments;
    segments.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      segments.push_back(gpubroker::CopySegment{reinterpret_cast<uint64_t>(copies[i].src),
                                                reinterpret_cast<uint64_t>(copies[i].dst), copies[i].bytes});
    }
    auto plan = gpubroker::CopyPlan::Make(device, segments);
    if (!plan.ok()) return Fail(plan.status(), err);
    *out = new gpb_copy_plan{std::move(*plan)};
    return Done(err);
  });
}

int32_t gpb_copy_plan_run(gpb_copy_plan* plan, void* stream, gpb_error* err) noexcept {
  return Guard(err, [&] {
    if (NullArg(plan, "plan", err)) return int32_t{GPB_INVALID_ARGUMENT};
    if (gpubroker::Status s = plan->plan.Run(stream); !s.ok()) return Fail(s, err);
    return Done(err);
  });
}

void gpb_copy_plan_destroy(gpb_copy_plan* plan) noexcept { delete plan; }
