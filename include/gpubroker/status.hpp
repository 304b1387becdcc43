// The one error type of gpubroker: a code and a human-readable message.
//
// Every fallible call returns Status or Result<T>; nothing in the library
// throws or exits. Codes are stable: they travel on the wire, through the C ABI
// (gpb_code) and out of gpubrokerctl as exit statuses (docs/cli.md).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

// Everything this header declares is the library's exported interface.
#pragma GCC visibility push(default)

namespace gpubroker {

enum class Code : uint16_t {
  kOk = 0,
  kInvalidArgument = 1,    // a name, shape, dtype, size or flag is wrong
  kNotFound = 2,           // no slot of that name
  kAlreadyExists = 3,      // a slot of that name exists
  kPermissionDenied = 4,   // the slot's mode bits or admin rights forbid it
  kResourceExhausted = 5,  // a table, limit or memory is full
  kUnavailable = 6,        // the broker is not reachable or is stopping
  kProtocol = 7,           // a message was malformed, truncated or out of order
  kIo = 8,                 // an operating-system call failed
  kConfig = 9,             // a configuration file or flag is wrong
  kUnsupported = 10,       // a backend or feature is not available here
  kInternal = 11,          // a bug: please report it
  kTimeout = 12,           // a wait ran out of time (no new version came)
  kBusy = 13,              // another client writes the slot, or readers pin every buffer
};

// Short stable name of a code, e.g. "not_found".
std::string_view CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "not_found: no slot named 'x'"
  std::string ToString() const;

  // Prepends context: "loading config: <message>".
  Status Annotate(std::string_view context) const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {Code::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {Code::kNotFound, std::move(m)}; }
inline Status AlreadyExists(std::string m) { return {Code::kAlreadyExists, std::move(m)}; }
inline Status PermissionDenied(std::string m) { return {Code::kPermissionDenied, std::move(m)}; }
inline Status ResourceExhausted(std::string m) { return {Code::kResourceExhausted, std::move(m)}; }
inline Status Unavailable(std::string m) { return {Code::kUnavailable, std::move(m)}; }
inline Status ProtocolError(std::string m) { return {Code::kProtocol, std::move(m)}; }
inline Status ConfigError(std::string m) { return {Code::kConfig, std::move(m)}; }
inline Status Unsupported(std::string m) { return {Code::kUnsupported, std::move(m)}; }
inline Status Internal(std::string m) { return {Code::kInternal, std::move(m)}; }
inline Status Timeout(std::string m) { return {Code::kTimeout, std::move(m)}; }
inline Status Busy(std::string m) { return {Code::kBusy, std::move(m)}; }

// A value or the Status saying why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace gpubroker

#pragma GCC visibility pop

#define GPB_CONCAT_INNER(a, b) a##b
#define GPB_CONCAT(a, b) GPB_CONCAT_INNER(a, b)

// Returns from the enclosing function if `expr` (a Status) is not ok.
#define GPB_RETURN_IF_ERROR(expr)                     \
  do {                                                \
    ::gpubroker::Status gpb_status_ = (expr);         \
    if (!gpb_status_.ok()) return gpb_status_;        \
  } while (0)

// `GPB_ASSIGN_OR_RETURN(auto x, MakeX());` binds the value or returns the error.
#define GPB_ASSIGN_OR_RETURN(lhs, expr) \
  GPB_ASSIGN_OR_RETURN_IMPL(GPB_CONCAT(gpb_result_, __LINE__), lhs, expr)
#define GPB_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
