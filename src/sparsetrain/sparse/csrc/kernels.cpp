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
  static inline vec mul(vec a, vec b) { return a * b; }
  static inline vec add(vec a, vec b) { return a + b; }
  static inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof(v)); }
  static inline float hsum(vec v) { return (v[0] + v[2]) + (v[1] + v[3]); }
  // g[j] += hsum(a_j), j < 8
  static inline void reduce8_add(float* g, vec a0, vec a1, vec a2, vec a3, vec a4, vec a5, vec a6, vec a7) {
    g[0] += hsum(a0); g[1] += hsum(a1); g[2] += hsum(a2); g[3] += hsum(a3);
    g[4] += hsum(a4); g[5] += hsum(a5); g[6] += hsum(a6); g[7] += hsum(a7);
  }
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
  static inline vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  static inline vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static inline void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
  static inline float hsum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  // g[j] += hsum(a_j), j < 8: a tree of horizontal adds, then the two 128-bit halves added
  static inline void reduce8_add(float* g, vec a0, vec a1, vec a2, vec a3, vec a4, vec a5, vec a6, vec a7) {
    const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
    _mm256_storeu_ps(g, _mm256_add_ps(_mm256_loadu_ps(g), sum));
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
  static inline vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
  static inline vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  static inline void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
  static inline float hsum(vec v) { return _mm512_reduce_add_ps(v); }
  static inline __m256 fold(vec v) {  // the two 256-bit halves added (AVX512F only, no DQ)
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  }
  // g[j] += hsum(a_j), j < 8: each folded to 256 bits, then as in the AVX2 version
  static inline void reduce8_add(float* g, vec a0, vec a1, vec a2, vec a3, vec a4, vec a5, vec a6, vec a7) {
    const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(fold(a0), fold(a1)), _mm256_hadd_ps(fold(a2), fold(a3)));
    const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(fold(a4), fold(a5)), _mm256_hadd_ps(fold(a6), fold(a7)));
    const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
    _mm256_storeu_ps(g, _mm256_add_ps(_mm256_loadu_ps(g), sum));
  }
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

// An operand as pack reads it: rows contiguous (K x B), or the transposed view of a B x K matrix
// with contiguous rows (packed directly, no transposed copy); anything else is copied once.
at::Tensor packable(const at::Tensor& xt, const char* what) {
  TORCH_CHECK(xt.dim() == 2 && xt.device().is_cpu() && xt.scalar_type() == at::kFloat, what,
              ": a 2-d float32 CPU operand expected, got ", xt.scalar_type(), " of ", xt.dim(), " dimensions");
  return xt.is_contiguous() || xt.t().is_contiguous() ? xt : xt.contiguous();
}

// xp[t][k][j] = xt[k][t*T + j] with T = 2 x the vector width of the current instruction set
at::Tensor pack(const at::Tensor& xt_in) {
  const at::Tensor xt = packable(xt_in, "sparsetrain::pack");
  switch (current()) {
#if ST_X86
    case AVX512: return st_avx512::pack(xt);
    case AVX2: return st_avx2::pack(xt);
#endif
    default: return st_generic::pack(xt);
  }
}

// The structure's own consistency (cheap: its last row pointer is the entry count). Column indices
// are not scanned (O(nnz)): they must be below the operand's K, which SparseLinear guarantees.
void check_csr(const at::Tensor& crow, const at::Tensor& col, const char* what) {
  TORCH_CHECK(crow.device().is_cpu() && col.device().is_cpu(), what, ": CPU tensors only");
  TORCH_CHECK(crow.scalar_type() == col.scalar_type(), what, ": crow and col index dtypes differ");
  TORCH_CHECK(crow.scalar_type() == at::kInt || crow.scalar_type() == at::kLong, what, ": int32 or int64 indices");
  TORCH_CHECK(crow.is_contiguous() && col.is_contiguous() && crow.dim() == 1 && crow.numel() >= 1, what,
              ": contiguous 1-d crow and col expected");
  const int64_t last = crow.scalar_type() == at::kInt ? (int64_t)crow.data_ptr<int32_t>()[crow.numel() - 1]
                                                      : crow.data_ptr<int64_t>()[crow.numel() - 1];
  TORCH_CHECK(last == col.numel(), what, ": crow ends at ", last, " but col has ", col.numel(), " entries");
}

at::Tensor spmm_packed(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& val,
                       const c10::optional<at::Tensor>& perm, const at::Tensor& xp, int64_t batch, int64_t rows,
                       const c10::optional<at::Tensor>& bias, bool row_major) {
  check_csr(crow, col, "sparsetrain::spmm");
  TORCH_CHECK(xp.scalar_type() == at::kFloat && xp.device().is_cpu(), "sparsetrain::spmm: float32 only");
  TORCH_CHECK(val.is_contiguous() && val.scalar_type() == at::kFloat, "sparsetrain::spmm: float32 values");
  TORCH_CHECK(crow.numel() == rows + 1, "sparsetrain::spmm: crow has ", crow.numel(), " entries for ", rows, " rows");
  TORCH_CHECK((perm.has_value() && perm->defined()) || val.numel() >= col.numel(), "sparsetrain::spmm: ",
              val.numel(), " values for ", col.numel(), " stored entries");
  auto y = row_major ? at::empty({batch, rows}, xp.options()) : at::empty({rows, batch}, xp.options());
  if (rows == 0 || batch == 0) return y;
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
    case AVX512: st_avx512::spmm_packed(crow, col, val, pp, bp, xp, y, rows, batch, row_major); break;
    case AVX2: st_avx2::spmm_packed(crow, col, val, pp, bp, xp, y, rows, batch, row_major); break;
#endif
    default: st_generic::spmm_packed(crow, col, val, pp, bp, xp, y, rows, batch, row_major);
  }
  return y;
}

at::Tensor spmm(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& val,
                const c10::optional<at::Tensor>& perm, const at::Tensor& xt, int64_t rows,
                const c10::optional<at::Tensor>& bias, bool row_major) {
  TORCH_CHECK(xt.dim() == 2 && xt.scalar_type() == at::kFloat, "sparsetrain::spmm: xt must be 2-d float32, got ",
              xt.scalar_type());
  return spmm_packed(crow, col, val, perm, pack(xt), xt.size(1), rows, bias, row_major);
}

at::Tensor sddmm_packed(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& gp, const at::Tensor& xp,
                        int64_t batch) {
  check_csr(crow, col, "sparsetrain::sddmm");
  TORCH_CHECK(gp.scalar_type() == at::kFloat && xp.scalar_type() == at::kFloat, "sparsetrain::sddmm: float32 only");
  auto g = at::zeros({col.numel()}, xp.options());
  if (col.numel() == 0 || batch == 0) return g;
  switch (current()) {
#if ST_X86
    case AVX512: st_avx512::sddmm_packed(crow, col, gp, xp, g, batch); break;
    case AVX2: st_avx2::sddmm_packed(crow, col, gp, xp, g, batch); break;
#endif
    default: st_generic::sddmm_packed(crow, col, gp, xp, g, batch);
  }
  return g;
}

at::Tensor sddmm(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& gyt, const at::Tensor& xt) {
  TORCH_CHECK(gyt.dim() == 2 && xt.dim() == 2 && gyt.size(1) == xt.size(1),
              "sparsetrain::sddmm: gyt (rows x B) and xt (K x B) must be 2-d with the same batch size");
  TORCH_CHECK(crow.numel() == gyt.size(0) + 1, "sparsetrain::sddmm: crow does not match gyt's rows");
  return sddmm_packed(crow, col, pack(gyt), pack(xt), xt.size(1));
}

}  // namespace

TORCH_LIBRARY(sparsetrain, m) {
  m.def("spmm(Tensor crow, Tensor col, Tensor val, Tensor? perm, Tensor xt, int rows, Tensor? bias=None, bool row_major=False) -> Tensor");
  m.def("sddmm(Tensor crow, Tensor col, Tensor gyt, Tensor xt) -> Tensor");
  m.def("pack(Tensor xt) -> Tensor");
  m.def("spmm_packed(Tensor crow, Tensor col, Tensor val, Tensor? perm, Tensor xp, int batch, int rows, Tensor? bias=None, bool row_major=False) -> Tensor");
  m.def("sddmm_packed(Tensor crow, Tensor col, Tensor gp, Tensor xp, int batch) -> Tensor");
  m.def("isa() -> str", &isa);
  m.def("isas() -> str[]", &isas);
  m.def("set_isa(str name) -> str", &set_isa);
}
TORCH_LIBRARY_IMPL(sparsetrain, CPU, m) {
  m.impl("spmm", &spmm);
  m.impl("sddmm", &sddmm);
  m.impl("pack", &pack);
  m.impl("spmm_packed", &spmm_packed);
  m.impl("sddmm_packed", &sddmm_packed);
}
