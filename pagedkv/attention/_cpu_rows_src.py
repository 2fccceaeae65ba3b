"""C++ source of the fused row operations of the native Llama forward (kernel namespace ``NS``).

Why: between its GEMMs a Llama layer runs ~20 small element-wise torch ops (RMSNorm alone is
pow, mean, add, rsqrt and two multiplies; SiLU-and-multiply two more over the MLP's widest
tensor), each a pass over memory plus a dispatch. Here each becomes one pass per row:

- ``rms_norm``: ``w * (x * rsqrt(mean(x^2) + eps))``, statistics in float32, the normalised row
  rounded to the model's dtype before the weight (as ``LlamaRMSNorm``); ``add_rms_norm`` first
  adds the residual into ``h`` in place.
- ``silu_mul``: ``silu(gate) * up`` from the fused gate|up GEMM's output (bfloat16: the SiLU
  rounded before the product, as torch's two ops do). Its 16-lane formula, ``silu_mul16``, is
  also the panel GEMM's fused epilogue (:mod:`pagedkv.attention._cpu_gemm_src`): one copy, so
  the two paths give the same bits.
- ``rope``: ``x * cos + rotate_half(x) * sin`` on the q and k heads of the fused qkv output, in
  place.

Values equal torch's up to float32 rounding (sums in another order, one exp implementation
for another); the native forward's tests compare greedy tokens with HF ``generate``.
"""

from __future__ import annotations

ROWS_KERNEL = r"""
// ---- Fused row operations (float / bfloat16 rows, sizes multiple of 16).
// v rounded to T and back (a no-op for float): where torch would hold a T tensor.
template <typename T>
inline vf round_to(vf v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    const vh h = to_bf16(v);
    const vi w = __builtin_convertvector(h, vi) << 16;
    vf f; std::memcpy(&f, &w, 64); return f;
  }
}

template <typename T>
void rms_row(const T* x, const T* w, float eps, int64_t H, T* out) {
  vf acc = vf{};
  for (int64_t i = 0; i < H; i += 16) { const vf v = load16(x + i); acc += v * v; }
  const float r = 1.f / std::sqrt(hsum(acc) / static_cast<float>(H) + eps);
  for (int64_t i = 0; i < H; i += 16)
    store16(out + i, load16(w + i) * round_to<T>(load16(x + i) * r));
}

template <typename T>
void add_rms_row(T* h, const T* y, const T* w, float eps, int64_t H, T* out) {
  for (int64_t i = 0; i < H; i += 16) store16(h + i, load16(h + i) + load16(y + i));
  rms_row<T>(h, w, eps, H, out);
}

// silu(g) * u of 16 lanes: g / (1 + exp(-g)) as torch computes it, with e = exp(-|g|) (vexp
// takes x <= 0; for g < 0, g / (1 + 1/e) = g e / (e + 1), which cannot overflow); the SiLU
// rounded to T before the product. The one copy of the formula: silu_mul_row and the panel
// GEMM's fused epilogue (panels::gemm_silu_mul, which calls k_avx512's, compiled for the same
// target) both inline it, so the fused and the unfused paths give the same bits.
template <typename T>
inline vf silu_mul16(vf g, vf u) {
  const vi neg = g < splat(0.f);
  const vf e = vexp(neg ? g : -g);
  const vf silu = (neg ? g * e : g) / (splat(1.f) + e);
  return round_to<T>(silu) * u;
}

template <typename T>
void silu_mul_row(const T* gu, int64_t I, T* out) {
  for (int64_t i = 0; i < I; i += 16)
    store16(out + i, silu_mul16<T>(load16(gu + i), load16(gu + I + i)));
}

// nh heads of D = 16 C at x (row-major [nh, D]), in place; C even (D a multiple of 32).
template <typename T, int C>
void rope_row(T* x, const T* cs, const T* sn, int64_t nh) {
  vf c[C], s[C];
  for (int k = 0; k < C; ++k) { c[k] = load16(cs + 16 * k); s[k] = load16(sn + 16 * k); }
  for (int64_t h = 0; h < nh; ++h) {
    T* p = x + h * 16 * C;
    vf v[C];
    for (int k = 0; k < C; ++k) v[k] = load16(p + 16 * k);
    for (int k = 0; k < C; ++k) store16(p + 16 * k, v[k] * c[k] + v[(k + C / 2) % C] * s[k]);
  }
}

template <typename T>
void rope_any(T* x, const T* cs, const T* sn, int64_t nh, int64_t D) {
  switch (D) {
    case 32: rope_row<T, 2>(x, cs, sn, nh); break;
    case 64: rope_row<T, 4>(x, cs, sn, nh); break;
    case 128: rope_row<T, 8>(x, cs, sn, nh); break;
    default: rope_row<T, 16>(x, cs, sn, nh); break;
  }
}

// One row of op (0 rms_norm, 1 add_rms_norm, 2 silu_mul, 3 rope); RowArgs in the header.
template <typename T>
void row_op(int op, const RowArgs& r, int64_t t) {
  T* a = static_cast<T*>(r.a) + t * r.stride_a;
  switch (op) {
    case 0: rms_row<T>(a, static_cast<const T*>(r.w), r.eps, r.n,
                       static_cast<T*>(r.out) + t * r.stride_out); break;
    case 1: add_rms_row<T>(a, static_cast<const T*>(r.b) + t * r.n, static_cast<const T*>(r.w),
                           r.eps, r.n, static_cast<T*>(r.out) + t * r.stride_out); break;
    case 2: silu_mul_row<T>(a, r.n, static_cast<T*>(r.out) + t * r.stride_out); break;
    default: rope_any<T>(a, static_cast<const T*>(r.b) + t * r.d,
                         static_cast<const T*>(r.w) + t * r.d, r.heads, r.d); break;
  }
}

void rows(int op, bool bf16, const RowArgs& r, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    if (bf16) row_op<c10::BFloat16>(op, r, t);
    else row_op<float>(op, r, t);
  }
}
"""
