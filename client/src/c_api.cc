// The C ABI over the C++ client.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string_view>
#include <type_traits>
#include <vector>

#include "gpubroker/client.hpp"
#include "gpubroker/gpubroker.h"
#include "client/src/mapping.h"

using gpubroker::Status;

struct gpb_client {
  gpubroker::Client client;
};
struct gpb_view {
  gpubroker::View view;
};

namespace {

int32_t Fail(const Status& s, gpb_error* err) {
  if (err != nullptr) {
    err->code = static_cast<int32_t>(s.code());
    std::memset(err->message, 0, sizeof err->message);
    std::strncpy(err->message, s.message().c_str(), sizeof err->message - 1);
  }
  return static_cast<int32_t>(s.code());
}

int32_t Done(const Status& s, gpb_error* err) {
  if (s.ok()) {
    if (err != nullptr) *err = gpb_error{};
    return GPB_OK;
  }
  return Fail(s, err);
}

void Fill(const gpubroker::SlotInfo& s, gpb_slot_info* out) {
  *out = gpb_slot_info{};
  std::strncpy(out->name, s.name.c_str(), sizeof out->name - 1);
  out->generation = s.generation;
  out->allocation_id = s.allocation_id;
  out->allocation_bytes = s.allocation_bytes;
  out->byte_offset = s.byte_offset;
  out->nbytes = s.nbytes;
  out->version = s.version;
  out->created_ns = s.created_ns;
  out->updated_ns = s.updated_ns;
  out->backend = static_cast<int32_t>(s.backend);
  out->device_type = s.device.type;
  out->device_ordinal = s.device.ordinal;
  std::memcpy(out->device_uuid, s.device.uuid.data(), sizeof out->device_uuid);
  out->dtype = {s.dtype.code, s.dtype.bits, s.dtype.lanes};
  out->ndim = static_cast<int32_t>(s.shape.size());
  std::copy(s.shape.begin(), s.shape.end(), out->shape);
  std::copy(s.strides.begin(), s.strides.end(), out->strides);
  out->owner_uid = s.owner_uid;
  out->owner_gid = s.owner_gid;
  out->mode = s.mode;
  out->lease_count = s.lease_count;
}

// The DLPack ABI (dlpack.h, v1.0): stable C structs, restated here.
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};
struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned*);
  uint64_t flags;
  DLTensor dl_tensor;
};
constexpr int32_t kDLCPU = 1;
constexpr int32_t kDLCUDA = 2;
constexpr uint64_t kDLFlagReadOnly = 1;
static_assert(sizeof(DLTensor) == 48 && sizeof(DLManagedTensor) == 64 && sizeof(DLManagedTensorVersioned) == 80);

// One allocation per exported tensor: the managed struct, its shape and
// strides, and the view reference it keeps.
template <typename Managed>
struct Exported {
  Managed managed{};
  int64_t shape[GPB_MAX_DIMS] = {};
  int64_t strides[GPB_MAX_DIMS] = {};
  gpubroker::View view;

  static void Delete(Managed* m) { delete static_cast<Exported*>(m->manager_ctx); }

  static Managed* Make(gpubroker::View view) {
    auto* e = new (std::nothrow) Exported{{}, {}, {}, std::move(view)};
    if (e == nullptr) return nullptr;
    const gpubroker::View& v = e->view;
    const gpubroker::SlotInfo& s = v.slot();
    std::copy(s.shape.begin(), s.shape.end(), e->shape);
    std::copy(s.strides.begin(), s.strides.end(), e->strides);
    DLTensor& t = e->managed.dl_tensor;
    t.data = v.data();
    t.device = s.device.type == gpubroker::Device::kCuda ? DLDevice{kDLCUDA, s.device.ordinal} : DLDevice{kDLCPU, 0};
    t.ndim = static_cast<int32_t>(s.shape.size());
    t.dtype = {s.dtype.code, s.dtype.bits, s.dtype.lanes};
    t.shape = e->shape;
    t.strides = e->strides;
    e->managed.manager_ctx = e;
    e->managed.deleter = &Delete;
    if constexpr (std::is_same_v<Managed, DLManagedTensorVersioned>) {
      e->managed.version = {1, 0};
      e->managed.flags = v.writable() ? 0 : kDLFlagReadOnly;
    }
    return &e->managed;
  }
};

bool NullArg(const void* p, const char* what, gpb_error* err) {
  if (p != nullptr) return false;
  Fail(gpubroker::InvalidArgument(std::string(what) + " is NULL"), err);
  return true;
}

// A DLPack tensor over the view (see gpb_view_dlpack), or the reason there is none.
gpubroker::Result<void*> Export(gpubroker::View view, int32_t versioned) {
  const gpubroker::SlotInfo& s = view.slot();
  if (s.device.type == gpubroker::Device::kCuda && s.device.ordinal < 0) {
    return gpubroker::NotFound("slot '" + s.name + "' is on a CUDA device this process does not see");
  }
  void* managed = versioned ? static_cast<void*>(Exported<DLManagedTensorVersioned>::Make(std::move(view)))
                            : static_cast<void*>(Exported<DLManagedTensor>::Make(std::move(view)));
  if (managed == nullptr) return gpubroker::ResourceExhausted("out of memory");
  return managed;
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
  auto attached = client->client.AttachMany(list, read_only ? gpubroker::AttachMode::kReadOnly
                                                            : gpubroker::AttachMode::kReadWrite);
  if (!attached.ok()) return Fail(attached.status(), err);
  *views = std::move(attached).value();
  return GPB_OK;
}

}  // namespace

extern "C" {

const char* gpb_code_name(int32_t code) {
  if (code < 0 || code > GPB_INTERNAL) return "unknown";
  return gpubroker::CodeName(static_cast<gpubroker::Code>(code)).data();
}

const char* gpb_default_socket_path(void) {
  static const std::string path = gpubroker::DefaultSocketPath();
  return path.c_str();
}

int32_t gpb_parse_dtype(const char* text, gpb_dtype* out, gpb_error* err) {
  if (NullArg(text, "text", err) || NullArg(out, "out", err)) return GPB_INVALID_ARGUMENT;
  auto d = gpubroker::ParseDType(text);
  if (!d.ok()) return Fail(d.status(), err);
  *out = {d->code, d->bits, d->lanes};
  return Done(Status::Ok(), err);
}

int32_t gpb_connect(const char* socket_path, const char* client_name, gpb_client** out,
                    gpb_error* err) {
  if (NullArg(out, "out", err)) return GPB_INVALID_ARGUMENT;
  gpubroker::ConnectOptions options;
  if (socket_path != nullptr && *socket_path != '\0') options.socket_path = socket_path;
  if (client_name != nullptr) options.client_name = client_name;
  auto c = gpubroker::Client::Connect(options);
  if (!c.ok()) return Fail(c.status(), err);
  *out = new (std::nothrow) gpb_client{std::move(c).value()};
  if (*out == nullptr) return Fail(gpubroker::ResourceExhausted("out of memory"), err);
  return Done(Status::Ok(), err);
}

void gpb_client_release(gpb_client* client) { delete client; }

int32_t gpb_create(gpb_client* client, const gpb_create_args* args, gpb_view** out_view,
                   gpb_slot_info* out_info, gpb_error* err) {
  if (NullArg(client, "client", err) || NullArg(args, "args", err) || NullArg(args->name, "args->name", err)) {
    return GPB_INVALID_ARGUMENT;
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
  if (out_view == nullptr) {
    auto info = client->client.Create(o);
    if (!info.ok()) return Fail(info.status(), err);
    if (out_info != nullptr) Fill(*info, out_info);
    return Done(Status::Ok(), err);
  }
  auto view = client->client.CreateAndAttach(o);
  if (!view.ok()) return Fail(view.status(), err);
  if (out_info != nullptr) Fill(view->slot(), out_info);
  *out_view = new gpb_view{std::move(view).value()};
  return Done(Status::Ok(), err);
}

int32_t gpb_attach(gpb_client* client, const char* name, int32_t read_only, gpb_view** out,
                   gpb_error* err) {
  if (NullArg(client, "client", err) || NullArg(name, "name", err) || NullArg(out, "out", err)) {
    return GPB_INVALID_ARGUMENT;
  }
  auto view = client->client.Attach(name, read_only ? gpubroker::AttachMode::kReadOnly
                                                    : gpubroker::AttachMode::kReadWrite);
  if (!view.ok()) return Fail(view.status(), err);
  *out = new gpb_view{std::move(view).value()};
  return Done(Status::Ok(), err);
}

int32_t gpb_attach_many(gpb_client* client, const char* const* names, size_t count, int32_t read_only,
                        gpb_view** out, gpb_error* err) {
  std::vector<gpubroker::View> views;
  if (int32_t rc = AttachAll(client, names, count, read_only, out, &views, err); rc != GPB_OK) return rc;
  for (size_t i = 0; i < count; ++i) out[i] = new gpb_view{std::move(views[i])};
  return Done(Status::Ok(), err);
}

int32_t gpb_destroy(gpb_client* client, const char* name, gpb_error* err) {
  if (NullArg(client, "client", err) || NullArg(name, "name", err)) return GPB_INVALID_ARGUMENT;
  return Done(client->client.Destroy(name), err);
}

static int32_t InfoCall(gpubroker::Result<gpubroker::SlotInfo> r, gpb_slot_info* out, gpb_error* err) {
  if (!r.ok()) return Fail(r.status(), err);
  Fill(*r, out);
  return Done(Status::Ok(), err);
}

int32_t gpb_stat(gpb_client* client, const char* name, gpb_slot_info* out, gpb_error* err) {
  if (NullArg(client, "client", err) || NullArg(name, "name", err) || NullArg(out, "out", err)) {
    return GPB_INVALID_ARGUMENT;
  }
  return InfoCall(client->client.Stat(name), out, err);
}

int32_t gpb_lookup(gpb_client* client, const char* name, gpb_slot_info* out, gpb_error* err) {
  if (NullArg(client, "client", err) || NullArg(name, "name", err) || NullArg(out, "out", err)) {
    return GPB_INVALID_ARGUMENT;
  }
  return InfoCall(client->client.Lookup(name), out, err);
}

static int32_t ListCall(gpubroker::Result<std::vector<gpubroker::SlotInfo>> slots, gpb_slot_info** out,
                        size_t* count, gpb_error* err) {
  if (!slots.ok()) return Fail(slots.status(), err);
  auto* array = static_cast<gpb_slot_info*>(std::calloc(slots->size() + 1, sizeof(gpb_slot_info)));
  if (array == nullptr) return Fail(gpubroker::ResourceExhausted("out of memory"), err);
  for (size_t i = 0; i < slots->size(); ++i) Fill((*slots)[i], &array[i]);
  *out = array;
  *count = slots->size();
  return Done(Status::Ok(), err);
}

int32_t gpb_list(gpb_client* client, gpb_slot_info** out, size_t* count, gpb_error* err) {
  if (NullArg(client, "client", err) || NullArg(out, "out", err) || NullArg(count, "count", err)) {
    return GPB_INVALID_ARGUMENT;
  }
  return ListCall(client->client.List(), out, count, err);
}

int32_t gpb_list_registry(gpb_client* client, gpb_slot_info** out, size_t* count, gpb_error* err) {
  if (NullArg(client, "client", err) || NullArg(out, "out", err) || NullArg(count, "count", err)) {
    return GPB_INVALID_ARGUMENT;
  }
  return ListCall(client->client.ListRegistry(), out, count, err);
}

void gpb_free(void* p) { std::free(p); }

int32_t gpb_device_uuid(int32_t ordinal, uint8_t* out_uuid, gpb_error* err) {
  if (NullArg(out_uuid, "out_uuid", err)) return GPB_INVALID_ARGUMENT;
  auto uuid = gpubroker::LocalDeviceUuid(ordinal);
  if (!uuid.ok()) return Fail(uuid.status(), err);
  std::memcpy(out_uuid, uuid->data(), uuid->size());
  return Done(Status::Ok(), err);
}

void* gpb_view_data(const gpb_view* view) { return view != nullptr ? view->view.data() : nullptr; }
int32_t gpb_view_writable(const gpb_view* view) { return view != nullptr && view->view.writable(); }

void gpb_view_info(const gpb_view* view, gpb_slot_info* out) {
  if (view != nullptr && out != nullptr) Fill(view->view.slot(), out);
}

gpb_view* gpb_view_retain(const gpb_view* view) {
  return view != nullptr ? new (std::nothrow) gpb_view{view->view} : nullptr;
}

void gpb_view_release(gpb_view* view) { delete view; }

int32_t gpb_view_dlpack(const gpb_view* view, int32_t versioned, void** out, gpb_error* err) {
  if (NullArg(view, "view", err) || NullArg(out, "out", err)) return GPB_INVALID_ARGUMENT;
  auto managed = Export(view->view, versioned);
  if (!managed.ok()) return Fail(managed.status(), err);
  *out = *managed;
  return Done(Status::Ok(), err);
}

int32_t gpb_attach_many_dlpack(gpb_client* client, const char* const* names, size_t count, int32_t read_only,
                               int32_t versioned, void** out, gpb_error* err) {
  std::vector<gpubroker::View> views;
  if (int32_t rc = AttachAll(client, names, count, read_only, out, &views, err); rc != GPB_OK) return rc;
  for (size_t i = 0; i < count; ++i) {
    auto managed = Export(std::move(views[i]), versioned);
    if (!managed.ok()) {
      while (i > 0) gpb_dlpack_delete(out[--i], versioned);
      return Fail(managed.status(), err);
    }
    out[i] = *managed;
  }
  return Done(Status::Ok(), err);
}

void gpb_dlpack_delete(void* managed, int32_t versioned) {
  if (managed == nullptr) return;
  if (versioned) {
    auto* m = static_cast<DLManagedTensorVersioned*>(managed);
    m->deleter(m);
  } else {
    auto* m = static_cast<DLManagedTensor*>(managed);
    m->deleter(m);
  }
}

}  // extern "C"
