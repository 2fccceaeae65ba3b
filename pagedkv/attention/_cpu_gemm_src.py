"""C++ source of the panel GEMM: the native forward's float32 projections on AVX-512 CPUs.

Why: at the row counts a CPU engine runs (a decode step's 1-64 rows, a prompt chunk's up to a
few thousand), oneDNN's packed GEMM left a third of these cores' float32 peak unused on the
narrow projections: ``[48, 576] x [576, 576]`` at ~150 GFLOP/s, with a cliff from 43 rows on
(see docs/performance.md). The arithmetic is simple enough to do it ourselves: each output tile
of ``MR`` rows by 48 columns lives in 24 of the 32 AVX-512 registers, and the weight is packed
once so that the 48 columns of one ``k`` are one contiguous 192-byte load.

Packed layout (``pack_panels``), for a weight ``W`` ``[N, K]`` (float32)::

    N padded with zero rows to Np = ceil(N / 16) * 16, then cut into panels of 48 columns
    (the last one 16 or 32 wide):

        panel p = columns n0 = 48p .. n0 + w - 1,  w = min(48, Np - n0)
        flat[n0 * K + k * w + j] = W[n0 + j, k]        (k < K, j < w)

    so a panel is ``[K, w]`` row-major and the panels sit one after another (Np * K floats).

``panel_gemm`` computes ``out[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n])`` for ``x`` ``[M, K]``:
tasks are (chunk of 64 rows, panel) pairs, panel-major (task ``t`` is panel ``t / chunks``,
chunk ``t % chunks``), split over torch's threads in contiguous ranges, so each thread takes
whole panels for all the rows. Why panel-major: chunk-major gave 65 rows' tasks as one full
64-row chunk to one thread and a 1-row chunk to the other, and a 65-row GEMM took as long as a
128-row one (0.64x oneDNN; a 65-token step 152 ms against 83 for 64 tokens); panel-major
splits any row count evenly, and a thread's panel stays in L2 across its chunks, so the weight
is read from memory once. In a task, ``k`` goes in
near-equal blocks of at most 768, and in each block every group of up to 8 rows keeps its
``8 x 48`` sums in registers (one float32 FMA chain per output, ``k`` in order), then stores
them (the first block) or adds them to the output. The block's slice of the panel and of the
chunk's rows stay in L2 while the row groups reuse them. An output's order of operations
depends on ``K`` only, not on ``M`` or on the row's place in a tile, so a row's result is the
same bit for bit in any batch.

``panel_silu_mul`` is the gate/up projection of a Llama MLP with its SiLU-and-multiply as the
epilogue: ``out[m, c] = silu(g) * u`` for ``g = x Wg^T + bg``, ``u = x Wu^T + bu`` (``c < I``,
``I`` a multiple of 16), from the panels of ``Wg`` followed by those of ``Wu``, so panel ``q``
of both covers the same columns. Why: the unfused path writes the ``[M, 2I]`` gate|up output
and reads it back for the row pass (at a prompt chunk's 2,048 rows of SmolLM2, 25 MB each
way). A task is (64-row chunk, panel ``q``): both tiles are summed exactly as ``panel_gemm``
sums them (the same ``tile`` calls into a task-local ``[64, 96]`` scratch, gate in columns
0-47, up in 48-95, which stays in L1/L2), then the SiLU-and-multiply reads the scratch through
``silu_mul16``, the one copy of the formula that the row kernel's ``silu_mul_row`` uses
(:mod:`pagedkv.attention._cpu_rows_src`, its AVX-512 copy, the same compile target as this
GEMM). The result is therefore bit-identical to ``silu_mul`` of ``panel_gemm``'s gate|up
output, whatever the panels of the concatenated weight would have been.
"""

from __future__ import annotations

GEMM_KERNEL = r"""
// The panel layout, the one definition pack_panels and the GEMM both read.
namespace panels {
constexpr int64_t kPanel = 48;  // columns a panel (3 vectors of 16)
inline int64_t padded_cols(int64_t n) { return (n + 15) / 16 * 16; }  // N up to whole vectors
inline int64_t num_panels(int64_t n) { return (padded_cols(n) + kPanel - 1) / kPanel; }
}  // namespace panels

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
namespace panels {

constexpr int64_t kRowChunk = 64;  // rows a task
constexpr int64_t kDepth = 768;  // the longest k block a sum stays in registers for

// The k block length for K: k in near-equal blocks of at most kDepth. A sum is kept in
// registers for one block, then added to the output, which bounds its rounding error as K grows
// (Llama-8B's K = 14,336: one chain had 19x F.linear's largest error against float64, blocks of
// <= 768 have 1.6x) and keeps a block of the panel in L2. Shorter blocks (256, 384) cost 4-8%
// on K = 576.
inline int64_t k_block(int64_t K) {
  const int64_t nkb = std::max<int64_t>(1, (K + kDepth - 1) / kDepth);
  return std::max<int64_t>(1, (K + nkb - 1) / nkb);
}

// Rows [0, MR) of x (ldx apart) times k = 0 .. K-1 of one panel (NV vectors wide, so its
// rows 16 * NV floats apart) into out (ldo apart): stored when `first`, else added to what is
// there; `bias` (or null) added when `last`. Columns at or past `valid` (the end of W's real
// columns within this panel) are neither read nor written.
template <int MR, int NV>
inline void tile(const float* x, int64_t ldx, const float* w, int64_t K, const float* bias,
                 int64_t valid, float* out, int64_t ldo, bool first, bool last) {
  __m512 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 wv[NV];
    for (int j = 0; j < NV; ++j) wv[j] = _mm512_loadu_ps(w + k * (16 * NV) + 16 * j);
    for (int i = 0; i < MR; ++i) {
      const __m512 xb = _mm512_set1_ps(x[i * ldx + k]);
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(xb, wv[j], acc[i][j]);
    }
  }
  for (int j = 0; j < NV; ++j) {
    const int64_t left = valid - 16 * j;
    if (left <= 0) break;
    const __mmask16 mask = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
    const __m512 b = last && bias ? _mm512_maskz_loadu_ps(mask, bias + 16 * j)
                                  : _mm512_setzero_ps();
    for (int i = 0; i < MR; ++i) {
      float* o = out + i * ldo + 16 * j;
      __m512 v = acc[i][j];
      if (!first) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), v);
      _mm512_mask_storeu_ps(o, mask, _mm512_add_ps(v, b));
    }
  }
}

// All M rows of x against k = 0 .. K-1 of one panel: blocks of 8 rows, then the 1-7 left.
template <int NV>
void panel_rows(const float* x, int64_t ldx, int64_t M, int64_t K, const float* w,
                const float* bias, int64_t valid, float* out, int64_t ldo, bool first,
                bool last) {
  int64_t m = 0;
  for (; m + 8 <= M; m += 8)
    tile<8, NV>(x + m * ldx, ldx, w, K, bias, valid, out + m * ldo, ldo, first, last);
  const float* xm = x + m * ldx;
  float* om = out + m * ldo;
  switch (M - m) {
    case 1: tile<1, NV>(xm, ldx, w, K, bias, valid, om, ldo, first, last); break;
    case 2: tile<2, NV>(xm, ldx, w, K, bias, valid, om, ldo, first, last); break;
    case 3: tile<3, NV>(xm, ldx, w, K, bias, valid, om, ldo, first, last); break;
    case 4: tile<4, NV>(xm, ldx, w, K, bias, valid, om, ldo, first, last); break;
    case 5: tile<5, NV>(xm, ldx, w, K, bias, valid, om, ldo, first, last); break;
    case 6: tile<6, NV>(xm, ldx, w, K, bias, valid, om, ldo, first, last); break;
    case 7: tile<7, NV>(xm, ldx, w, K, bias, valid, om, ldo, first, last); break;
    default: break;
  }
}

// panel_rows for a panel `width` (48, 32 or 16) columns wide.
inline void panel_block(int64_t width, const float* x, int64_t ldx, int64_t M, int64_t K,
                        const float* w, const float* bias, int64_t valid, float* out,
                        int64_t ldo, bool first, bool last) {
  if (width == 48) panel_rows<3>(x, ldx, M, K, w, bias, valid, out, ldo, first, last);
  else if (width == 32) panel_rows<2>(x, ldx, M, K, w, bias, valid, out, ldo, first, last);
  else panel_rows<1>(x, ldx, M, K, w, bias, valid, out, ldo, first, last);
}

void gemm(const float* x, int64_t M, int64_t K, const float* packed, const float* bias,
          int64_t N, float* out) {
  const int64_t np = padded_cols(N), npan = num_panels(N);
  const int64_t nchunks = (M + kRowChunk - 1) / kRowChunk, kc = k_block(K);
  at::parallel_for(0, nchunks * npan, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m0 = (t % nchunks) * kRowChunk, rows = std::min(kRowChunk, M - m0);
      const int64_t n0 = (t / nchunks) * kPanel, width = std::min(kPanel, np - n0);
      const float* b = bias ? bias + n0 : nullptr;
      float* o = out + m0 * N + n0;
      const int64_t valid = N - n0;
      for (int64_t k0 = 0;; k0 += kc) {  // once when K == 0: the bias, or zeros
        const int64_t kn = std::min(kc, K - k0);
        const bool first = k0 == 0, last = k0 + kc >= K;
        const float* xm = x + m0 * K + k0;
        const float* w = packed + n0 * K + k0 * width;
        panel_block(width, xm, K, rows, kn, w, b, valid, o, N, first, last);
        if (last) break;
      }
    }
  });
}

// out [M, I] = silu(x Wg^T + bg) * (x Wu^T + bu), I a multiple of 16 (no padded columns), pg /
// pu the panels of Wg / Wu, bg / bu their biases or null. Each task (64-row chunk, panel q)
// sums gate and up block by block with gemm's own calls into its scratch (ld 2 * kPanel: gate
// in columns [0, width), up in [kPanel, kPanel + width)), then writes silu(g) * u row by row.
void gemm_silu_mul(const float* x, int64_t M, int64_t K, const float* pg, const float* pu,
                   const float* bg, const float* bu, int64_t I, float* out) {
  const int64_t npan = num_panels(I), kc = k_block(K);
  const int64_t nchunks = (M + kRowChunk - 1) / kRowChunk, lds = 2 * kPanel;
  at::parallel_for(0, nchunks * npan, 1, [&](int64_t t0, int64_t t1) {
    alignas(64) float s[kRowChunk * 2 * kPanel];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m0 = (t % nchunks) * kRowChunk, rows = std::min(kRowChunk, M - m0);
      const int64_t n0 = (t / nchunks) * kPanel, width = std::min(kPanel, I - n0);
      const float* g_bias = bg ? bg + n0 : nullptr;
      const float* u_bias = bu ? bu + n0 : nullptr;
      for (int64_t k0 = 0;; k0 += kc) {  // once when K == 0: the biases, or zeros
        const int64_t kn = std::min(kc, K - k0), off = n0 * K + k0 * width;
        const bool first = k0 == 0, last = k0 + kc >= K;
        const float* xm = x + m0 * K + k0;
        panel_block(width, xm, K, rows, kn, pg + off, g_bias, width, s, lds, first, last);
        panel_block(width, xm, K, rows, kn, pu + off, u_bias, width, s + kPanel, lds, first,
                    last);
        if (last) break;
      }
      for (int64_t m = 0; m < rows; ++m) {
        const float* g = s + m * lds;
        float* o = out + (m0 + m) * I + n0;
        for (int64_t j = 0; j < width; j += 16)
          k_avx512::store16(o + j, k_avx512::silu_mul16<float>(k_avx512::load16(g + j),
                                                               k_avx512::load16(g + kPanel + j)));
      }
    }
  });
}

}  // namespace panels
#pragma GCC pop_options
#endif
"""

GEMM_ENTRIES = r"""
// Panel GEMM entry points; see pagedkv/attention/_cpu_gemm_src.py for the layout and
// pagedkv/integrations/panel_gemm.py for the contract.
torch::Tensor pack_panels(torch::Tensor w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous(),
              "pagedkv pack_panels: weight must be a contiguous float32 [N, K]");
  const int64_t N = w.size(0), K = w.size(1), np = panels::padded_cols(N);
  auto out = torch::zeros({np * K}, w.options());
  const float* src = w.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, panels::num_panels(N), 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * panels::kPanel, width = std::min(panels::kPanel, np - n0);
      for (int64_t j = 0; j < width && n0 + j < N; ++j)
        for (int64_t k = 0; k < K; ++k) dst[n0 * K + k * width + j] = src[(n0 + j) * K + k];
    }
  });
  return out;
}

torch::Tensor panel_gemm(torch::Tensor x, torch::Tensor packed, torch::Tensor bias, int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "pagedkv panel_gemm: x must be a contiguous float32 [M, K]");
  const int64_t M = x.size(0), K = x.size(1), np = panels::padded_cols(N);
  TORCH_CHECK(packed.scalar_type() == at::kFloat && packed.is_contiguous() &&
              packed.numel() == np * K, "pagedkv panel_gemm: packed weight is not [", N, ", ",
              K, "] in panels");
  TORCH_CHECK(bias.numel() == 0 || (bias.numel() == N && bias.scalar_type() == at::kFloat &&
              bias.is_contiguous()), "pagedkv panel_gemm: bias must be float32 [", N, "]");
  auto out = torch::empty({M, N}, x.options());
#if defined(__x86_64__) || defined(__i386__)
  TORCH_CHECK(cpu_has_avx512(), "pagedkv panel_gemm: needs AVX-512");
  if (M > 0)
    panels::gemm(x.data_ptr<float>(), M, K, packed.data_ptr<float>(),
                 bias.numel() ? bias.data_ptr<float>() : nullptr, N, out.data_ptr<float>());
#else
  TORCH_CHECK(false, "pagedkv panel_gemm: needs an x86-64 CPU with AVX-512");
#endif
  return out;
}

torch::Tensor panel_silu_mul(torch::Tensor x, torch::Tensor packed, torch::Tensor bias,
                             int64_t I) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "pagedkv panel_silu_mul: x must be a contiguous float32 [M, K]");
  TORCH_CHECK(I >= 0 && I % 16 == 0, "pagedkv panel_silu_mul: the gate/up width must be a "
              "multiple of 16 (as fused_rows' silu_mul), got ", I);
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(packed.scalar_type() == at::kFloat && packed.is_contiguous() &&
              packed.numel() == 2 * I * K, "pagedkv panel_silu_mul: packed weight is not gate [",
              I, ", ", K, "] in panels followed by up [", I, ", ", K, "] in panels");
  TORCH_CHECK(bias.numel() == 0 || (bias.numel() == 2 * I && bias.scalar_type() == at::kFloat &&
              bias.is_contiguous()), "pagedkv panel_silu_mul: bias must be float32 gate|up [",
              2 * I, "]");
  auto out = torch::empty({M, I}, x.options());
#if defined(__x86_64__) || defined(__i386__)
  TORCH_CHECK(cpu_has_avx512(), "pagedkv panel_silu_mul: needs AVX-512");
  const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  const float* p = packed.data_ptr<float>();
  if (M > 0)
    panels::gemm_silu_mul(x.data_ptr<float>(), M, K, p, p + I * K, b, b ? b + I : nullptr, I,
                          out.data_ptr<float>());
#else
  TORCH_CHECK(false, "pagedkv panel_silu_mul: needs an x86-64 CPU with AVX-512");
#endif
  return out;
}
"""
