// Retries of a lock-free read that a writer keeps overlapping (a seqlock, the
// registry's index): the first kSpins at full speed, then with a growing
// pause (a yield, then sleeps doubling up to 1 ms). It gives up when the
// sequence word it watches has not moved for kStuck (a writer that died
// mid-write, or a scribbled segment: no wait makes that whole) or after
// kLimit in all; while the word keeps moving (churn of creates and destroys)
// it goes on, up to kLimit. kStuck outlasts a broker thread stopped in the
// middle of a write by the scheduler: a container's CPU quota throttles it
// for up to a period (100 ms by default). The clock is read only once
// spinning is over, so the common read costs nothing.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <thread>

namespace gpubroker {

class Backoff {
 public:
  static constexpr int kSpins = 64;
  static constexpr std::chrono::milliseconds kStuck{500};
  static constexpr std::chrono::milliseconds kLimit{2000};

  // True while another try is due; `seq`: the sequence word as last read.
  bool Next(uint64_t seq) {
    if (tries_++ < kSpins) {
      seq_ = seq;
      return true;
    }
    const auto now = std::chrono::steady_clock::now();
    if (tries_ == kSpins + 1) {
      end_ = now + kLimit;
      still_since_ = now;
    }
    if (seq != seq_) {
      seq_ = seq;
      still_since_ = now;
    }
    if (now >= end_ || now - still_since_ >= kStuck) return false;
    if (pause_.count() == 0) {
      std::this_thread::yield();
      pause_ = std::chrono::microseconds(1);
    } else {
      std::this_thread::sleep_for(pause_);  // backing off from a writer that keeps at it
      pause_ = std::min(pause_ * 2, std::chrono::microseconds(1000));
    }
    return true;
  }

 private:
  int tries_ = 0;
  uint64_t seq_ = 0;
  std::chrono::steady_clock::time_point end_{}, still_since_{};
  std::chrono::microseconds pause_{0};
};

}  // namespace gpubroker
