// Lock-free, read-only access to the broker's registry segment, a sealed memfd
// the broker hands over at hello. Everything in it is checked against the
// real size of the mapping before use: a reader never trusts the segment's
// own claims about where things are.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gpubroker/status.hpp"
#include "common/posix.h"
#include "common/registry_layout.h"

namespace gpubroker {

class RegistryReader {
 public:
  // Maps the segment behind `fd` read-only and checks its magic, layout
  // version and geometry against the descriptor's real size. Takes the fd.
  static Result<RegistryReader> FromFd(UniqueFd fd);

  RegistryReader(RegistryReader&&) noexcept;
  RegistryReader& operator=(RegistryReader&&) noexcept;
  ~RegistryReader();

  // The live slot of that name: kNotFound if none.
  Result<SlotDescriptor> Lookup(std::string_view name) const;

  // All live slots, each read consistently (the set as a whole is not a
  // snapshot of one instant).
  std::vector<SlotDescriptor> ListLive() const;

  // The version state of the allocation a slot views (`d` as Lookup gave
  // it); kNotFound once that allocation is gone.
  Result<LiveState> Live(const SlotDescriptor& d) const;
  // Every allocation's valid version state (the warm restart's input).
  std::vector<LiveState> LiveStates() const;
  // The futex words of a slot's live record (LiveRecord), for FutexWait;
  // null if the descriptor's index is out of range.
  const std::atomic<uint32_t>* CommitsWord(const SlotDescriptor& d) const;
  const std::atomic<uint32_t>* ReleasesWord(const SlotDescriptor& d) const;

  const RegistryHeader& header() const;
  uint64_t boot_generation() const { return header().boot_generation; }
  // False once the broker has begun to stop; a broker killed outright still
  // reads as running.
  bool Running() const;

 private:
  struct Mapping;
  explicit RegistryReader(std::unique_ptr<Mapping> m);
  const SlotRecord& slot(uint32_t index) const;
  const LiveRecord* live(uint32_t index) const;
  // Sets a descriptor's version (and update time) from its live record.
  void WithVersion(SlotDescriptor& d) const;
  // Lookup's work, reading the record into `d`.
  Status FindInto(std::string_view name, SlotDescriptor& d) const;
  std::unique_ptr<Mapping> m_;
};

}  // namespace gpubroker
