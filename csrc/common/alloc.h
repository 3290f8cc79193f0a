// Output allocation shared by every family (host code, stable ABI only).
//
// lossext::empty takes torch::stable::empty's arguments and returns its tensor; on the CPU, a
// buffer of at least kHugeMin bytes is first advised as transparent huge pages
// (madvise(MADV_HUGEPAGE) on its 2 MiB-aligned interior, Linux only). Why: an op that returns a
// large fresh gradient (margin CE's [N, C], the mask loss's [R, C, M, M]) spends most of its
// time in first-touch page faults, one per 4 KiB page: glibc maps such buffers fresh and
// unmaps them on free, so every call faults them again. Measured on the 2-core CI machine
// (a VM, THP "madvise" mode, the Ubuntu default): writing a fresh 400 MB buffer took 74-100 ms
// with 4 KiB pages and 17 ms with huge pages, against 14 ms for the same write into warm memory.
// Below kHugeMin glibc's heap hands freed buffers back warm, and the hint measured no faster
// (4-16 MB; slower at times: a huge-page fault may compact memory first).
// torch's own CPU allocator does the same under THP_MEM_ALLOC_ENABLE=1; here it applies to
// lossext's outputs only. It changes no value and no byte that is read or written, only the
// page size the kernel backs the buffer with; where THP is off (or not Linux) madvise fails
// or is skipped and nothing changes. LOSSEXT_HUGE_PAGES=0 in the environment turns it off.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/HeaderOnlyArrayRef.h>

namespace lossext {

namespace alloc_detail {

constexpr uintptr_t kHugePage = uintptr_t(2) << 20;  // x86-64 and arm64 (4 KiB base pages) PMD size
constexpr int64_t kHugeMin = int64_t(32) << 20;  // glibc maps these fresh on every allocation (below, its heap reuses warm memory)

inline bool huge_pages_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("LOSSEXT_HUGE_PAGES");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return on;
}

// Advises the 2 MiB-aligned pages inside [p, p + bytes) (before anything touches them).
inline void advise_huge(void* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < kHugeMin || !huge_pages_enabled()) return;
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + uintptr_t(bytes)) & ~(kHugePage - 1);
  if (e > b) (void)madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);  // a hint: errors ignored
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace alloc_detail

// torch::stable::empty, with the huge-page hint above for large CPU buffers.
inline torch::stable::Tensor empty(torch::headeronly::IntHeaderOnlyArrayRef size, torch::headeronly::ScalarType dtype,
                                   std::optional<torch::headeronly::Layout> layout, torch::stable::Device device) {
  torch::stable::Tensor t = torch::stable::empty(size, dtype, layout, device);
  if (t.is_cpu() && t.numel() > 0)
    alloc_detail::advise_huge(t.data_ptr(), t.numel() * int64_t(t.element_size()));
  return t;
}

}  // namespace lossext
