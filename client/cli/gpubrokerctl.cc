// gpubrokerctl: inspect and steer a running gpubrokerd.
// Exit statuses are part of the interface; docs/cli.md lists them.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>

#include "gpubroker/client.hpp"
#include "client/cli/completion.h"
#include "client/cli/doctor.h"
#include "client/cli/exit_status.h"
#include "client/cli/leases.h"
#include "client/cli/output.h"
#include "client/cli/top.h"
#include "client/cli/wait.h"
#include "common/parse.h"
#include "common/validate.h"

namespace gpubroker::ctl {
namespace {


struct OutputFlags {
  bool json = false;
  std::string format = "table";
  std::string fields;
};

Result<Format> ChosenFormat(const OutputFlags& o) {
  if (o.json) return Format::kJson;
  return ParseFormat(o.format);
}

int Ls(Client& c, const std::string& prefix, const OutputFlags& o) {
  auto format = ChosenFormat(o);
  if (!format.ok()) return Report(format.status());
  std::string wanted = o.fields;
  if (wanted.empty()) {
    if (*format != Format::kJson) wanted = kDefaultLsFields;
    else for (const auto& f : SlotFields()) wanted += (wanted.empty() ? "" : ",") + std::string(f.name);
  }
  auto fields = SelectFields(wanted);
  if (!fields.ok()) return Report(fields.status());
  auto slots = c.List();
  if (!slots.ok()) return Report(slots.status());
  std::vector<SlotInfo> shown;
  for (auto& s : *slots) {
    if (UnderPrefix(s.name, prefix)) shown.push_back(std::move(s));
  }
  if (shown.empty() && !prefix.empty()) return Report(NotFound("no slot named '" + prefix + "' or under it"));
  std::cout << RenderSlots(shown, *fields, *format);
  return kExitOk;
}

// show NAME: every field; then, where the caller is admin, which clients pin
// which version of its allocation and who writes it.
int Show(Client& c, const std::string& name, bool json) {
  auto s = c.Stat(name);
  if (!s.ok()) return Report(s.status());
  auto holders = ListHolders(c);
  if (!holders.ok() && holders.status().code() != Code::kPermissionDenied) return Report(holders.status());
  if (json) {
    nlohmann::json o = SlotJson(*s);
    AddPinsJson(o, holders, s->allocation_id);
    std::cout << JsonText(o) << "\n";
    return kExitOk;
  }
  for (const SlotField& f : SlotFields()) {
    if (f.name == "nbytes") continue;  // "bytes" says it, with the unit
    std::cout << ShowLine(f.name, f.text(*s));
  }
  std::cout << PinsText(holders, s->allocation_id);
  return kExitOk;
}

// "3 of 1024", "1.0 MiB of 8.0 GiB": a use against its share (0: no limit).
std::string OfShare(uint64_t used, uint64_t share, bool bytes, bool exempt) {
  std::string text = bytes ? HumanBytes(used) : std::to_string(used);
  if (share != 0 && !exempt) text += " of " + (bytes ? HumanBytes(share) : std::to_string(share));
  return text;
}

std::string UsageLine(const UidUsageInfo& u) {
  std::string line = "uid " + std::to_string(u.uid) + " (" + UserName(u.uid) + "): " +
                     OfShare(u.slots, u.slot_share, false, u.exempt) + " slots, ";
  if (u.byte_quota != 0) {
    line += OfShare(u.bytes, u.byte_quota, true, u.exempt) + " (limits.max_bytes_per_uid)";
  } else {
    line += OfShare(u.host_bytes, u.host_share, true, u.exempt) + " host, " +
            OfShare(u.device_bytes, u.device_share, true, u.exempt) + " device";
  }
  return line + (u.exempt ? " (root or admin group: no share applies)" : "");
}

int StatusCmd(Client& c, bool json, bool live) {
  auto b = c.Info();
  if (!b.ok()) return Report(b.status());
  auto devices = c.Devices();  // a broker older than the message lists none
  if (!devices.ok()) devices = std::vector<BrokerDevice>{};
  auto usage = c.Usage();  // an admin sees every uid, anyone else their own
  if (!usage.ok()) usage = std::vector<UidUsageInfo>{};
  if (json) {
    nlohmann::json o = {{"pid", b->pid}, {"version", b->version}, {"state", b->state},
                        {"registry", b->registry_name}, {"capacity", b->capacity}, {"max_slots", b->max_slots},
                        {"slots", b->slots}, {"allocations", b->allocations}, {"clients", b->clients},
                        {"leases", b->leases}, {"bytes_host", b->bytes_host}, {"bytes_device", b->bytes_device},
                        {"started_ns", b->started_ns}};
    o["devices"] = nlohmann::json::array();
    for (const auto& d : *devices) {
      o["devices"].push_back({{"uuid", FormatUuid(d.uuid)}, {"broker_ordinal", d.broker_ordinal},
                              {"allocated_bytes", d.allocated_bytes}});
    }
    o["usage"] = nlohmann::json::array();
    for (const auto& u : *usage) {
      o["usage"].push_back({{"uid", u.uid}, {"user", UserName(u.uid)}, {"exempt", u.exempt}, {"slots", u.slots},
                            {"slot_share", u.slot_share}, {"connections", u.connections}, {"bytes", u.bytes},
                            {"byte_quota", u.byte_quota}, {"host_bytes", u.host_bytes}, {"host_share", u.host_share},
                            {"device_bytes", u.device_bytes}, {"device_share", u.device_share}});
    }
    std::cout << JsonText(o) << "\n";
  } else {
    std::cout << "gpubrokerd " << b->version << " pid " << b->pid << ": " << b->state << "\n"
              << "started:      " << DateText(b->started_ns) << "\n"
              << "registry:     " << b->registry_name << " (" << b->slots << " of " << b->max_slots
              << " slots used, capacity " << b->capacity << ")\n"
              << "allocations:  " << b->allocations << " (" << HumanBytes(b->bytes_host) << " host, "
              << HumanBytes(b->bytes_device) << " device)\n"
              << "clients:      " << b->clients << " holding " << b->leases << " leases\n";
    std::cout << "devices:      " << (devices->empty() ? "none (host memory only)" : "") << "\n";
    for (const auto& d : *devices) {
      std::cout << "  cuda:" << d.broker_ordinal << " " << FormatUuid(d.uuid) << "  " << HumanBytes(d.allocated_bytes)
                << " allocated\n";
    }
    std::cout << (usage->empty() ? "usage:        none\n" : "usage:\n");
    for (const auto& u : *usage) std::cout << "  " << UsageLine(u) << "\n";
  }
  // Scripts and probes read the status: only a broker taking new work is OK;
  // with --live (a liveness probe), any broker that answers is.
  if (live) return kExitOk;
  if (b->state == "degraded") {
    std::cerr << "gpubrokerctl: the broker is degraded: part of its configuration is not in effect (a pool, or "
                 "the metrics endpoint); its log says which\n";
    return kExitNotServing;
  }
  if (b->state != "running") {
    std::cerr << "gpubrokerctl: the broker is " << b->state << ": it refuses new creates and attaches\n";
    return kExitNotServing;
  }
  return kExitOk;
}

// docs/multinode.md: the trees this broker follows and the followers it serves.
int PeersCmd(Client& c, bool json) {
  auto peers = c.Peers();
  if (!peers.ok()) return Report(peers.status());
  if (json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& p : *peers) {
      out.push_back({{"role", p.role}, {"state", p.state}, {"tree", p.tree}, {"peer", p.peer},
                     {"version", p.version}, {"source_version", p.source_version}, {"versions", p.versions},
                     {"bytes", p.bytes}, {"errors", p.errors}, {"last_seconds", p.last_ns / 1e9},
                     {"last_error", p.last_error}, {"passed_on", p.passed_on}, {"abandoned", p.abandoned}});
    }
    std::cout << JsonText(out) << "\n";
    return kExitOk;
  }
  if (peers->empty()) {
    std::cout << "no peers: this broker follows no tree and serves no follower (peers in its configuration)\n";
    return kExitOk;
  }
  Table t({"ROLE", "TREE", "PEER", "STATE", "VERSION", "BEHIND", "MOVED", "LAST", "ERRORS", "LAST ERROR"});
  for (const auto& p : *peers) {
    const bool follower = p.role == "follower";
    const uint64_t behind = follower && p.source_version > p.version ? p.source_version - p.version : 0;
    char last[32] = "-";
    if (p.last_ns != 0) {
      std::snprintf(last, sizeof last, "%.1f ms %.2f GB/s", p.last_ns / 1e6,
                    p.versions == 0 ? 0.0 : static_cast<double>(p.bytes) / p.versions / static_cast<double>(p.last_ns));
    }
    t.Add({p.role, p.tree, p.peer, p.state, std::to_string(p.version), follower ? std::to_string(behind) : "-",
           HumanBytes(p.bytes) + " in " + std::to_string(p.versions), last, std::to_string(p.errors),
           p.last_error.empty() ? "-" : p.last_error});
  }
  std::cout << t.Render();
  return kExitOk;
}

int Clients(Client& c, bool json) {
  auto clients = c.Clients();
  if (!clients.ok()) return Report(clients.status());
  auto leases = c.Leases();
  if (!leases.ok()) return Report(leases.status());
  const uint64_t me = c.client_id();
  if (json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& k : *clients) {
      nlohmann::json slots = nlohmann::json::array();
      for (const auto& l : *leases) {
        if (l.client_id == k.id) slots.push_back(l.slot);
      }
      out.push_back({{"id", k.id}, {"name", k.name}, {"pid", k.pid}, {"uid", k.uid}, {"user", UserName(k.uid)},
                     {"gid", k.gid}, {"leases", k.lease_count}, {"bytes_created", k.bytes_created},
                     {"connected_ns", k.connected_ns}, {"self", k.id == me}, {"slots", std::move(slots)}});
    }
    std::cout << JsonText(out) << "\n";
    return kExitOk;
  }
  Table t({"ID", "NAME", "PID", "USER", "LEASES", "CREATED", "SINCE", "HOLDS"});
  for (const auto& k : *clients) {
    std::string holds;
    for (const auto& l : *leases) {
      if (l.client_id == k.id) holds += (holds.empty() ? "" : ",") + l.slot;
    }
    t.Add({std::to_string(k.id) + (k.id == me ? "*" : ""), Printable(k.name), std::to_string(k.pid), UserName(k.uid),
           std::to_string(k.lease_count), HumanBytes(k.bytes_created), DateText(k.connected_ns),
           holds.empty() ? "-" : holds});
  }
  std::cout << t.Render() << "(* this gpubrokerctl)\n";
  return kExitOk;
}

// rm NAME...: each name in turn, all of them tried; with -r, everything under
// each name too, views before the slot they view. The first failure decides
// the exit status; every failure is reported.
int Remove(Client& c, const std::vector<std::string>& names, bool recursive) {
  int rc = kExitOk;
  auto note = [&](const Status& s) {
    if (!s.ok() && rc == kExitOk) rc = ExitFor(s);
    if (!s.ok()) std::cerr << "gpubrokerctl: " << s.ToString() << "\n";
  };
  for (const std::string& name : names) {
    if (!recursive) {
      note(c.Destroy(name));
      continue;
    }
    auto slots = c.List();
    if (!slots.ok()) return Report(slots.status());
    std::vector<std::string> under;
    for (const auto& s : *slots) {
      if (UnderPrefix(s.name, name)) under.push_back(s.name);
    }
    if (under.empty()) {
      note(NotFound("no slot named '" + name + "' or under it"));
      continue;
    }
    // Deepest names first, so a state dict's tensors go before its arena.
    std::sort(under.begin(), under.end(), [](const std::string& a, const std::string& b) {
      return a.size() != b.size() ? a.size() > b.size() : a < b;
    });
    for (const std::string& n : under) note(c.Destroy(n));
  }
  return rc;
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
  std::string name, dtype = "uint8", shape, bytes, backend, device, mode = "0600", base, buffers;
  uint64_t offset = 0;
  bool exist_ok = false;
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
    if (*bytes == 0) return InvalidArgument("--bytes 0: a slot holds at least one byte");
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
  o.exist_ok = f.exist_ok;
  if (!f.buffers.empty()) {
    GPB_ASSIGN_OR_RETURN(uint64_t buffers, ParseUnsigned(f.buffers, kMaxBuffers, "--buffers"));
    if (buffers != 0 && !o.base.empty()) {
      return InvalidArgument("--buffers is for a new allocation; a view (--base) has its base's buffers");
    }
    o.buffers = static_cast<uint32_t>(buffers);
  }
  return o;
}

}  // namespace
}  // namespace gpubroker::ctl

int main(int argc, char** argv) {
  using namespace gpubroker;
  using namespace gpubroker::ctl;
  CLI::App app{"gpubrokerctl: inspect and steer gpubrokerd"};
  app.name("gpubrokerctl");  // in usage lines, whatever path ran it
  app.require_subcommand(1);
  // Global options may come after the subcommand too (`ls --socket X`), as
  // in git and systemctl; every usage error starts with the program's name.
  app.fallthrough();
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return "gpubrokerctl: " + std::string(e.what()) + "\nRun 'gpubrokerctl --help' (or COMMAND --help) for usage.\n";
  });
  app.set_version_flag("--version", std::string("gpubrokerctl ") + GPUBROKER_VERSION);
  std::string socket = DefaultSocketPath();
  bool json = false;
  OutputFlags out;
  app.add_option("-s,--socket", socket, "broker control socket ($GPUBROKER_SOCKET)");

  // --format table|json beside --json on every command that prints: the
  // same spelling as ls's --format.
  std::string format = "table";
  auto json_flags = [&](CLI::App* sub) {
    sub->add_flag("--json", json, "machine-readable output (same as --format json)");
    sub->add_option("--format", format, "table (default) or json")->check(CLI::IsMember({"table", "json"}));
  };
  auto* status = app.add_subcommand("status", "broker health and totals; exit 9 while draining, stopping or degraded");
  json_flags(status);
  bool live = false;
  status->add_flag("--live", live, "exit 0 whenever the broker answers, draining or degraded too (liveness probes)");
  auto* ls = app.add_subcommand("ls", "list slots, all or those under a prefix");
  std::string prefix;
  ls->add_option("prefix", prefix, "only NAME and NAME/... (a state dict)");
  ls->add_flag("--json", out.json, "JSON: an array of objects (same as --format json)");
  ls->add_option("--format", out.format, "table (default), csv, csv,noheader or json");
  std::string field_help = "columns, comma-separated (default " + std::string(kDefaultLsFields) + "):";
  for (const auto& f : SlotFields()) field_help += " " + std::string(f.name);
  ls->add_option("--fields", out.fields, field_help);
  std::string name;
  auto* show = app.add_subcommand("show", "one slot in detail");
  show->add_option("name", name, "slot name")->required();
  json_flags(show);
  CreateFlags cf;
  auto* create = app.add_subcommand("create", "create a slot owned by the broker");
  create->add_option("name", cf.name, "slot name")->required();
  create->add_option("--dtype", cf.dtype, "element type (default uint8)");
  auto* shape_option = create->add_option("--shape", cf.shape, "comma-separated sizes, e.g. 1024,1024");
  create->add_option("--bytes", cf.bytes, "a byte slot of this size: bytes, or with a unit (64MiB, 2GiB)")
      ->excludes(shape_option);
  create->add_option("--backend", cf.backend, "host, cuda_vmm or cuda_ipc (default: the broker's)");
  create->add_option("--device", cf.device,
                     "cpu (host memory), or a CUDA device: ordinal (as this process sees it) or GPU-<uuid>");
  create->add_option("--mode", cf.mode, "permission bits, octal (default 0600)");
  create->add_option("--base", cf.base, "make a view into this slot's allocation");
  create->add_option("--offset", cf.offset, "byte offset of the view within the base");
  create->add_option("--buffers", cf.buffers,
                     "1.." + std::to_string(kMaxBuffers) + ": a live slot of that many buffers, at version 0 until "
                     "a writer commits; 0 (default): a plain slot, version 1")
      ->type_name("N");
  create->add_flag("--exist-ok", cf.exist_ok,
                   "a slot of that name that is yours, with this dtype and shape, is fine (exit 0, as mkdir -p)");
  json_flags(create);
  auto* rm = app.add_subcommand("rm", "destroy slots (their memory goes with the last lease)");
  std::vector<std::string> names;
  bool recursive = false;
  rm->add_option("names", names, "slot names")->required();
  rm->add_flag("-r,--recursive", recursive, "each NAME and everything under NAME/ (a state dict)");
  WaitFlags wf;
  auto* wait = app.add_subcommand("wait", "block until a slot has a version newer than N (default: the current "
                                          "one) and print it; exit 10 on --timeout");
  wait->add_option("name", wf.name, "slot name")->required();
  wait->add_option("--version", wf.version, "wait for a version newer than this (0: any committed one)")
      ->type_name("N");
  wait->add_option("--timeout", wf.timeout, "give up after this many seconds (fractions allowed; default: never)")
      ->type_name("SECONDS");
  json_flags(wait);
  auto* clients = app.add_subcommand("clients", "connected clients and what they hold (admin)");
  json_flags(clients);
  auto* peers = app.add_subcommand("peers", "trees followed from brokers on other nodes and followers served, "
                                            "with versions, bytes, rates and errors (admin)");
  json_flags(peers);
  std::string follow_tree, follow_from, follow_group, follow_mode = "0644";
  auto* follow = app.add_subcommand("follow", "keep TREE here, each version of it at the broker --from committed "
                                              "here whole, until the broker stops or unfollow (admin; the broker "
                                              "needs peers.key_file; peers.follow in the configuration lasts)");
  follow->add_option("tree", follow_tree, "the tree's name, the same on both nodes")->required();
  follow->add_option("--from", follow_from, "the source broker's peers.listen, IPV4:PORT")->required()
      ->type_name("IPV4:PORT");
  follow->add_option("--group", follow_group, "owner group of the local tree (default: the broker's)");
  follow->add_option("--mode", follow_mode, "permission bits of the local tree, octal (default 0644)");
  std::string unfollow_tree;
  bool unfollow_remove = false;
  auto* unfollow = app.add_subcommand("unfollow", "stop following TREE; it keeps its last version here (admin)");
  unfollow->add_option("tree", unfollow_tree, "the tree's name")->required();
  unfollow->add_flag("--remove", unfollow_remove, "remove the local tree too (its memory goes with the last lease)");
  auto* leases = app.add_subcommand("leases", "every lease: client, slot, the version it pins, the buffer it "
                                              "writes (admin)");
  json_flags(leases);
  auto* shutdown = app.add_subcommand("shutdown", "stop the broker (admin)");
  bool drain_off = false;
  auto* drain = app.add_subcommand("drain", "refuse new creates and attaches; leases keep working (admin)");
  drain->add_flag("--off", drain_off, "accept new creates and attaches again");
  auto* reload = app.add_subcommand("reload", "re-read the broker's configuration (admin)");
  auto* doctor = app.add_subcommand("doctor", "why attaching fails or is slow here: each check OK or what to do; "
                                              "exit 1 if any failed");
  json_flags(doctor);
  TopFlags tf;
  auto* top = app.add_subcommand("top", "a live view, refreshed in place: slots, versions and commit rates, "
                                        "clients and their leases, requests and refusals per second");
  top->add_option("-d,--delay", tf.delay, "seconds between refreshes (default 2; fractions allowed)")
      ->type_name("SECONDS");
  top->add_option("-n,--iterations", tf.iterations, "stop after this many screens (default: until q or Ctrl-C)")
      ->type_name("N");
  top->add_option("prefix", tf.prefix, "only slots NAME and NAME/...");
  auto* completion = app.add_subcommand("completion", "print a bash, zsh or fish completion script (no broker "
                                                      "needed)");
  std::string shell;
  completion->add_option("shell", shell, "bash, zsh or fish")
      ->required()
      ->check(CLI::IsMember(std::vector<std::string>(std::begin(kCompletionShells), std::end(kCompletionShells))));
  app.footer(
      "Exit status: 0 success, 1 another error, 2 usage, 3 broker unavailable, 4 no such slot, 5 permission "
      "denied, 6 name exists, 7 a limit or memory exhausted, 8 invalid argument, 9 the broker is draining or "
      "stopping (any command it refused for that; status: or degraded), 10 (wait) no new version within --timeout.\nThe socket: --socket, else "
      "$GPUBROKER_SOCKET, else your own broker's ($XDG_RUNTIME_DIR/gpubroker/gpubroker.sock) if it runs, else "
      "/run/gpubroker/gpubroker.sock.");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  if (format == "json") json = true;
  wf.json = wf.json || json;

  if (doctor->parsed()) return RunDoctor(socket, app.get_option("--socket")->count() > 0, json);
  if (completion->parsed()) {
    std::cout << Completion(app, shell);
    return kExitOk;
  }
  const uint64_t started_ns = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
  ConnectOptions options;
  options.socket_path = socket;
  options.client_name = "gpubrokerctl";
  options.reconnect_timeout_ms = 0;
  auto client = Client::Connect(options);
  if (!client.ok()) return Report(client.status());
  Client& c = *client;
  auto run = [&]() -> int {
    if (status->parsed()) return StatusCmd(c, json, live);
    if (top->parsed()) return TopCmd(c, tf);
    if (ls->parsed()) return Ls(c, prefix, out);
    if (show->parsed()) return Show(c, name, json);
    if (rm->parsed()) return Remove(c, names, recursive);
    if (wait->parsed()) return WaitCmd(c, wf);
    if (clients->parsed()) return Clients(c, json);
    if (peers->parsed()) return PeersCmd(c, json);
    if (follow->parsed()) {
      auto mode = ParseMode(follow_mode);
      if (!mode.ok()) return Report(mode.status());
      Status s = c.Follow(follow_tree, follow_from, follow_group, *mode);
      if (!s.ok()) return Report(s);
      std::cout << "following " << follow_tree << " from " << follow_from << " (gpubrokerctl peers shows how it goes)\n";
      return kExitOk;
    }
    if (unfollow->parsed()) {
      Status s = c.Unfollow(unfollow_tree, unfollow_remove);
      return s.ok() ? kExitOk : Report(s);
    }
    if (leases->parsed()) return LeasesCmd(c, json);
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
      if (json) std::cout << JsonText(SlotJson(*info)) << "\n";
      else if (info->created_ns < started_ns) std::cout << "exists: " << info->name << "\n";
      else std::cout << "created " << info->name << ": " << DTypeName(info->dtype) << " "
                     << ShapeText(info->shape) << ", " << HumanBytes(info->nbytes)
                     << (o->buffers != 0 ? ", " + std::to_string(info->buffers) + " buffer(s), no version yet" : "")
                     << "\n";
      return kExitOk;
    }
    return kExitUsage;
  };
  int rc = run();
  // A broker that answers but refuses new work (draining, stopping) is not
  // one that is missing: exit 9, as `status` does, rather than 3.
  if (rc == kExitUnavailable) {
    auto b = c.Info();
    if (b.ok() && (b->state == "draining" || b->state == "stopping")) rc = kExitNotServing;
  }
  return rc;
}

