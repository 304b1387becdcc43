// Clang's thread-safety analysis (-Wthread-safety), as LevelDB uses it: a
// field read or written without the lock that guards it is a compile error
// under Clang. Under other compilers the annotations vanish.
#pragma once

#include <mutex>

#if defined(__clang__)
#define GPB_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define GPB_THREAD_ANNOTATION(x)
#endif

#define GPB_CAPABILITY(x) GPB_THREAD_ANNOTATION(capability(x))
#define GPB_SCOPED_CAPABILITY GPB_THREAD_ANNOTATION(scoped_lockable)
#define GPB_GUARDED_BY(x) GPB_THREAD_ANNOTATION(guarded_by(x))
#define GPB_REQUIRES(...) GPB_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define GPB_EXCLUDES(...) GPB_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define GPB_ACQUIRE(...) GPB_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define GPB_RELEASE(...) GPB_THREAD_ANNOTATION(release_capability(__VA_ARGS__))

namespace gpubroker {

// std::mutex with the annotations the analysis needs.
class GPB_CAPABILITY("mutex") Mutex {
 public:
  void Lock() GPB_ACQUIRE() { mu_.lock(); }
  void Unlock() GPB_RELEASE() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

class GPB_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) GPB_ACQUIRE(mu) : mu_(mu) { mu_.Lock(); }
  ~MutexLock() GPB_RELEASE() { mu_.Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

}  // namespace gpubroker
