// The C ABI over the C++ client.
#include <cstdlib>
#include <cstring>
#include <new>

#include "gpubroker/client.hpp"
#include "gpubroker/gpubroker.h"
#include "mapping.h"

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

bool NullArg(const void* p, const char* what, gpb_error* err) {
  if (p != nullptr) return false;
  Fail(gpubroker::InvalidArgument(std::string(what) + " is NULL"), err);
  return true;
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

int32_t gpb_list(gpb_client* client, gpb_slot_info** out, size_t* count, gpb_error* err) {
  if (NullArg(client, "client", err) || NullArg(out, "out", err) || NullArg(count, "count", err)) {
    return GPB_INVALID_ARGUMENT;
  }
  auto slots = client->client.List();
  if (!slots.ok()) return Fail(slots.status(), err);
  auto* array = static_cast<gpb_slot_info*>(std::calloc(slots->size() + 1, sizeof(gpb_slot_info)));
  if (array == nullptr) return Fail(gpubroker::ResourceExhausted("out of memory"), err);
  for (size_t i = 0; i < slots->size(); ++i) Fill((*slots)[i], &array[i]);
  *out = array;
  *count = slots->size();
  return Done(Status::Ok(), err);
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

}  // extern "C"
