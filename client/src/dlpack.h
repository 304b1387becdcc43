// DLPack export of a View: a managed tensor that holds its own reference to
// the view, released by the tensor's deleter (dlpack.h v1.0, both the legacy
// DLManagedTensor and the versioned DLManagedTensorVersioned).
#pragma once

#include "gpubroker/client.hpp"

namespace gpubroker {

// A DLManagedTensor (or, with `versioned`, a DLManagedTensorVersioned whose
// read-only flag follows the view) over `view`; NotFound for a slot on a
// CUDA device this process does not see.
// `buffer`: which of a live slot's buffers the tensor shows.
Result<void*> ExportDlpack(View view, bool versioned, uint32_t buffer = 0);

// Calls the deleter of a tensor from ExportDlpack that no consumer took.
void DeleteDlpack(void* managed, bool versioned) noexcept;

}  // namespace gpubroker
