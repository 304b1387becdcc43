#include "client/src/dlpack.h"

#include <algorithm>
#include <cstdint>
#include <new>
#include <type_traits>

namespace gpubroker {
namespace {

// The DLPack ABI (dlpack.h, v1.0): stable C structs, restated here.
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};
struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned*);
  uint64_t flags;
  DLTensor dl_tensor;
};
constexpr int32_t kDLCPU = 1;
constexpr int32_t kDLCUDA = 2;
constexpr uint64_t kDLFlagReadOnly = 1;
static_assert(sizeof(DLTensor) == 48 && sizeof(DLManagedTensor) == 64 && sizeof(DLManagedTensorVersioned) == 80);

// One allocation per exported tensor: the managed struct, its shape and
// strides, and the view reference it keeps.
template <typename Managed>
struct Exported {
  Managed managed{};
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};
  View view;

  static void Delete(Managed* m) { delete static_cast<Exported*>(m->manager_ctx); }

  static Managed* Make(View view, uint32_t buffer) {
    auto* e = new (std::nothrow) Exported{{}, {}, {}, std::move(view)};
    if (e == nullptr) return nullptr;
    const View& v = e->view;
    const SlotInfo& s = v.slot();
    std::copy(s.shape.begin(), s.shape.end(), e->shape);
    std::copy(s.strides.begin(), s.strides.end(), e->strides);
    DLTensor& t = e->managed.dl_tensor;
    t.data = v.data(buffer);
    t.device = s.device.type == Device::kCuda ? DLDevice{kDLCUDA, s.device.ordinal} : DLDevice{kDLCPU, 0};
    t.ndim = static_cast<int32_t>(s.shape.size());
    t.dtype = {s.dtype.code, s.dtype.bits, s.dtype.lanes};
    t.shape = e->shape;
    t.strides = e->strides;
    e->managed.manager_ctx = e;
    e->managed.deleter = &Delete;
    if constexpr (std::is_same_v<Managed, DLManagedTensorVersioned>) {
      e->managed.version = {1, 0};
      e->managed.flags = v.writable() ? 0 : kDLFlagReadOnly;
    }
    return &e->managed;
  }
};

}  // namespace

Result<void*> ExportDlpack(View view, bool versioned, uint32_t buffer) {
  const SlotInfo& s = view.slot();
  if (buffer >= s.buffers) {
    return InvalidArgument("slot '" + s.name + "' has " + std::to_string(s.buffers) + " buffers; there is no buffer " +
                           std::to_string(buffer));
  }
  if (s.device.type == Device::kCuda && s.device.ordinal < 0) {
    return NotFound("slot '" + s.name + "' is on a CUDA device this process does not see");
  }
  void* managed = versioned ? static_cast<void*>(Exported<DLManagedTensorVersioned>::Make(std::move(view), buffer))
                            : static_cast<void*>(Exported<DLManagedTensor>::Make(std::move(view), buffer));
  if (managed == nullptr) return ResourceExhausted("out of memory");
  return managed;
}

void DeleteDlpack(void* managed, bool versioned) noexcept {
  if (managed == nullptr) return;
  if (versioned) {
    auto* m = static_cast<DLManagedTensorVersioned*>(managed);
    m->deleter(m);
  } else {
    auto* m = static_cast<DLManagedTensor*>(managed);
    m->deleter(m);
  }
}

}  // namespace gpubroker
