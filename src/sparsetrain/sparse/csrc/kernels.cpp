// sparsetrain CPU kernels for SparseLinear (float32, CSR with int32 or int64 indices).
//
// All products use the "transposed activation" layout of SparseLinear: an activation x (B x K) is
// passed as xt = x^T (K x B, contiguous), which is what a chain of SparseLinear layers produces
// for free. The batch is split into tiles of T = 32 columns; each tile of xt is packed into a
// contiguous (K x T) strip that stays in L2 while every row of the sparse matrix streams over
// it, and each stored entry costs one 128-byte load and two 16-wide fused multiply-adds (its
// column index and value are read once per strip). Four independent chains hide the FMA
// latency. Built on first use by
// torch.utils.cpp_extension (see kernels.py); GCC/Clang vector extensions keep the source
// portable across SIMD widths.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

namespace {

constexpr int64_t T = 32;  // batch columns per packed strip (two 16-lane vectors)
constexpr int64_t L = 16;  // lanes of a v16
typedef float v16 __attribute__((vector_size(64), aligned(4)));

inline v16 load(const float* p) { v16 v; std::memcpy(&v, p, sizeof(v)); return v; }

// Xp[t][k][j] = xt[k][t*T + j], zero beyond B
at::Tensor pack(const at::Tensor& xt) {
  const int64_t K = xt.size(0), B = xt.size(1), nt = (B + T - 1) / T;
  if (B == nt * T) return xt.view({K, nt, T}).permute({1, 0, 2}).contiguous();
  auto xp = at::zeros({nt, K, T}, xt.options());
  auto src = xt.accessor<float, 2>();
  float* dst = xp.data_ptr<float>();
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = std::min(T, B - t * T);
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < n; ++j) dst[(t * K + k) * T + j] = src[k][t * T + j];
    }
  });
  return xp;
}

// y[r][b] = bias[r] + sum_k val[perm? perm[k] : k] * xt[col[k]][b] over the CSR row r (bias optional)
template <typename idx_t>
void spmm_impl(const idx_t* crow, const idx_t* col, const float* val, const idx_t* perm, const float* bias,
               const float* xp, float* y, int64_t rows, int64_t K, int64_t B) {
  const int64_t nt = (B + T - 1) / T;
  const int64_t rb = 256, nrb = (rows + rb - 1) / rb;
  at::parallel_for(0, nt * nrb, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t t = w / nrb, r0 = (w % nrb) * rb, r1 = std::min(rows, r0 + rb);
      const int64_t n = std::min(T, B - t * T);
      const float* strip = xp + t * K * T;
      for (int64_t r = r0; r < r1; ++r) {
        v16 a0{}, a1{}, a2{}, a3{}, b0{}, b1{}, b2{}, b3{};  // a: columns 0-15 of the strip, b: 16-31
        if (bias) { a0 += bias[r]; b0 += bias[r]; }
        const int64_t s = crow[r], e = crow[r + 1];
        int64_t k = s;
        for (; k + 4 <= e; k += 4) {
          const float v0 = val[perm ? perm[k] : k], v1 = val[perm ? perm[k + 1] : k + 1];
          const float v2 = val[perm ? perm[k + 2] : k + 2], v3 = val[perm ? perm[k + 3] : k + 3];
          const float* p0 = strip + (int64_t)col[k] * T;
          const float* p1 = strip + (int64_t)col[k + 1] * T;
          const float* p2 = strip + (int64_t)col[k + 2] * T;
          const float* p3 = strip + (int64_t)col[k + 3] * T;
          a0 += v0 * load(p0); b0 += v0 * load(p0 + L);
          a1 += v1 * load(p1); b1 += v1 * load(p1 + L);
          a2 += v2 * load(p2); b2 += v2 * load(p2 + L);
          a3 += v3 * load(p3); b3 += v3 * load(p3 + L);
        }
        for (; k < e; ++k) {
          const float v0 = val[perm ? perm[k] : k];
          const float* p0 = strip + (int64_t)col[k] * T;
          a0 += v0 * load(p0); b0 += v0 * load(p0 + L);
        }
        const v16 lo = (a0 + a1) + (a2 + a3), hi = (b0 + b1) + (b2 + b3);
        float* out = y + r * B + t * T;
        float tmp[T];
        std::memcpy(tmp, &lo, sizeof(lo));
        std::memcpy(tmp + L, &hi, sizeof(hi));
        if (n == T) std::memcpy(out, tmp, sizeof(tmp));
        else for (int64_t j = 0; j < n; ++j) out[j] = tmp[j];
      }
    }
  });
}

// g[k] = sum_b gyt[r][b] * xt[col[k]][b] for every stored entry k (row r): one dot product of
// length B per entry, 16 lanes at a time, the gradient row held in registers per tile of 4 vectors
inline float hsum(v16 p) {
  typedef float v8 __attribute__((vector_size(32), aligned(4)));
  typedef float v4 __attribute__((vector_size(16), aligned(4)));
  v8 lo, hi; std::memcpy(&lo, &p, 32); std::memcpy(&hi, reinterpret_cast<const char*>(&p) + 32, 32);
  const v8 a = lo + hi;
  v4 l4, h4; std::memcpy(&l4, &a, 16); std::memcpy(&h4, reinterpret_cast<const char*>(&a) + 16, 16);
  const v4 b = l4 + h4;
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// g[k] = sum_b gyt[r][b] * xt[col[k]][b] for every stored entry k (row r): one dot product of
// length B per entry, 16 lanes at a time, the gradient row held in registers per tile of 4 vectors
template <typename idx_t>
void sddmm_impl(const idx_t* crow, const idx_t* col, const float* gyt, const float* xt, float* g,
                int64_t rows, int64_t K, int64_t B) {
  const int64_t nv = B / L;  // full vectors; the tail is done in scalar
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* gy = gyt + r * B;
      const int64_t s = crow[r], e = crow[r + 1];
      for (int64_t k = s; k < e; ++k) {
        const float* x = xt + (int64_t)col[k] * B;
        v16 a0{}, a1{}, a2{}, a3{};
        int64_t v = 0;
        for (; v + 4 <= nv; v += 4) {
          a0 += load(gy + v * L) * load(x + v * L);
          a1 += load(gy + (v + 1) * L) * load(x + (v + 1) * L);
          a2 += load(gy + (v + 2) * L) * load(x + (v + 2) * L);
          a3 += load(gy + (v + 3) * L) * load(x + (v + 3) * L);
        }
        for (; v < nv; ++v) a0 += load(gy + v * L) * load(x + v * L);
        float sum = hsum((a0 + a1) + (a2 + a3));
        for (int64_t b = nv * L; b < B; ++b) sum += gy[b] * x[b];
        g[k] = sum;
      }
    }
  });
}

void check(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& m, const char* what) {
  TORCH_CHECK(crow.device().is_cpu() && col.device().is_cpu() && m.device().is_cpu(), what, ": CPU tensors only");
  TORCH_CHECK(m.scalar_type() == at::kFloat, what, ": float32 only");
  TORCH_CHECK(crow.scalar_type() == col.scalar_type(), what, ": crow and col index dtypes differ");
  TORCH_CHECK(crow.is_contiguous() && col.is_contiguous() && m.is_contiguous() && m.dim() == 2, what,
              ": contiguous 2-d operands expected");
}

at::Tensor spmm(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& val,
                const c10::optional<at::Tensor>& perm, const at::Tensor& xt, int64_t rows,
                const c10::optional<at::Tensor>& bias) {
  check(crow, col, xt, "sparsetrain::spmm");
  TORCH_CHECK(val.is_contiguous() && val.scalar_type() == at::kFloat, "sparsetrain::spmm: float32 values");
  TORCH_CHECK(crow.numel() == rows + 1, "sparsetrain::spmm: crow has ", crow.numel(), " entries for ", rows, " rows");
  const int64_t K = xt.size(0), B = xt.size(1);
  auto y = at::empty({rows, B}, xt.options());
  if (rows == 0 || B == 0) return y;
  auto xp = pack(xt);
  const bool p = perm.has_value() && perm->defined();
  const bool b = bias.has_value() && bias->defined();
  TORCH_CHECK(!b || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == rows),
              "sparsetrain::spmm: bias must be a contiguous float32 vector with one entry per row");
  const float* bp = b ? bias->data_ptr<float>() : nullptr;
  if (crow.scalar_type() == at::kInt)
    spmm_impl<int32_t>(crow.data_ptr<int32_t>(), col.data_ptr<int32_t>(), val.data_ptr<float>(),
                       p ? perm->data_ptr<int32_t>() : nullptr, bp, xp.data_ptr<float>(), y.data_ptr<float>(), rows, K, B);
  else
    spmm_impl<int64_t>(crow.data_ptr<int64_t>(), col.data_ptr<int64_t>(), val.data_ptr<float>(),
                       p ? perm->data_ptr<int64_t>() : nullptr, bp, xp.data_ptr<float>(), y.data_ptr<float>(), rows, K, B);
  return y;
}

at::Tensor sddmm(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& gyt, const at::Tensor& xt) {
  check(crow, col, xt, "sparsetrain::sddmm");
  TORCH_CHECK(gyt.is_contiguous() && gyt.scalar_type() == at::kFloat && gyt.size(1) == xt.size(1),
              "sparsetrain::sddmm: gyt must be contiguous float32 with xt's batch size");
  const int64_t rows = gyt.size(0), K = xt.size(0), B = xt.size(1);
  TORCH_CHECK(crow.numel() == rows + 1, "sparsetrain::sddmm: crow does not match gyt's rows");
  auto g = at::empty({col.numel()}, xt.options());
  if (col.numel() == 0) return g;
  if (B == 0) return g.zero_();
  if (crow.scalar_type() == at::kInt)
    sddmm_impl<int32_t>(crow.data_ptr<int32_t>(), col.data_ptr<int32_t>(), gyt.data_ptr<float>(),
                        xt.data_ptr<float>(), g.data_ptr<float>(), rows, K, B);
  else
    sddmm_impl<int64_t>(crow.data_ptr<int64_t>(), col.data_ptr<int64_t>(), gyt.data_ptr<float>(),
                        xt.data_ptr<float>(), g.data_ptr<float>(), rows, K, B);
  return g;
}

}  // namespace

TORCH_LIBRARY(sparsetrain, m) {
  m.def("spmm(Tensor crow, Tensor col, Tensor val, Tensor? perm, Tensor xt, int rows, Tensor? bias=None) -> Tensor");
  m.def("sddmm(Tensor crow, Tensor col, Tensor gyt, Tensor xt) -> Tensor");
}
TORCH_LIBRARY_IMPL(sparsetrain, CPU, m) {
  m.impl("spmm", &spmm);
  m.impl("sddmm", &sddmm);
}
