"""C++ source of the compiled CPU paged-decode kernel (kept as a string so it ships as a module).

The kernel body is emitted three times: inside ``#pragma GCC target("avx512f,avx2,fma")``,
inside ``#pragma GCC target("avx2,fma")`` and for the baseline ISA; ``decode`` picks one at run
time (``isa=1`` and ``cpu_has_avx512()`` / ``cpu_has_avx2()``), so the build needs no ``-march``
flag and the library runs on any x86-64 (or non-x86) CPU. Rows of a head_dim divisible by 16 in
float32 or bfloat16 take a vectorised block (16-lane GCC vector types, a vector ``exp``); other
head sizes and float16 take the scalar-loop block.
"""

from __future__ import annotations

_HEADER = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

// One decode call. Shapes: q/out [B, Hq, D]; kv [N, 2, BS, Hkv, D] (contiguous);
// tables int64 [B, M]; lens int32 [B]; sinks fp32 [Hq] or null (learned sink logits);
// softcap > 0: logits become softcap * tanh(logits / softcap).
struct Args {
  const void* q; const void* kv; void* out;
  const int64_t* tables; const int32_t* lens; const float* sinks;
  int64_t m, hq, hkv, d, bs;
  float scale, softcap; int64_t window, sink;
};

// Per-task scratch for nh query heads: q, acc [nh, D]; scores [nh, BS]; a row [D]; max, sum [nh].
inline int64_t ws_floats(const Args& a, int64_t nh) {
  return 2 * nh * a.d + nh * a.bs + a.d + 2 * nh;
}
"""

# Flash-decoding for one (sequence, kv head): the g query heads of the group share each K/V row.
_KERNEL = r"""
namespace NS {

// Scores, online-softmax update and V accumulation for tokens [t0, t1) of one block and the
// query heads of kv heads [kh0, kh1). kb/vb point at the block's K/V [BS, Hkv, D].
// A K or V row as fp32: the row itself for float caches, else converted into ``buf``.
template <typename T>
inline const float* as_float_row(const T* src, int64_t D, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
    for (int64_t i = 0; i < D; ++i) buf[i] = static_cast<float>(src[i]);
    return buf;
  }
}

template <typename T>
inline void attend_block(const Args& a, const T* kb, const T* vb, int64_t t0, int64_t t1,
                         int64_t kh0, int64_t kh1, float* ws) {
  const int64_t g = a.hq / a.hkv, D = a.d, BS = a.bs, stride = a.hkv * a.d;
  const int64_t nh = (kh1 - kh0) * g;
  float* qf = ws; float* acc = qf + nh * D; float* s = acc + nh * D;
  float* row = s + nh * BS; float* mx = row + D; float* sum = mx + nh;
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t kh = kh0; kh < kh1; ++kh) {
      const float* kr = as_float_row(kb + t * stride + kh * D, D, row);
      for (int64_t h = (kh - kh0) * g; h < (kh - kh0 + 1) * g; ++h) {
        const float* qh = qf + h * D;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < D; ++i) dot += qh[i] * kr[i];
        if (a.softcap > 0.f) dot = a.softcap * std::tanh(dot / a.softcap);
        s[h * BS + t] = dot;
      }
    }
  }
  for (int64_t h = 0; h < nh; ++h) {
    float* sh = s + h * BS;
    float bm = mx[h];
    for (int64_t t = t0; t < t1; ++t) bm = std::max(bm, sh[t]);
    const float corr = std::exp(mx[h] - bm);  // exp(-inf) = 0 on the first block
    float tot = sum[h] * corr;
    for (int64_t t = t0; t < t1; ++t) { sh[t] = std::exp(sh[t] - bm); tot += sh[t]; }
    sum[h] = tot; mx[h] = bm;
    if (corr != 1.f) {
      float* ah = acc + h * D;
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) ah[i] *= corr;
    }
  }
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t kh = kh0; kh < kh1; ++kh) {
      const float* vr = as_float_row(vb + t * stride + kh * D, D, row);
      for (int64_t h = (kh - kh0) * g; h < (kh - kh0 + 1) * g; ++h) {
        const float p = s[h * BS + t];
        float* ah = acc + h * D;
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) ah[i] += p * vr[i];
      }
    }
  }
}

// ---- Vectorised block for D % 16 == 0 and float / bfloat16 caches (the common case).
// GCC vector extensions: 16 fp32 lanes, lowered to AVX-512, 2x AVX2 or 4x SSE by the
// target this copy is compiled for.
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));

inline vf splat(float x) { return vf{} + x; }
inline vf load16(const float* p) { vf v; std::memcpy(&v, p, 64); return v; }
inline vf load16(const c10::BFloat16* p) {  // bf16 -> fp32: the 16 bits are fp32's high half
  vh h; std::memcpy(&h, p, 32);
  vi w = __builtin_convertvector(h, vi) << 16;
  vf f; std::memcpy(&f, &w, 64); return f;
}
inline float hsum(vf v) {
  vf a = v + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  a = a + __builtin_shufflevector(a, a, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
  a = a + __builtin_shufflevector(a, a, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
  return a[0] + a[1];
}
// exp(x) for x <= 0 (a score minus the running max): Cephes' expf (Cody-Waite reduction,
// degree-6 polynomial, ~1 ulp); lanes below -87.3 (exp underflows, -inf padding) give 0.
inline vf vexp(vf x) {
  const vi under = x < splat(-87.3f);
  x = under ? splat(-87.3f) : x;
  const vf t = x * splat(1.44269504088896341f) - splat(0.5f);
  const vi n = __builtin_convertvector(t, vi);  // round to nearest for t <= 0 (truncation)
  const vf nf = __builtin_convertvector(n, vf);
  const vf r = x - nf * splat(0.693359375f) + nf * splat(2.12194440e-4f);
  vf p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  const vi bits = (n + 127) << 23;
  vf scale; std::memcpy(&scale, &bits, 64);
  const vf e = p * scale;
  return under ? vf{} : e;
}

inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < 16; ++i) m = std::max(m, v[i]);
  return m;
}

// The 16 lane sums of 16 vectors in one vector: three halving steps of "shuffle the lower and
// the upper halves of each lane group of two vectors together and add", then one more. The
// result's lane L holds the sum of input d[REV[L]] (bit reversal), so token j goes in d[REV[j]].
constexpr int REV[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
inline vf sums16(const vf* d) {
  vf w8[8], w4[4], w2[2];
  for (int i = 0; i < 8; ++i)
    w8[i] = __builtin_shufflevector(d[2 * i], d[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18,
                                    19, 20, 21, 22, 23) +
            __builtin_shufflevector(d[2 * i], d[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25,
                                    26, 27, 28, 29, 30, 31);
  for (int i = 0; i < 4; ++i)
    w4[i] = __builtin_shufflevector(w8[2 * i], w8[2 * i + 1], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9,
                                    10, 11, 24, 25, 26, 27) +
            __builtin_shufflevector(w8[2 * i], w8[2 * i + 1], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13,
                                    14, 15, 28, 29, 30, 31);
  for (int i = 0; i < 2; ++i)
    w2[i] = __builtin_shufflevector(w4[2 * i], w4[2 * i + 1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9,
                                    24, 25, 12, 13, 28, 29) +
            __builtin_shufflevector(w4[2 * i], w4[2 * i + 1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11,
                                    26, 27, 14, 15, 30, 31);
  return __builtin_shufflevector(w2[0], w2[1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28,
                                 14, 30) +
         __builtin_shufflevector(w2[0], w2[1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29,
                                 15, 31);
}

// One query head h of sequence b over keys [lo, hi) of its block table, D = 16 C: q, the
// output accumulator o, the running max m and sum l stay in registers; keys go 16 at a time
// (one vector of 16 scores, one vector exp, then 16 V rows into o).
template <typename T, int C>
struct HeadState {
  vf q[C], o[C];
  float m = -INFINITY, l = 0.f;

  inline void keys(const Args& a, const T* kr0, const T* vr0, int64_t stride, int n) {
    vf d[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) {
      vf x = vf{};
      if (j < n) {
        const T* kr = kr0 + j * stride;
        x = q[0] * load16(kr);
        for (int c = 1; c < C; ++c) x += q[c] * load16(kr + 16 * c);
      }
      d[REV[j]] = x;
    }
    const vi iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    vf s = sums16(d);
    s = iota < n ? s : splat(-INFINITY);
    if (a.softcap > 0.f) {
      alignas(64) float t[16];
      std::memcpy(t, &s, 64);
      for (int j = 0; j < n; ++j) t[j] = a.softcap * std::tanh(t[j] / a.softcap);
      std::memcpy(&s, t, 64);
    }
    const float nm = std::max(m, hmax(s));
    const float corr = m == nm ? 1.f : std::exp(m - nm);  // 0 on the first keys
    const vf p = vexp(s - nm);
    l = l * corr + hsum(p);
    m = nm;
    if (corr != 1.f)
      for (int c = 0; c < C; ++c) o[c] *= corr;
    alignas(64) float pa[16];
    std::memcpy(pa, &p, 64);
    for (int j = 0; j < n; ++j) {
      const vf pj = splat(pa[j]);
      const T* vr = vr0 + j * stride;
      for (int c = 0; c < C; ++c) o[c] += pj * load16(vr + 16 * c);
    }
  }
};

// attend() for float / bfloat16 caches with D = 16 C: the same visible keys, sinks and output.
template <typename T, int C>
void attend_vec(const Args& a, int64_t b, int64_t kh0, int64_t kh1) {
  const int64_t g = a.hq / a.hkv, D = a.d, BS = a.bs, stride = a.hkv * a.d;
  const int64_t len = a.lens[b];
  int64_t lo[2] = {0, len}, hi[2] = {len, len};
  if (a.window > 0 && len > a.window) {
    const int64_t sink_end = std::min(a.sink, len), wlo = len - a.window;
    if (wlo > sink_end) { hi[0] = sink_end; lo[1] = wlo; }
  }
  const T* kv = static_cast<const T*>(a.kv);
  const int64_t* table = a.tables + b * a.m;
  for (int64_t h = kh0 * g; h < kh1 * g; ++h) {
    const int64_t kh = h / g;
    HeadState<T, C> st;
    const T* q = static_cast<const T*>(a.q) + (b * a.hq + h) * D;
    for (int c = 0; c < C; ++c) { st.q[c] = load16(q + 16 * c) * a.scale; st.o[c] = vf{}; }
    for (int r = 0; r < 2; ++r) {
      for (int64_t p = lo[r]; p < hi[r];) {
        const int64_t blk = p / BS, t0 = p - blk * BS;
        const int64_t t1 = std::min(BS, hi[r] - blk * BS);
        const T* kb = kv + table[blk] * 2 * BS * stride + kh * D;
        if (h == kh0 * g && (blk + 1) * BS < hi[r]) {
          // The task's first head fetches the next block whole (K and V of every kv head, one
          // contiguous run) into cache; the other heads then find the sequence in L2.
          const char* nk = reinterpret_cast<const char*>(kv + table[blk + 1] * 2 * BS * stride);
          const int64_t bytes = 2 * BS * stride * static_cast<int64_t>(sizeof(T));
          for (int64_t byte = 0; byte < bytes; byte += 64) __builtin_prefetch(nk + byte);
        }
        for (int64_t t = t0; t < t1; t += 16) {
          const int n = static_cast<int>(std::min<int64_t>(16, t1 - t));
          st.keys(a, kb + t * stride, kb + (BS + t) * stride, stride, n);
        }
        p = blk * BS + t1;
      }
    }
    float corr = 1.f, tot = st.l;
    if (a.sinks != nullptr) {  // the sink's exp(logit) joins the denominator, adds no value
      const float sk = a.sinks[h], mm = std::max(st.m, sk);
      corr = std::exp(st.m - mm);
      tot = tot * corr + std::exp(sk - mm);
    }
    const float inv = tot > 0.f ? corr / tot : 0.f;
    T* o = static_cast<T*>(a.out) + (b * a.hq + h) * D;
    for (int c = 0; c < C; ++c) {
      alignas(64) float f[16];
      const vf v = st.o[c] * inv;
      std::memcpy(f, &v, 64);
      for (int i = 0; i < 16; ++i) o[16 * c + i] = static_cast<T>(f[i]);
    }
  }
}

// The vectorised attend for this head size, or false (the scalar one runs instead).
template <typename T>
inline bool attend_fast(const Args& a, int64_t b, int64_t kh0, int64_t kh1) {
  switch (a.d) {
    case 32: attend_vec<T, 2>(a, b, kh0, kh1); return true;
    case 64: attend_vec<T, 4>(a, b, kh0, kh1); return true;
    case 128: attend_vec<T, 8>(a, b, kh0, kh1); return true;
    case 256: attend_vec<T, 16>(a, b, kh0, kh1); return true;
    default: return false;
  }
}

// Sequence b, kv heads [kh0, kh1): out[b, kh0*g : kh1*g] (all their query heads).
template <typename T>
void attend(const Args& a, int64_t b, int64_t kh0, int64_t kh1, float* ws) {
  const int64_t g = a.hq / a.hkv, D = a.d, BS = a.bs, stride = a.hkv * a.d;
  const int64_t nh = (kh1 - kh0) * g;
  float* qf = ws; float* acc = qf + nh * D; float* mx = acc + nh * D + nh * BS + D;
  float* sum = mx + nh;
  const T* q = static_cast<const T*>(a.q) + (b * a.hq + kh0 * g) * D;
  for (int64_t i = 0; i < nh * D; ++i) {
    qf[i] = static_cast<float>(q[i]) * a.scale;
    acc[i] = 0.f;
  }
  for (int64_t h = 0; h < nh; ++h) {
    mx[h] = -std::numeric_limits<float>::infinity();
    sum[h] = 0.f;
  }
  const int64_t len = a.lens[b];
  // Visible keys of the query at position len - 1: [0, len), or with a window
  // [0, min(sink, len)) U [len - window, len) (HF convention, window >= 1).
  int64_t lo[2] = {0, len}, hi[2] = {len, len};
  if (a.window > 0 && len > a.window) {
    const int64_t sink_end = std::min(a.sink, len), wlo = len - a.window;
    if (wlo > sink_end) { hi[0] = sink_end; lo[1] = wlo; }
  }
  const T* kv = static_cast<const T*>(a.kv);
  const int64_t* table = a.tables + b * a.m;
  for (int r = 0; r < 2; ++r) {
    for (int64_t p = lo[r]; p < hi[r];) {
      const int64_t blk = p / BS, t0 = p - blk * BS;
      const int64_t t1 = std::min(BS, hi[r] - blk * BS);
      const T* kb = kv + table[blk] * 2 * BS * stride;
      attend_block<T>(a, kb, kb + BS * stride, t0, t1, kh0, kh1, ws);
      p = blk * BS + t1;
    }
  }
  T* o = static_cast<T*>(a.out) + (b * a.hq + kh0 * g) * D;
  for (int64_t h = 0; h < nh; ++h) {
    float corr = 1.f, tot = sum[h];
    if (a.sinks != nullptr) {  // the sink's exp(logit) joins the denominator, adds no value
      const float sk = a.sinks[kh0 * g + h], m = std::max(mx[h], sk);
      corr = std::exp(mx[h] - m);
      tot = tot * corr + std::exp(sk - m);
    }
    const float inv = tot > 0.f ? corr / tot : 0.f;
    for (int64_t i = 0; i < D; ++i) o[h * D + i] = static_cast<T>(acc[h * D + i] * inv);
  }
}

void run(const Args& a, int64_t dtype, int64_t b, int64_t kh0, int64_t kh1, float* ws) {
  if (dtype == 0) {
    if (!attend_fast<float>(a, b, kh0, kh1)) attend<float>(a, b, kh0, kh1, ws);
  } else if (dtype == 1) {
    attend<c10::Half>(a, b, kh0, kh1, ws);
  } else if (!attend_fast<c10::BFloat16>(a, b, kh0, kh1)) {
    attend<c10::BFloat16>(a, b, kh0, kh1, ws);
  }
}

}  // namespace NS
"""

_FOOTER = r"""
}  // namespace

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx512f") && cpu_has_avx2();
#else
  return false;
#endif
}

// Paged decode attention; see pagedkv/attention/cpu_kernel.py for the contract.
torch::Tensor decode(torch::Tensor q, torch::Tensor kv, torch::Tensor tables, torch::Tensor lens,
                     double scale, int64_t window, int64_t sink, int64_t heads_per_task,
                     int64_t isa, double softcap, torch::Tensor sinks) {
  TORCH_CHECK(q.dim() == 3 && kv.dim() == 5 && kv.size(1) == 2, "pagedkv cpu decode: bad ranks");
  TORCH_CHECK(q.is_contiguous() && kv.is_contiguous() && tables.is_contiguous() &&
              lens.is_contiguous(), "pagedkv cpu decode: expected contiguous inputs");
  TORCH_CHECK(q.scalar_type() == kv.scalar_type(), "pagedkv cpu decode: q/kv dtype mismatch");
  TORCH_CHECK(tables.scalar_type() == at::kLong && lens.scalar_type() == at::kInt,
              "pagedkv cpu decode: tables int64, lens int32");
  Args a;
  a.hq = q.size(1); a.d = q.size(2); a.bs = kv.size(2); a.hkv = kv.size(3);
  a.m = tables.size(1);
  const int64_t B = q.size(0), nblocks = kv.size(0);
  TORCH_CHECK(kv.size(4) == a.d && a.hq % a.hkv == 0 && tables.size(0) == B && lens.size(0) == B,
              "pagedkv cpu decode: inconsistent shapes");
  TORCH_CHECK(sinks.numel() == 0 || (sinks.numel() == a.hq && sinks.is_contiguous() &&
              sinks.scalar_type() == at::kFloat), "pagedkv cpu decode: sinks fp32 [Hq] or empty");
  const int32_t* lp = lens.data_ptr<int32_t>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lp[b] >= 1 && (lp[b] + a.bs - 1) / a.bs <= a.m, "pagedkv cpu decode: bad length");
    for (int64_t j = 0; j < (lp[b] + a.bs - 1) / a.bs; ++j)
      TORCH_CHECK(tp[b * a.m + j] >= 0 && tp[b * a.m + j] < nblocks,
                  "pagedkv cpu decode: block id out of range: ", tp[b * a.m + j]);
  }
  auto out = torch::empty_like(q);
  a.q = q.data_ptr(); a.kv = kv.data_ptr(); a.out = out.data_ptr(); a.tables = tp; a.lens = lp;
  a.scale = static_cast<float>(scale); a.window = window; a.sink = sink;
  a.softcap = static_cast<float>(softcap);
  a.sinks = sinks.numel() == 0 ? nullptr : sinks.data_ptr<float>();
  const auto st = q.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "pagedkv cpu decode: dtype must be float32/float16/bfloat16");
  const int64_t dt = st == at::kFloat ? 0 : (st == at::kHalf ? 1 : 2);
  const bool avx512 = isa == 1 && cpu_has_avx512(), avx2 = isa == 1 && cpu_has_avx2();
  // Tasks: (sequence, run of heads_per_task kv heads). A whole-row run reads each block's K/V
  // [BS, Hkv, D] front to back; smaller runs add parallelism for small batches.
  const int64_t hpt = std::max<int64_t>(1, std::min(heads_per_task, a.hkv));
  const int64_t chunks = (a.hkv + hpt - 1) / hpt, nws = ws_floats(a, hpt * (a.hq / a.hkv));
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> ws(nws);
    for (int64_t w = begin; w < end; ++w) {
      const int64_t b = w / chunks, kh0 = (w % chunks) * hpt, kh1 = std::min(a.hkv, kh0 + hpt);
      if (avx512) k_avx512::run(a, dt, b, kh0, kh1, ws.data());
      else if (avx2) k_avx2::run(a, dt, b, kh0, kh1, ws.data());
      else k_base::run(a, dt, b, kh0, kh1, ws.data());
    }
  });
  return out;
}
"""


def cpp_source() -> str:
    """The full translation unit: header, AVX2+FMA kernel copy, baseline copy, entry points."""
    avx512 = _KERNEL.replace("NS", "k_avx512")
    avx2 = _KERNEL.replace("NS", "k_avx2")
    base = _KERNEL.replace("NS", "k_base")
    x86 = "#if defined(__x86_64__) || defined(__i386__)\n"
    return (
        _HEADER
        + x86
        + '#pragma GCC push_options\n#pragma GCC target("avx512f,avx2,fma")\n#endif\n'
        + avx512
        + x86
        + "#pragma GCC pop_options\n#endif\n"
        + x86
        + '#pragma GCC push_options\n#pragma GCC target("avx2,fma")\n#endif\n'
        + avx2
        + x86
        + "#pragma GCC pop_options\n#endif\n"
        + base
        + _FOOTER
    )
