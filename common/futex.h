// Waiting on a 32-bit word of shared memory, as the kernel's futex does it:
// the registry's live records are waited on by readers that map it read-only
// and woken by the broker, which maps it writable. Shared (not private)
// futexes: the key is the page, so waiter and waker need not share a mapping.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace gpubroker {

enum class FutexWaitResult { kWoken, kTimedOut, kInterrupted };

// Sleeps while *word == expected, at most `timeout` (negative: no limit).
// kWoken also covers "the word had already changed" and spurious wake-ups:
// callers re-check what they wait for.
FutexWaitResult FutexWait(const std::atomic<uint32_t>* word, uint32_t expected,
                          std::chrono::nanoseconds timeout);

// Wakes every waiter on the word.
void FutexWakeAll(std::atomic<uint32_t>* word);
// Wakes at most `n` waiters on the word; returns how many it woke.
int FutexWake(std::atomic<uint32_t>* word, int n);

}  // namespace gpubroker
