"""C++ source of the decode kernel's vectorised path (part of the kernel's namespace ``NS``).

Why a second path: a float32 or bfloat16 cache with head_dim 32, 64, 128 or 256 is the common
case, and the scalar block of :mod:`pagedkv.attention._cpu_kernel_src` spends its time in one
horizontal sum per (token, head) and a scalar ``exp`` per score. Here each query head keeps its
q, output accumulator, running max and sum in vectors; keys go 16 at a time (16 dot products
folded into one vector of scores by a shuffle tree, one vector ``exp``, then 16 V rows into the
accumulator). The task walks its sequence block by block, every head of the task over each
block before the next, and prefetches the block after it into L2 meanwhile (after the last, the
next task's first), so DRAM reads overlap the arithmetic. Measured on this project's CPU
(2 threads, batch 48, 250-token contexts, 30 layers' pools): 40-48 ms a step against 49-74 ms
for the scalar block, before the block-by-block walk; that walk took a layer of 48 sequences of
150-250 tokens from 921 to 538 us (``benchmarks/attention_decode_pools.py``).
"""

from __future__ import annotations

VEC_KERNEL = r"""
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
typedef uint32_t vu __attribute__((vector_size(64)));
// fp32 -> bf16 rounded to nearest even, as c10::BFloat16 rounds (NaN -> 0x7FC0), 16 at once.
inline vh to_bf16(vf v) {
  vu u; std::memcpy(&u, &v, 64);
  const vu r = (u + ((u >> 16) & 1u) + 0x7FFFu) >> 16;
  const vi nan = v != v;
  return __builtin_convertvector(nan ? vu{} + 0x7FC0u : r, vh);
}
inline void store16(float* p, vf v) { std::memcpy(p, &v, 64); }
inline void store16(c10::BFloat16* p, vf v) { const vh h = to_bf16(v); std::memcpy(p, &h, 32); }
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

// Blocks the query of sequence b walks, range by range: those that hold a visible key.
inline int64_t visited_count(const Args& a, int64_t b) {
  int64_t lo[2], hi[2], n = 0;
  visible_ranges(a, a.lens[b], lo, hi);
  for (int r = 0; r < 2; ++r)
    if (lo[r] < hi[r]) n += (hi[r] - 1) / a.bs - lo[r] / a.bs + 1;
  return n;
}

// The k-th block (from 0) that sequence b walks, as a byte address in the pool of
// block_bytes-sized blocks; nullptr past its last.
inline const char* visited_block(const Args& a, int64_t b, int64_t k, int64_t block_bytes) {
  int64_t lo[2], hi[2];
  visible_ranges(a, a.lens[b], lo, hi);
  for (int r = 0; r < 2; ++r) {
    if (lo[r] >= hi[r]) continue;
    const int64_t first = lo[r] / a.bs, n = (hi[r] - 1) / a.bs - first + 1;
    if (k < n) return static_cast<const char*>(a.kv) + a.tables[b * a.m + first + k] * block_bytes;
    k -= n;
  }
  return nullptr;
}

// Why prefetch: a decode task computes little per byte of K/V, so without help each block's
// DRAM reads and its arithmetic take turns. While block k is computed, the block after it is
// fetched into L2 (prefetcht1: into L1 it would hold the few L1 miss buffers the loads need);
// after a sequence's last block, the first block of the next task's sequence next_b (-1: none).
// attend_vec writes the __builtin_prefetch loop out: put in a small inline helper, GCC 12 -O3
// emitted no prefetch instruction at all (objdump), and the walk measured 1,080 us a layer.
inline const char* block_after(const Args& a, int64_t b, int64_t k, int64_t count,
                               int64_t next_b, int64_t block_bytes) {
  if (k + 1 < count) return visited_block(a, b, k + 1, block_bytes);
  return next_b >= 0 ? visited_block(a, next_b, k + 1 - count, block_bytes) : nullptr;
}

// One query head's walk over its keys, D = 16 C: q, the output accumulator o, the running max
// m and sum l (in registers while a call lasts); keys go 16 at a time (one vector of 16
// scores, one vector exp, then 16 V rows into o).
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

// Query heads that share one walk over a sequence's blocks: their HeadStates (q, o: 2 C vectors
// each, 0.5-2 KB) live on the stack; a task with more heads walks again for the rest.
constexpr int64_t kMaxHeads = 32;

// attend() for float / bfloat16 caches with D = 16 C: the same visible keys, sinks and output.
// Block by block, every query head of the task takes the block's keys before the next block
// (each head's own order of keys, so its sums, is the one of a head-by-head walk: the outputs
// are bit for bit the same), while the block after it is prefetched into L2 (block_after) in
// nh slices, one before each head's turn, so the fetches spread over the block's arithmetic.
template <typename T, int C>
void attend_vec(const Args& a, int64_t b, int64_t kh0, int64_t kh1, int64_t next_b) {
  const int64_t g = a.hq / a.hkv, D = a.d, BS = a.bs, stride = a.hkv * a.d;
  const int64_t block_bytes = 2 * BS * stride * static_cast<int64_t>(sizeof(T));
  const int64_t lines = (block_bytes + 63) / 64, count = visited_count(a, b);
  int64_t lo[2], hi[2];
  visible_ranges(a, a.lens[b], lo, hi);
  const T* kv = static_cast<const T*>(a.kv);
  const int64_t* table = a.tables + b * a.m;
  for (int64_t h0 = kh0 * g; h0 < kh1 * g; h0 += kMaxHeads) {
    const int64_t nh = std::min(kMaxHeads, kh1 * g - h0), per = (lines + nh - 1) / nh;
    HeadState<T, C> st[kMaxHeads];
    for (int64_t i = 0; i < nh; ++i) {
      const T* q = static_cast<const T*>(a.q) + (b * a.hq + h0 + i) * D;
      for (int c = 0; c < C; ++c) {
        st[i].q[c] = load16(q + 16 * c) * a.scale;
        st[i].o[c] = vf{};
      }
    }
    int64_t k = 0;  // blocks walked so far
    for (int r = 0; r < 2; ++r) {
      for (int64_t p = lo[r]; p < hi[r]; ++k) {
        const int64_t blk = p / BS, t0 = p - blk * BS;
        const int64_t t1 = std::min(BS, hi[r] - blk * BS);
        const T* base = kv + table[blk] * 2 * BS * stride;
        const char* after = block_after(a, b, k, count, next_b, block_bytes);
        for (int64_t i = 0; i < nh; ++i) {
          if (after != nullptr)  // lines [i per, (i + 1) per) of it (see block_after)
            for (int64_t l = i * per; l < std::min(lines, (i + 1) * per); ++l)
              __builtin_prefetch(after + 64 * l, 0, 2);
          const T* kb = base + ((h0 + i) / g) * D;
          for (int64_t t = t0; t < t1; t += 16) {
            const int n = static_cast<int>(std::min<int64_t>(16, t1 - t));
            st[i].keys(a, kb + t * stride, kb + (BS + t) * stride, stride, n);
          }
        }
        p = blk * BS + t1;
      }
    }
    for (int64_t i = 0; i < nh; ++i) {
      const float inv = output_scale(a, h0 + i, st[i].m, st[i].l);
      T* o = static_cast<T*>(a.out) + (b * a.hq + h0 + i) * D;
      for (int c = 0; c < C; ++c) store16(o + 16 * c, st[i].o[c] * inv);
    }
  }
}

// The vectorised attend for this head size, or false (the scalar one runs instead).
template <typename T>
inline bool attend_fast(const Args& a, int64_t b, int64_t kh0, int64_t kh1, int64_t next_b) {
  switch (a.d) {
    case 32: attend_vec<T, 2>(a, b, kh0, kh1, next_b); return true;
    case 64: attend_vec<T, 4>(a, b, kh0, kh1, next_b); return true;
    case 128: attend_vec<T, 8>(a, b, kh0, kh1, next_b); return true;
    case 256: attend_vec<T, 16>(a, b, kh0, kh1, next_b); return true;
    default: return false;
  }
}

"""
