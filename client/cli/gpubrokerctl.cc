// gpubrokerctl: inspect and steer a running gpubrokerd.
// Exit statuses are part of the interface; docs/cli.md lists them.
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>

#include "gpubroker/client.hpp"
#include "client/cli/output.h"
#include "common/parse.h"
#include "common/validate.h"

namespace gpubroker::ctl {
namespace {

enum Exit : int {
  kExitOk = 0,
  kExitFailure = 1,
  kExitUsage = 2,
  kExitUnavailable = 3,
  kExitNotFound = 4,
  kExitPermission = 5,
  kExitExists = 6,
  kExitExhausted = 7,
  kExitInvalid = 8,
};

int ExitFor(const Status& s) {
  switch (s.code()) {
    case Code::kOk: return kExitOk;
    case Code::kUnavailable: return kExitUnavailable;
    case Code::kNotFound: return kExitNotFound;
    case Code::kPermissionDenied: return kExitPermission;
    case Code::kAlreadyExists: return kExitExists;
    case Code::kResourceExhausted: return kExitExhausted;
    case Code::kInvalidArgument: return kExitInvalid;
    default: return kExitFailure;
  }
}

int Report(const Status& s) {
  std::cerr << "gpubrokerctl: " << s.ToString() << "\n";
  return ExitFor(s);
}

std::string SlotRowDevice(const SlotInfo& s) {
  return s.device.type == Device::kCpu ? "cpu" : "cuda:" + std::to_string(s.device.ordinal);
}

int Ls(Client& c, bool json) {
  auto slots = c.List();
  if (!slots.ok()) return Report(slots.status());
  if (json) {
    std::cout << "[";
    for (size_t i = 0; i < slots->size(); ++i) std::cout << (i ? "," : "") << SlotJson((*slots)[i]);
    std::cout << "]\n";
    return kExitOk;
  }
  Table t({"NAME", "BACKEND", "DEVICE", "DTYPE", "SHAPE", "BYTES", "MODE", "OWNER", "LEASES", "VERSION"});
  for (const auto& s : *slots) {
    t.Add({s.name, std::string(BackendName(s.backend)), SlotRowDevice(s), DTypeName(s.dtype),
           ShapeText(s.shape), HumanBytes(s.nbytes), ModeText(s.mode), std::to_string(s.owner_uid),
           std::to_string(s.lease_count), std::to_string(s.version)});
  }
  std::cout << t.Render();
  return kExitOk;
}

int Show(Client& c, const std::string& name, bool json) {
  auto s = c.Stat(name);
  if (!s.ok()) return Report(s.status());
  if (json) {
    std::cout << SlotJson(*s) << "\n";
    return kExitOk;
  }
  std::cout << "name:        " << s->name << "\n"
            << "backend:     " << BackendName(s->backend) << "\n"
            << "device:      " << SlotRowDevice(*s)
            << (s->device.type == Device::kCuda ? " " + FormatUuid(s->device.uuid) : "") << "\n"
            << "dtype:       " << DTypeName(s->dtype) << "\n"
            << "shape:       " << ShapeText(s->shape) << "\n"
            << "strides:     " << ShapeText(s->strides) << " elements\n"
            << "bytes:       " << s->nbytes << " (" << HumanBytes(s->nbytes) << ")\n"
            << "allocation:  " << s->allocation_id << ", " << s->allocation_bytes
            << " bytes, view at offset " << s->byte_offset << "\n"
            << "owner:       uid " << s->owner_uid << " gid " << s->owner_gid << " mode "
            << ModeText(s->mode) << "\n"
            << "leases:      " << s->lease_count << "\n"
            << "version:     " << s->version << " (generation " << s->generation << ")\n";
  return kExitOk;
}

int StatusCmd(Client& c, bool json) {
  auto b = c.Info();
  if (!b.ok()) return Report(b.status());
  if (json) {
    std::cout << "{\"pid\":" << b->pid << ",\"version\":" << JsonString(b->version)
              << ",\"state\":" << JsonString(b->state)
              << ",\"registry\":" << JsonString(b->registry_name) << ",\"capacity\":" << b->capacity
              << ",\"max_slots\":" << b->max_slots << ",\"slots\":" << b->slots
              << ",\"allocations\":" << b->allocations << ",\"clients\":" << b->clients
              << ",\"leases\":" << b->leases << ",\"bytes_host\":" << b->bytes_host
              << ",\"bytes_device\":" << b->bytes_device << ",\"started_ns\":" << b->started_ns << "}\n";
    return kExitOk;
  }
  std::cout << "gpubrokerd " << b->version << " pid " << b->pid << ": "
            << b->state << "\n"
            << "registry:     " << b->registry_name << " (" << b->slots << " of "
            << b->max_slots << " slots used, capacity " << b->capacity << ")\n"
            << "allocations:  " << b->allocations << " (" << HumanBytes(b->bytes_host) << " host, "
            << HumanBytes(b->bytes_device) << " device)\n"
            << "clients:      " << b->clients << " holding " << b->leases << " leases\n";
  return kExitOk;
}

int Clients(Client& c, bool json) {
  auto clients = c.Clients();
  if (!clients.ok()) return Report(clients.status());
  auto leases = c.Leases();
  if (!leases.ok()) return Report(leases.status());
  if (json) {
    std::cout << "[";
    for (size_t i = 0; i < clients->size(); ++i) {
      const auto& k = (*clients)[i];
      std::cout << (i ? "," : "") << "{\"id\":" << k.id << ",\"name\":" << JsonString(k.name)
                << ",\"pid\":" << k.pid << ",\"uid\":" << k.uid << ",\"gid\":" << k.gid
                << ",\"leases\":" << k.lease_count << ",\"bytes_created\":" << k.bytes_created
                << ",\"slots\":[";
      bool first = true;
      for (const auto& l : *leases) {
        if (l.client_id != k.id) continue;
        std::cout << (first ? "" : ",") << JsonString(l.slot);
        first = false;
      }
      std::cout << "]}";
    }
    std::cout << "]\n";
    return kExitOk;
  }
  Table t({"ID", "NAME", "PID", "UID", "LEASES", "CREATED", "HOLDS"});
  for (const auto& k : *clients) {
    std::string holds;
    for (const auto& l : *leases) {
      if (l.client_id == k.id) holds += (holds.empty() ? "" : ",") + l.slot;
    }
    t.Add({std::to_string(k.id), k.name, std::to_string(k.pid), std::to_string(k.uid),
           std::to_string(k.lease_count), HumanBytes(k.bytes_created), holds.empty() ? "-" : holds});
  }
  std::cout << t.Render();
  return kExitOk;
}

Result<std::vector<int64_t>> ParseShape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    auto v = ParseUnsigned(part, INT64_MAX, "a shape entry");
    if (!v.ok()) {
      return InvalidArgument("--shape must be comma-separated sizes, e.g. 1024,1024: " + v.status().message());
    }
    shape.push_back(static_cast<int64_t>(*v));
  }
  if (shape.size() > static_cast<size_t>(kMaxDims)) {
    return InvalidArgument("--shape has " + std::to_string(shape.size()) + " dimensions; the limit is " +
                           std::to_string(kMaxDims));
  }
  return shape;
}

struct CreateFlags {
  std::string name, dtype = "uint8", shape, bytes, backend, device, mode = "0600", base;
  uint64_t offset = 0;
};

Result<CreateOptions> ToCreateOptions(const CreateFlags& f) {
  CreateOptions o;
  o.name = f.name;
  GPB_RETURN_IF_ERROR(ValidateName(o.name));
  GPB_ASSIGN_OR_RETURN(o.dtype, ParseDType(f.dtype));
  if (!f.shape.empty()) { GPB_ASSIGN_OR_RETURN(o.shape, ParseShape(f.shape)); }
  if (!f.bytes.empty()) {
    auto bytes = ParseBytes(f.bytes);
    if (!bytes.ok()) return bytes.status().Annotate("--bytes");
    o.bytes = *bytes;
  }
  if (f.shape.empty()) {
    if (o.bytes == 0) return InvalidArgument("give --shape or --bytes");
    if (o.bytes / o.dtype.itemsize() > static_cast<uint64_t>(INT64_MAX)) {
      return InvalidArgument("--bytes " + f.bytes + " is more elements than a shape can hold");
    }
    o.shape = {static_cast<int64_t>(o.bytes / o.dtype.itemsize())};
  }
  if (!f.backend.empty()) { GPB_ASSIGN_OR_RETURN(o.backend, ParseBackend(f.backend)); }
  if (!f.device.empty()) {
    auto device = ParseDevice(f.device);
    if (!device.ok()) return device.status().Annotate("--device");
    if (device->cpu) {
      if (o.backend && *o.backend != BackendKind::kHost) return InvalidArgument("--device cpu needs --backend host");
      o.backend = BackendKind::kHost;
    }
    o.device = device->ordinal;
    o.device_uuid = device->uuid;
  }
  auto mode = ParseMode(f.mode);
  if (!mode.ok()) return mode.status().Annotate("--mode");
  o.mode = *mode;
  o.base = f.base;
  o.byte_offset = f.offset;
  return o;
}

}  // namespace
}  // namespace gpubroker::ctl

int main(int argc, char** argv) {
  using namespace gpubroker;
  using namespace gpubroker::ctl;
  CLI::App app{"gpubrokerctl: inspect and steer gpubrokerd"};
  app.require_subcommand(1);
  std::string socket = DefaultSocketPath();
  bool json = false;
  app.add_option("-s,--socket", socket, "broker control socket ($GPUBROKER_SOCKET)");

  auto* status = app.add_subcommand("status", "broker health and totals");
  status->add_flag("--json", json, "machine-readable output");
  auto* ls = app.add_subcommand("ls", "list slots");
  ls->add_flag("--json", json, "machine-readable output");
  std::string name;
  auto* show = app.add_subcommand("show", "one slot in detail");
  show->add_option("name", name, "slot name")->required();
  show->add_flag("--json", json, "machine-readable output");
  CreateFlags cf;
  auto* create = app.add_subcommand("create", "create a slot owned by the broker");
  create->add_option("name", cf.name, "slot name")->required();
  create->add_option("--dtype", cf.dtype, "element type (default uint8)");
  create->add_option("--shape", cf.shape, "comma-separated sizes, e.g. 1024,1024");
  create->add_option("--bytes", cf.bytes, "allocation size: bytes, or with a unit (64MiB, 2GiB)");
  create->add_option("--backend", cf.backend, "host, cuda_vmm or cuda_ipc (default: the broker's)");
  create->add_option("--device", cf.device, "CUDA device: ordinal (as this process sees it) or GPU-<uuid>");
  create->add_option("--mode", cf.mode, "permission bits, octal (default 0600)");
  create->add_option("--base", cf.base, "make a view into this slot's allocation");
  create->add_option("--offset", cf.offset, "byte offset of the view within the base");
  create->add_flag("--json", json, "machine-readable output");
  auto* rm = app.add_subcommand("rm", "destroy a slot (its memory goes with the last lease)");
  rm->add_option("name", name, "slot name")->required();
  auto* clients = app.add_subcommand("clients", "connected clients and what they hold (admin)");
  clients->add_flag("--json", json, "machine-readable output");
  auto* shutdown = app.add_subcommand("shutdown", "stop the broker (admin)");
  bool drain_off = false;
  auto* drain = app.add_subcommand("drain", "refuse new creates and attaches; leases keep working (admin)");
  drain->add_flag("--off", drain_off, "accept new creates and attaches again");
  auto* reload = app.add_subcommand("reload", "re-read the broker's configuration (admin)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }

  ConnectOptions options;
  options.socket_path = socket;
  options.client_name = "gpubrokerctl";
  options.reconnect_timeout_ms = 0;
  auto client = Client::Connect(options);
  if (!client.ok()) return Report(client.status());
  Client& c = *client;

  if (status->parsed()) return StatusCmd(c, json);
  if (ls->parsed()) return Ls(c, json);
  if (show->parsed()) return Show(c, name, json);
  if (rm->parsed()) {
    Status s = c.Destroy(name);
    return s.ok() ? kExitOk : Report(s);
  }
  if (clients->parsed()) return Clients(c, json);
  if (shutdown->parsed()) {
    Status s = c.Shutdown();
    return s.ok() ? kExitOk : Report(s);
  }
  if (drain->parsed()) {
    Status s = c.Drain(!drain_off);
    return s.ok() ? kExitOk : Report(s);
  }
  if (reload->parsed()) {
    Status s = c.Reload();
    return s.ok() ? kExitOk : Report(s);
  }
  if (create->parsed()) {
    auto o = ToCreateOptions(cf);
    if (!o.ok()) return Report(o.status());
    auto info = c.Create(*o);
    if (!info.ok()) return Report(info.status());
    if (json) std::cout << SlotJson(*info) << "\n";
    else std::cout << "created " << info->name << ": " << DTypeName(info->dtype) << " "
                   << ShapeText(info->shape) << ", " << HumanBytes(info->nbytes) << "\n";
    return kExitOk;
  }
  return kExitUsage;
}
