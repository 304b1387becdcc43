// What gpubrokerctl prints: slots as tables, CSV or JSON (nlohmann::json),
// with the columns a user picks.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "gpubroker/client.hpp"

namespace gpubroker::ctl {

// One column of `ls` and `show`: its name on the command line, its key in
// JSON, what it means, and the slot's value as JSON and as text.
struct SlotField {
  std::string_view name;
  std::string_view json_key;
  std::string_view about;
  nlohmann::json (*json)(const SlotInfo&);
  std::string (*text)(const SlotInfo&);
};

std::span<const SlotField> SlotFields();
// "name,bytes,version" → those fields, in that order; an unknown name is an
// error listing the known ones.
Result<std::vector<const SlotField*>> SelectFields(const std::string& list);
inline constexpr const char* kDefaultLsFields =
    "name,backend,device,dtype,shape,bytes,mode,owner,leases,version,buffers";

enum class Format { kTable, kCsv, kCsvNoHeader, kJson };
// table | csv | csv,noheader | json
Result<Format> ParseFormat(const std::string& text);

// Every slot as one row of the fields; JSON: an array of objects.
std::string RenderSlots(const std::vector<SlotInfo>& slots, const std::vector<const SlotField*>& fields,
                        Format format);
nlohmann::json SlotJson(const SlotInfo& s);  // every field
// One line of JSON; bytes that are not UTF-8 (a client's name is anyone's
// to choose) become U+FFFD instead of an exception.
std::string JsonText(const nlohmann::json& j);

// One line of `show`: "label:" padded to a column, then the value. An
// empty label continues the line above it.
std::string ShowLine(std::string_view label, std::string_view value);

std::string HumanBytes(uint64_t bytes);
std::string ShapeText(const std::vector<int64_t>& v);
std::string ModeText(uint32_t mode);
std::string UserName(uid_t uid);    // "alice", or the number if it has no name
std::string GroupName(gid_t gid);
std::string DateText(uint64_t ns);  // "2026-11-28 01:19:52 UTC"; "-" for 0
// Names equal to `prefix` or under `prefix/` (a state dict); every name for an empty prefix.
bool UnderPrefix(const std::string& name, const std::string& prefix);
std::string CsvField(const std::string& s);

// Left-aligned columns separated by two spaces.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string Render() const;
  std::string RenderCsv(bool header) const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace gpubroker::ctl
