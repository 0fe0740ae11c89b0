// sparsetrain CPU kernels for SparseLinear (float32, CSR with int32 or int64 indices).
//
// One source, compiled with generic flags (-O3, no -march=native: the binary is portable and its
// speed does not hang on the compiler's tuning guess for the build machine), holding the kernels
// three times (kernels_body.inc): AVX-512F and AVX2+FMA with explicit intrinsics, each in a
// region compiled for that instruction set, and a portable 4-lane version (GCC/Clang vector
// extensions: SSE2 on x86-64, NEON on AArch64). The best set the CPU supports is chosen at run
// time (__builtin_cpu_supports, which also checks the OS saves the wide registers); set_isa()
// forces a lower one (tests run every path the CPU has).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define ST_X86 1
#include <immintrin.h>
#else
#define ST_X86 0
#endif

namespace st_generic {
struct V {
  static constexpr int64_t W = 4;
  typedef float vec __attribute__((vector_size(16), aligned(4)));
  static inline vec zero() { return vec{0.f, 0.f, 0.f, 0.f}; }
  static inline vec load(const float* p) { vec v; std::memcpy(&v, p, sizeof(v)); return v; }
  static inline vec splat(float s) { return vec{s, s, s, s}; }
  static inline vec fma(vec acc, vec a, vec b) { return acc + a * b; }
  static inline vec add(vec a, vec b) { return a + b; }
  static inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof(v)); }
  static inline float hsum(vec v) { return (v[0] + v[2]) + (v[1] + v[3]); }
};
#include "kernels_body.inc"
}  // namespace st_generic

#if ST_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace st_avx2 {
struct V {
  static constexpr int64_t W = 8;
  typedef __m256 vec;
  static inline vec zero() { return _mm256_setzero_ps(); }
  static inline vec load(const float* p) { return _mm256_loadu_ps(p); }
  static inline vec splat(float s) { return _mm256_set1_ps(s); }
  static inline vec fma(vec acc, vec a, vec b) { return _mm256_fmadd_ps(a, b, acc); }
  static inline vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static inline void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
  static inline float hsum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
};
#include "kernels_body.inc"
}  // namespace st_avx2
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f")
#endif
namespace st_avx512 {
struct V {
  static constexpr int64_t W = 16;
  typedef __m512 vec;
  static inline vec zero() { return _mm512_setzero_ps(); }
  static inline vec load(const float* p) { return _mm512_loadu_ps(p); }
  static inline vec splat(float s) { return _mm512_set1_ps(s); }
  static inline vec fma(vec acc, vec a, vec b) { return _mm512_fmadd_ps(a, b, acc); }
  static inline vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  static inline void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
  static inline float hsum(vec v) { return _mm512_reduce_add_ps(v); }
};
#include "kernels_body.inc"
}  // namespace st_avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // ST_X86

namespace {

enum Isa { GENERIC = 0, AVX2 = 1, AVX512 = 2 };
const char* kIsaNames[] = {"generic", "avx2", "avx512"};

std::vector<std::string> available() {
  std::vector<std::string> out{"generic"};
#if ST_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.push_back("avx2");
  if (__builtin_cpu_supports("avx512f")) out.push_back("avx512");
#endif
  return out;
}

int best() {
  const auto names = available();
  const std::string& top = names.back();
  return top == "avx512" ? AVX512 : top == "avx2" ? AVX2 : GENERIC;
}

int& current() {
  static int isa = best();
  return isa;
}

std::vector<std::string> isas() { return available(); }

std::string isa() { return kIsaNames[current()]; }

std::string set_isa(const std::string& name) {
  const auto names = available();
  if (name == "best") {
    current() = best();
    return isa();
  }
  TORCH_CHECK(std::find(names.begin(), names.end(), name) != names.end(), "sparsetrain::set_isa: '", name,
              "' is not available on this CPU (available: generic",
              names.size() > 1 ? ", " + names[1] : std::string(), names.size() > 2 ? ", " + names[2] : std::string(),
              ")");
  current() = name == "avx512" ? AVX512 : name == "avx2" ? AVX2 : GENERIC;
  return isa();
}

void check(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& m, const char* what) {
  TORCH_CHECK(crow.device().is_cpu() && col.device().is_cpu() && m.device().is_cpu(), what, ": CPU tensors only");
  TORCH_CHECK(m.scalar_type() == at::kFloat, what, ": float32 only");
  TORCH_CHECK(crow.scalar_type() == col.scalar_type(), what, ": crow and col index dtypes differ");
  TORCH_CHECK(crow.scalar_type() == at::kInt || crow.scalar_type() == at::kLong, what, ": int32 or int64 indices");
  TORCH_CHECK(crow.is_contiguous() && col.is_contiguous() && m.is_contiguous() && m.dim() == 2, what,
              ": contiguous 2-d operands expected");
}

at::Tensor spmm(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& val,
                const c10::optional<at::Tensor>& perm, const at::Tensor& xt, int64_t rows,
                const c10::optional<at::Tensor>& bias) {
  check(crow, col, xt, "sparsetrain::spmm");
  TORCH_CHECK(val.is_contiguous() && val.scalar_type() == at::kFloat, "sparsetrain::spmm: float32 values");
  TORCH_CHECK(crow.numel() == rows + 1, "sparsetrain::spmm: crow has ", crow.numel(), " entries for ", rows, " rows");
  const int64_t B = xt.size(1);
  auto y = at::empty({rows, B}, xt.options());
  if (rows == 0 || B == 0) return y;
  const bool p = perm.has_value() && perm->defined();
  TORCH_CHECK(!p || (perm->scalar_type() == crow.scalar_type() && perm->is_contiguous() &&
                     perm->numel() == col.numel()),
              "sparsetrain::spmm: perm must be a contiguous index vector of col's dtype and length");
  const bool b = bias.has_value() && bias->defined();
  TORCH_CHECK(!b || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == rows),
              "sparsetrain::spmm: bias must be a contiguous float32 vector with one entry per row");
  const float* bp = b ? bias->data_ptr<float>() : nullptr;
  const at::Tensor* pp = p ? &perm.value() : nullptr;
  switch (current()) {
#if ST_X86
    case AVX512: st_avx512::spmm(crow, col, val, pp, bp, xt, y, rows); break;
    case AVX2: st_avx2::spmm(crow, col, val, pp, bp, xt, y, rows); break;
#endif
    default: st_generic::spmm(crow, col, val, pp, bp, xt, y, rows);
  }
  return y;
}

at::Tensor sddmm(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& gyt, const at::Tensor& xt) {
  check(crow, col, xt, "sparsetrain::sddmm");
  TORCH_CHECK(gyt.is_contiguous() && gyt.scalar_type() == at::kFloat && gyt.dim() == 2 && gyt.size(1) == xt.size(1),
              "sparsetrain::sddmm: gyt must be contiguous float32 with xt's batch size");
  const int64_t rows = gyt.size(0), B = xt.size(1);
  TORCH_CHECK(crow.numel() == rows + 1, "sparsetrain::sddmm: crow does not match gyt's rows");
  auto g = at::empty({col.numel()}, xt.options());
  if (col.numel() == 0) return g;
  if (B == 0) return g.zero_();
  switch (current()) {
#if ST_X86
    case AVX512: st_avx512::sddmm(crow, col, gyt, xt, g); break;
    case AVX2: st_avx2::sddmm(crow, col, gyt, xt, g); break;
#endif
    default: st_generic::sddmm(crow, col, gyt, xt, g);
  }
  return g;
}

}  // namespace

TORCH_LIBRARY(sparsetrain, m) {
  m.def("spmm(Tensor crow, Tensor col, Tensor val, Tensor? perm, Tensor xt, int rows, Tensor? bias=None) -> Tensor");
  m.def("sddmm(Tensor crow, Tensor col, Tensor gyt, Tensor xt) -> Tensor");
  m.def("isa() -> str", &isa);
  m.def("isas() -> str[]", &isas);
  m.def("set_isa(str name) -> str", &set_isa);
}
TORCH_LIBRARY_IMPL(sparsetrain, CPU, m) {
  m.impl("spmm", &spmm);
  m.impl("sddmm", &sddmm);
}
