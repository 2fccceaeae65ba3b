"""C++ source of the compiled CPU paged-decode kernel (kept as a string so it ships as a module).

The kernel body is emitted three times: inside ``#pragma GCC target("avx512f,avx2,fma")``,
inside ``#pragma GCC target("avx2,fma")`` and for the baseline ISA; ``decode`` picks one at run
time (``isa=1`` and ``cpu_has_avx512()`` / ``cpu_has_avx2()``), so the build needs no ``-march``
flag and the library runs on any x86-64 (or non-x86) CPU. Rows of a head_dim divisible by 16 in
float32 or bfloat16 take a vectorised block (16-lane GCC vector types, a vector ``exp``); other
head sizes and float16 take the scalar-loop block.
"""

from __future__ import annotations

from pagedkv.attention._cpu_gemm_src import GEMM_ENTRIES, GEMM_KERNEL
from pagedkv.attention._cpu_kernel_vec_src import VEC_KERNEL
from pagedkv.attention._cpu_prefill_src import PREFILL_KERNEL
from pagedkv.attention._cpu_rows_src import ROWS_KERNEL

_HEADER = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

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

// One prefill call: sequence s's qlen[s] query rows start at row qstart[s] of q/out [T, Hq, D]
// and sit at positions lens[s] - qlen[s] .. lens[s] - 1 of its tables [P, M] row.
struct PArgs {
  const void* q; const void* kv; void* out;
  const int64_t* tables; const int32_t* lens; const int64_t* qstart; const int32_t* qlen;
  int64_t m, hq, hkv, d, bs; float scale;
};

// One fused_rows call (type-erased): rows of a (stride_a apart), a residual or cos b, a weight
// or signed sin w, rows of out (stride_out apart); n row size, heads/d for rope.
struct RowArgs {
  void* a; const void* b; const void* w; void* out;
  int64_t n, stride_a, stride_out, heads, d; float eps;
};

// Visible keys of the query at position len - 1, as up to two ranges [lo[r], hi[r]): [0, len),
// or with a window [0, min(sink, len)) U [len - window, len) (HF convention, window >= 1).
inline void visible_ranges(const Args& a, int64_t len, int64_t lo[2], int64_t hi[2]) {
  lo[0] = 0; hi[0] = len; lo[1] = len; hi[1] = len;
  if (a.window > 0 && len > a.window) {
    const int64_t sink_end = std::min(a.sink, len), wlo = len - a.window;
    if (wlo > sink_end) { hi[0] = sink_end; lo[1] = wlo; }
  }
}

// The factor that turns query head h's accumulator into its output, from its running max m and
// sum l: 1 / l, or with a learned sink logit the sink's exp(logit) joins the denominator (it
// adds no value). 0 when nothing was visible.
inline float output_scale(const Args& a, int64_t h, float m, float l) {
  float corr = 1.f, tot = l;
  if (a.sinks != nullptr) {
    const float sk = a.sinks[h], mm = std::max(m, sk);
    corr = std::exp(m - mm);
    tot = tot * corr + std::exp(sk - mm);
  }
  return tot > 0.f ? corr / tot : 0.f;
}

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

"""

_KERNEL_TAIL = r"""
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
  int64_t lo[2], hi[2];
  visible_ranges(a, a.lens[b], lo, hi);
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
    const float inv = output_scale(a, kh0 * g + h, mx[h], sum[h]);
    for (int64_t i = 0; i < D; ++i) o[h * D + i] = static_cast<T>(acc[h * D + i] * inv);
  }
}

// next_b: the sequence of this thread's next task (-1: none), whose first block the vectorised
// path prefetches (the scalar one is bound by its arithmetic: prefetching measured no gain).
void run(const Args& a, int64_t dtype, int64_t b, int64_t kh0, int64_t kh1, float* ws,
         int64_t next_b) {
  if (dtype == 0) {
    if (!attend_fast<float>(a, b, kh0, kh1, next_b)) attend<float>(a, b, kh0, kh1, ws);
  } else if (dtype == 1) {
    attend<c10::Half>(a, b, kh0, kh1, ws);
  } else if (!attend_fast<c10::BFloat16>(a, b, kh0, kh1, next_b)) {
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
      const int64_t next_b = w + 1 < end ? (w + 1) / chunks : -1;
      if (avx512) k_avx512::run(a, dt, b, kh0, kh1, ws.data(), next_b);
      else if (avx2) k_avx2::run(a, dt, b, kh0, kh1, ws.data(), next_b);
      else k_base::run(a, dt, b, kh0, kh1, ws.data(), next_b);
    }
  });
  return out;
}

// Paged prefill attention; see pagedkv/attention/cpu_kernel.py (paged_prefill) for the contract.
torch::Tensor prefill(torch::Tensor q, torch::Tensor kv, torch::Tensor tables, torch::Tensor lens,
                      torch::Tensor qstart, torch::Tensor qlen, torch::Tensor out, double scale,
                      int64_t isa) {
  TORCH_CHECK(q.dim() == 3 && kv.dim() == 5 && kv.size(1) == 2 && tables.dim() == 2,
              "pagedkv cpu prefill: bad ranks");
  TORCH_CHECK(q.is_contiguous() && kv.is_contiguous() && tables.is_contiguous() &&
              lens.is_contiguous() && qstart.is_contiguous() && qlen.is_contiguous() &&
              out.is_contiguous(), "pagedkv cpu prefill: expected contiguous inputs");
  const auto st = q.scalar_type();
  TORCH_CHECK((st == at::kFloat || st == at::kBFloat16) && kv.scalar_type() == st &&
              out.scalar_type() == st, "pagedkv cpu prefill: q/kv/out float32 or bfloat16 alike");
  TORCH_CHECK(tables.scalar_type() == at::kLong && lens.scalar_type() == at::kInt &&
              qstart.scalar_type() == at::kLong && qlen.scalar_type() == at::kInt,
              "pagedkv cpu prefill: tables/qstart int64, lens/qlen int32");
  PArgs a;
  a.hq = q.size(1); a.d = q.size(2); a.bs = kv.size(2); a.hkv = kv.size(3); a.m = tables.size(1);
  const int64_t P = tables.size(0), T = q.size(0), nblocks = kv.size(0);
  TORCH_CHECK(kv.size(4) == a.d && a.hq % a.hkv == 0 && lens.size(0) == P &&
              qstart.size(0) == P && qlen.size(0) == P && out.sizes() == q.sizes(),
              "pagedkv cpu prefill: inconsistent shapes");
  TORCH_CHECK(a.d == 32 || a.d == 64 || a.d == 128 || a.d == 256,
              "pagedkv cpu prefill: head size must be 32, 64, 128 or 256, got ", a.d);
  const int32_t* lp = lens.data_ptr<int32_t>();
  const int32_t* np = qlen.data_ptr<int32_t>();
  const int64_t* sp = qstart.data_ptr<int64_t>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  std::vector<int64_t> koff(P + 1, 0);  // each sequence's staged floats (per KV head)
  std::vector<std::array<int64_t, 4>> tasks;  // (cost, s, t0, t1) per KV head
  for (int64_t s = 0; s < P; ++s) {
    TORCH_CHECK(np[s] >= 1 && np[s] <= lp[s] && sp[s] >= 0 && sp[s] + np[s] <= T &&
                (lp[s] + a.bs - 1) / a.bs <= a.m, "pagedkv cpu prefill: bad lengths for ", s);
    for (int64_t j = 0; j < (lp[s] + a.bs - 1) / a.bs; ++j)
      TORCH_CHECK(tp[s * a.m + j] >= 0 && tp[s * a.m + j] < nblocks,
                  "pagedkv cpu prefill: block id out of range: ", tp[s * a.m + j]);
    koff[s + 1] = koff[s] + (lp[s] + 15) / 16 * 16 * a.d * 2;
    const int64_t past = lp[s] - np[s];
    for (int64_t t0 = 0; t0 < np[s]; t0 += k_base::PF_TOKS) {
      const int64_t t1 = std::min<int64_t>(np[s], t0 + k_base::PF_TOKS);
      tasks.push_back({(t1 - t0) * (past + t1), s, t0, t1});
    }
  }
  std::sort(tasks.begin(), tasks.end(), [](const auto& x, const auto& y) { return x[0] > y[0]; });
  a.q = q.data_ptr(); a.kv = kv.data_ptr(); a.out = out.data_ptr(); a.tables = tp; a.lens = lp;
  a.qstart = sp; a.qlen = np; a.scale = static_cast<float>(scale);
  const bool bf16 = st == at::kBFloat16;
  const bool avx512 = isa == 1 && cpu_has_avx512(), avx2 = isa == 1 && cpu_has_avx2();
  auto staged = torch::empty({koff[P] * a.hkv}, q.options().dtype(at::kFloat));
  float* kvs = staged.data_ptr<float>();
  auto base = [&](int64_t s, int64_t kh) { return kvs + koff[P] * kh + koff[s]; };
  at::parallel_for(0, P * a.hkv, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const int64_t s = w / a.hkv, kh = w % a.hkv;
      float* kt = base(s, kh);
      float* vv = kt + (koff[s + 1] - koff[s]) / 2;
      if (avx512) k_avx512::stage(a, bf16, s, kh, kt, vv);
      else if (avx2) k_avx2::stage(a, bf16, s, kh, kt, vv);
      else k_base::stage(a, bf16, s, kh, kt, vv);
    }
  });
  // Tiles, longest first, taken from one counter by every thread (a static split of a long
  // prompt's tiles would give one thread most of the work: later rows see more keys).
  const int64_t ntasks = static_cast<int64_t>(tasks.size()) * a.hkv;
  std::atomic<int64_t> next{0};
  const int64_t nws = k_base::prefill_ws_floats(a.hq / a.hkv, a.d);
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    std::vector<float> ws(nws);
    for (int64_t i = next++; i < ntasks; i = next++) {
      const auto& t = tasks[i / a.hkv];
      const int64_t s = t[1], kh = i % a.hkv;
      const float* kt = base(s, kh);
      const float* vv = kt + (koff[s + 1] - koff[s]) / 2;
      if (avx512) k_avx512::tile(a, bf16, s, kh, t[2], t[3], kt, vv, ws.data());
      else if (avx2) k_avx2::tile(a, bf16, s, kh, t[2], t[3], kt, vv, ws.data());
      else k_base::tile(a, bf16, s, kh, t[2], t[3], kt, vv, ws.data());
    }
  });
  return out;
}

// Fused row operations of the native Llama forward; see pagedkv/integrations/fused_rows.py.
// op 0: out = rms_norm(a); 1: a += b, out = rms_norm(a); 2: out = silu(a[:, :I]) * a[:, I:];
// 3: rope on the first heads * d columns of a, in place (b = cos, w = signed sin, [T, d]).
void fused_rows(int64_t op, torch::Tensor a, torch::Tensor b, torch::Tensor w, torch::Tensor out,
                double eps, int64_t heads, int64_t isa) {
  const auto st = a.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kBFloat16, "pagedkv fused rows: float32/bfloat16");
  TORCH_CHECK(a.dim() == 2 && a.stride(1) == 1 && a.stride(0) >= a.size(1),
              "pagedkv fused rows: a must be [T, N] with unit column stride");
  const int64_t T = a.size(0), N = a.size(1);
  RowArgs r;
  r.a = a.data_ptr(); r.stride_a = a.stride(0); r.b = nullptr; r.w = nullptr; r.out = nullptr;
  r.n = N; r.stride_out = 0; r.heads = heads; r.d = 0; r.eps = static_cast<float>(eps);
  auto rows_like = [&](const torch::Tensor& x, int64_t n) {
    TORCH_CHECK(x.scalar_type() == st && x.dim() == 2 && x.size(0) == T && x.size(1) == n &&
                x.stride(1) == 1, "pagedkv fused rows: expected a [", T, ", ", n, "] ", st,
                " tensor with unit column stride");
  };
  if (op == 0 || op == 1) {
    TORCH_CHECK(N % 16 == 0, "pagedkv fused rows: row size must be a multiple of 16, got ", N);
    TORCH_CHECK(w.scalar_type() == st && w.dim() == 1 && w.size(0) == N && w.is_contiguous(),
                "pagedkv fused rows: weight must be a contiguous [", N, "] ", st);
    rows_like(out, N);
    r.w = w.data_ptr(); r.out = out.data_ptr(); r.stride_out = out.stride(0);
    if (op == 1) {
      rows_like(b, N);
      TORCH_CHECK(b.is_contiguous(), "pagedkv fused rows: residual must be contiguous");
      r.b = b.data_ptr();
    }
  } else if (op == 2) {
    TORCH_CHECK(N % 32 == 0, "pagedkv fused rows: gate|up width must be a multiple of 32");
    rows_like(out, N / 2);
    r.n = N / 2; r.out = out.data_ptr(); r.stride_out = out.stride(0);
  } else {
    TORCH_CHECK(op == 3, "pagedkv fused rows: unknown op ", op);
    const int64_t d = b.dim() == 2 ? b.size(1) : -1;
    TORCH_CHECK(d == 32 || d == 64 || d == 128 || d == 256, "pagedkv fused rows: rope head size");
    TORCH_CHECK(heads >= 0 && heads * d <= N, "pagedkv fused rows: rope heads exceed the row");
    rows_like(b, d); rows_like(w, d);
    TORCH_CHECK(b.is_contiguous() && w.is_contiguous(), "pagedkv fused rows: cos/sin contiguous");
    r.b = b.data_ptr(); r.w = w.data_ptr(); r.d = d;
  }
  const bool bf16 = st == at::kBFloat16;
  const bool avx512 = isa == 1 && cpu_has_avx512(), avx2 = isa == 1 && cpu_has_avx2();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(N, 1));
  const int opi = static_cast<int>(op);
  at::parallel_for(0, T, grain, [&](int64_t t0, int64_t t1) {
    if (avx512) k_avx512::rows(opi, bf16, r, t0, t1);
    else if (avx2) k_avx2::rows(opi, bf16, r, t0, t1);
    else k_base::rows(opi, bf16, r, t0, t1);
  });
}
"""


def cpp_source() -> str:
    """The full translation unit: header, the kernel's AVX-512, AVX2+FMA and baseline copies,
    the panel GEMM (AVX-512 only), entry points."""
    kernel = _KERNEL + VEC_KERNEL + PREFILL_KERNEL + ROWS_KERNEL + _KERNEL_TAIL  # namespace NS
    avx512 = kernel.replace("NS", "k_avx512")
    avx2 = kernel.replace("NS", "k_avx2")
    base = kernel.replace("NS", "k_base")
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
        + GEMM_KERNEL
        + _FOOTER
        + GEMM_ENTRIES
    )
