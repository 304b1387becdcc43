// Text tables and JSON for gpubrokerctl.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gpubroker/client.hpp"

namespace gpubroker::ctl {

std::string JsonString(const std::string& s);
std::string SlotJson(const SlotInfo& s);
std::string HumanBytes(uint64_t bytes);
std::string ShapeText(const std::vector<int64_t>& v);
std::string ModeText(uint32_t mode);

// Left-aligned columns separated by two spaces.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string Render() const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace gpubroker::ctl
