"""C++ source of the CPU kernel's prompt (prefill) path (part of the kernel's namespace ``NS``).

Why: a prompt's attention is a small matrix product per (sequence, head), and PyTorch's CPU
SDPA ran the prompts of a serving step at ~40 GFLOP/s on this project's 2 cores (a quarter of
what the projections reach), and a prompt after cached KV first had its keys gathered out of
the pool. Here every prompt row attends straight over its sequence's paged K/V:

1. *Stage* (one task per sequence and KV head): the sequence's keys, 16 at a time, are copied
   transposed into ``Kt [chunk][D][16]`` and its values into ``V [chunk][16][D]``, float32
   (bfloat16 converted once here, not once per query tile).
2. *Tiles* (one task per sequence, KV head and run of ``PF_TOKS`` query tokens, the group's
   ``g`` query heads together: ``rows = tokens x g``): keys go in blocks of ``PF_CHUNKS`` staged
   chunks (64 keys). The scores of 8 rows and two chunks at a time are ``sum_d q[r][d] * Kt[d]``
   (one broadcast and two FMAs per row and d, no horizontal sums), the causal mask is a compare
   of key index against the row's position, the online softmax updates each row's running max
   and sum once per 64 keys (a max, an ``exp`` and a rescale per row: done every 16 keys they
   cost about a quarter of the kernel's time), and ``P V`` adds the block's V rows into a few
   rows' accumulators at a time. Tiles are taken longest first from a shared counter, so one
   long prompt still keeps both cores busy.

   Measured: a standalone copy of the tile loop, one thread, a 1,024-token prompt after 400
   cached, took 35.1 ms with 16-key updates, 27.2 with 32 and 25.7 with 64;
   ``benchmarks/attention_prefill.py`` (float32, 2 threads): one 825-token prompt 6.76 -> 5.05
   ms a layer (116 -> 155 GFLOP/s).

Layout of one sequence's staged keys (D = head size, 16 keys a chunk)::

    Kt: chunk 0 [d=0: k0..k15][d=1: k0..k15] ... [d=D-1: ...] | chunk 1 ... (zeros past the end)
    V:  chunk 0 [k0: d0..dD-1][k1: ...] ... [k15: ...]        | chunk 1 ...

Plain causal attention only (no sliding window, soft-capping or sink logits: those take the
torch path); the contract is in :func:`pagedkv.attention.cpu_kernel.paged_prefill`.
"""

from __future__ import annotations

PREFILL_KERNEL = r"""
// ---- Prefill: prompt rows attend over their sequence's paged K/V (causal, bottom-right).
constexpr int PF_TOKS = 16;  // query tokens per tile
constexpr int PF_ROWS = 8;     // rows whose scores are computed together
constexpr int PF_CHUNKS = 4;   // 16-key chunks per online-softmax update

inline float vmax(vf v) {
  vf a = v > __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7)
             ? v : __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5,
                                           6, 7);
  vf b = __builtin_shufflevector(a, a, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
  a = a > b ? a : b;
  b = __builtin_shufflevector(a, a, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
  a = a > b ? a : b;
  return std::max(a[0], a[1]);
}

// Stage sequence s, KV head kh: Kt [nch][D][16] and V [nch][16][D] in float32.
template <typename T, int C>
void stage_kv(const PArgs& a, int64_t s, int64_t kh, float* kt, float* vv) {
  constexpr int D = 16 * C;
  const int64_t L = a.lens[s], BS = a.bs, stride = a.hkv * D, nch = (L + 15) / 16;
  const T* kv = static_cast<const T*>(a.kv);
  const int64_t* table = a.tables + s * a.m;
  for (int64_t c = 0; c < nch; ++c) {
    float* ktc = kt + c * D * 16;
    float* vc = vv + c * 16 * D;
    for (int j = 0; j < 16; ++j) {
      const int64_t p = c * 16 + j;
      if (p >= L) {
        for (int i = 0; i < D; ++i) { ktc[i * 16 + j] = 0.f; vc[j * D + i] = 0.f; }
        continue;
      }
      const T* kr = kv + (table[p / BS] * 2 * BS + p % BS) * stride + kh * D;
      const T* vr = kr + BS * stride;
      for (int cc = 0; cc < C; ++cc) {
        const vf k = load16(kr + 16 * cc);
        for (int i = 0; i < 16; ++i) ktc[(16 * cc + i) * 16 + j] = k[i];
        const vf v = load16(vr + 16 * cc);
        std::memcpy(vc + j * D + 16 * cc, &v, 64);
      }
    }
  }
}

// Floats of scratch one tile needs: q and accumulators [rows][D], probabilities [rows][64],
// max, sum and correction [rows] (rows rounded up to PF_ROWS).
inline int64_t prefill_ws_floats(int64_t g, int64_t d) {
  const int64_t rows = (PF_TOKS * g + PF_ROWS - 1) / PF_ROWS * PF_ROWS;
  return rows * (2 * d + 16 * PF_CHUNKS + 3);
}

// Scores of PF_ROWS rows (scaled queries at qrows, D floats apart) against NC (1 or 2)
// consecutive staged 16-key chunks at k0: acc[i][u] = sum_d qrows[u][d] * Kt_i[d] (one K load
// per chunk and d, one broadcast per row and d).
template <int D, int NC>
inline void row_scores(const float* k0, const float* qrows, vf (&acc)[2][PF_ROWS]) {
  for (int i = 0; i < NC; ++i)
    for (int u = 0; u < PF_ROWS; ++u) acc[i][u] = vf{};
  for (int d = 0; d < D; ++d) {
    vf kd[NC];
    for (int i = 0; i < NC; ++i) kd[i] = load16(k0 + (i * D + d) * 16);
#pragma GCC unroll 8
    for (int u = 0; u < PF_ROWS; ++u) {
      const vf qd = splat(qrows[u * D + d]);
      for (int i = 0; i < NC; ++i) acc[i][u] += qd * kd[i];
    }
  }
}

// Query tokens [t0, t1) of sequence s (their g heads of KV head kh) over the staged keys.
template <typename T, int C>
void prefill_tile(const PArgs& a, int64_t s, int64_t kh, int64_t t0, int64_t t1,
                  const float* kt, const float* vv, float* ws) {
  constexpr int D = 16 * C, RT = C <= 4 ? 4 : (C == 8 ? 2 : 1);  // rows per P V pass
  const int64_t g = a.hq / a.hkv, past = a.lens[s] - a.qlen[s];
  const int64_t nr = (t1 - t0) * g, nrp = (nr + PF_ROWS - 1) / PF_ROWS * PF_ROWS;
  float* qb = ws;
  float* ob = qb + nrp * D;
  float* pb = ob + nrp * D;
  float* mx = pb + nrp * 16 * PF_CHUNKS;
  float* sm = mx + nrp;
  float* cr = sm + nrp;
  const T* q = static_cast<const T*>(a.q);
  for (int64_t r = 0; r < nrp; ++r) {
    mx[r] = -INFINITY; sm[r] = 0.f; cr[r] = 1.f;
    for (int cc = 0; cc < C; ++cc) {
      vf x = vf{};
      if (r < nr) {
        const int64_t tok = a.qstart[s] + t0 + r / g, h = kh * g + r % g;
        x = load16(q + (tok * a.hq + h) * D + 16 * cc) * a.scale;
      }
      std::memcpy(qb + r * D + 16 * cc, &x, 64);
      const vf z = vf{};
      std::memcpy(ob + r * D + 16 * cc, &z, 64);
    }
  }
  const vi iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const int64_t kend = past + t1, nch = (kend + 15) / 16;  // keys the tile's last row sees
  constexpr int KW = 16 * PF_CHUNKS;  // keys per online-softmax update
  for (int64_t c = 0; c < nch; c += PF_CHUNKS) {
    const int nc = static_cast<int>(std::min<int64_t>(PF_CHUNKS, nch - c));
    const float* ktc = kt + c * D * 16;
    const float* vc = vv + c * 16 * D;
    for (int64_t r0 = 0; r0 < nr; r0 += PF_ROWS) {
      const int rn = static_cast<int>(std::min<int64_t>(PF_ROWS, nr - r0));
      // Scores of 8 rows, two 16-key chunks at a time (16 accumulators, two K loads per d),
      // masked and kept in pb until the row's softmax update below.
      for (int cc0 = 0; cc0 < nc; cc0 += 2) {
        const bool two = cc0 + 1 < nc;
        const float* k0 = ktc + cc0 * D * 16;
        vf acc[2][PF_ROWS];
        if (two) row_scores<D, 2>(k0, qb + r0 * D, acc);
        else row_scores<D, 1>(k0, qb + r0 * D, acc);
        const vi key0 = iota + static_cast<int32_t>((c + cc0) * 16), key1 = key0 + 16;
        for (int u = 0; u < rn; ++u) {
          const int32_t visible = static_cast<int32_t>(past + t0 + (r0 + u) / g + 1);
          const vf s0 = key0 < visible ? acc[0][u] : splat(-INFINITY);
          const vf s1 = two ? (key1 < visible ? acc[1][u] : splat(-INFINITY)) : splat(-INFINITY);
          std::memcpy(pb + (r0 + u) * KW + cc0 * 16, &s0, 64);
          if (two) std::memcpy(pb + (r0 + u) * KW + cc0 * 16 + 16, &s1, 64);
        }
      }
      // One online-softmax update per row for the nc chunks' keys: max, rescale, exp, sum.
      for (int u = 0; u < rn; ++u) {
        const int64_t r = r0 + u;
        float* pr = pb + r * KW;
        vf sv[PF_CHUNKS];
        vf mv = splat(-INFINITY);
        for (int i = 0; i < nc; ++i) {
          sv[i] = load16(pr + 16 * i);
          mv = sv[i] > mv ? sv[i] : mv;
        }
        const float nm = std::max(mx[r], vmax(mv));
        const float corr = mx[r] == nm ? 1.f : std::exp(mx[r] - nm);  // 0 on the first chunk
        vf tot = vf{};
        for (int i = 0; i < nc; ++i) {
          const vf pv = vexp(sv[i] - nm);
          tot += pv;
          std::memcpy(pr + 16 * i, &pv, 64);
        }
        sm[r] = sm[r] * corr + hsum(tot);
        mx[r] = nm;
        cr[r] = corr;
      }
    }
    const int nk = static_cast<int>(std::min<int64_t>(KW, kend - c * 16));
    for (int64_t r0 = 0; r0 < nr; r0 += RT) {
      const int rn = static_cast<int>(std::min<int64_t>(RT, nr - r0));
      vf o[RT][C];
      for (int u = 0; u < RT; ++u)
        for (int cc = 0; cc < C; ++cc)
          o[u][cc] = u < rn ? load16(ob + (r0 + u) * D + 16 * cc) * cr[r0 + u] : vf{};
      for (int j = 0; j < nk; ++j) {
        vf v[C];
        for (int cc = 0; cc < C; ++cc) v[cc] = load16(vc + j * D + 16 * cc);
        for (int u = 0; u < RT; ++u) {
          const vf pj = splat(pb[(r0 + u) * KW + j]);
          for (int cc = 0; cc < C; ++cc) o[u][cc] += pj * v[cc];
        }
      }
      for (int u = 0; u < rn; ++u)
        for (int cc = 0; cc < C; ++cc) std::memcpy(ob + (r0 + u) * D + 16 * cc, &o[u][cc], 64);
    }
  }
  T* out = static_cast<T*>(a.out);
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t tok = a.qstart[s] + t0 + r / g, h = kh * g + r % g;
    const float inv = 1.f / sm[r];  // > 0: key 0 is visible to every row
    T* orow = out + (tok * a.hq + h) * D;
    for (int cc = 0; cc < C; ++cc) store16(orow + 16 * cc, load16(ob + r * D + 16 * cc) * inv);
  }
}

template <typename T>
void prefill_stage(const PArgs& a, int64_t s, int64_t kh, float* kt, float* vv) {
  switch (a.d) {
    case 32: stage_kv<T, 2>(a, s, kh, kt, vv); break;
    case 64: stage_kv<T, 4>(a, s, kh, kt, vv); break;
    case 128: stage_kv<T, 8>(a, s, kh, kt, vv); break;
    default: stage_kv<T, 16>(a, s, kh, kt, vv); break;
  }
}

template <typename T>
void prefill_run(const PArgs& a, int64_t s, int64_t kh, int64_t t0, int64_t t1, const float* kt,
                 const float* vv, float* ws) {
  switch (a.d) {
    case 32: prefill_tile<T, 2>(a, s, kh, t0, t1, kt, vv, ws); break;
    case 64: prefill_tile<T, 4>(a, s, kh, t0, t1, kt, vv, ws); break;
    case 128: prefill_tile<T, 8>(a, s, kh, t0, t1, kt, vv, ws); break;
    default: prefill_tile<T, 16>(a, s, kh, t0, t1, kt, vv, ws); break;
  }
}

void stage(const PArgs& a, bool bf16, int64_t s, int64_t kh, float* kt, float* vv) {
  if (bf16) prefill_stage<c10::BFloat16>(a, s, kh, kt, vv);
  else prefill_stage<float>(a, s, kh, kt, vv);
}

void tile(const PArgs& a, bool bf16, int64_t s, int64_t kh, int64_t t0, int64_t t1,
          const float* kt, const float* vv, float* ws) {
  if (bf16) prefill_run<c10::BFloat16>(a, s, kh, t0, t1, kt, vv, ws);
  else prefill_run<float>(a, s, kh, t0, t1, kt, vv, ws);
}
"""
