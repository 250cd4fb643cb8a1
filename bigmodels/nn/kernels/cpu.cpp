// CPU operators PyTorch lacks or runs slowly at decoding's sizes, registered as bigmodels_cpu::*. Built by
// bigmodels/nn/kernels/__init__.py on first use (AVX-512: F, BW, VL, DQ, VNNI); see there.
//
// int8_linear: int8 x int8 products of a few rows (decoding) with AVX-512 VNNI.
// y[m, n] = sx[m] * ws[n] * (sum_k (qx[m, k] - zx[m]) * W[n, k]) + bias[n]
// with W (N, K) int8, symmetric per output row (scale ws), and x quantized per row to uint8 with its own scale sx
// and zero point zx (asymmetric: the row's range including 0 spread over 0..255).
// W is packed in tiles of 64 output rows: tile t, group g of 4 inputs is 256 contiguous bytes, row r's 4 bytes at
// r * 4 (pack_int8() in Python does it). One VPDPBUSD multiplies a broadcast of 4 uint8 inputs with 16 rows' 4 int8
// weights and adds the 16 sums to 16 int32 lanes: no horizontal sums, the matrix is read once, front to back.
// With AMX int8 tiles (built with -mamx-int8 and permitted by the kernel), calls of 2 rows or more multiply blocks
// of 16 rows x 64 inputs by 64 inputs x 16 outputs, one TDPBUSD each, instead (the same sums, exactly): at 8 rows
// the VNNI loop is bound by its dot products, the tiles are not. BIGMODELS_AMX=0 keeps to VNNI.
//
// one_query_attention: softmax(q k^T * scale + mask) v for one query per (batch, head), the decoding step's
// attention: one pass over the keys, one over the values, (batch, head) pairs shared among the threads.
//
// linear_f32: y = x W^T + b for a few float32 rows (a decoding step) with W stored column-major (W^T (K, N)
// contiguous, as column_major_linears_ lays it): each thread takes a contiguous band of W^T's rows (inputs) and
// reads it front to back, 4 rows at a time, with prefetches 16 KB ahead into the outer caches; the threads' partial
// sums are added at the end with the bias. One row of fp32 is bound by memory (GPT-2's 496 MB a step), so this
// saves what addmm spends around its sgemv (the bias broadcast and copies) and streams the matrix a little faster.
//
// argmax: the index of each row's largest value (the first one; a NaN counts as the largest, as in torch.argmax),
// vectorized: greedy decoding's pick over a 50,257-wide row.
//
// screened_argmax: greedy decoding's pick from the final hidden state, exact, reading the output layer as float16
// (linear_f32's band loop on float16 weights) and only the rows it cannot rule out as float32 (see there).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

// An optional (n,) float32 bias -> its values (nullptr for none), kept alive in `kept`; `op` names the caller.
const float* bias_data(const std::optional<at::Tensor>& bias, int64_t n, const char* op, at::Tensor& kept) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == n, "bigmodels_cpu::", op, ": bad bias");
  kept = bias->contiguous();
  return kept.data_ptr<float>();
}

constexpr int64_t kTile = 64;  // output rows per tile: 4 vectors of 16 int32 sums
constexpr int kRowsPerPass = 4;  // input rows sharing one read of a tile's group (16 accumulators)

// Row m of x (k floats) to uint8 (kpad bytes, the padding at the zero point); returns (scale, zero point).
std::pair<float, int32_t> quantize_row(const float* x, int64_t k, int64_t kpad, uint8_t* q) {
  __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    lo = _mm512_min_ps(lo, v);
    hi = _mm512_max_ps(hi, v);
  }
  float mn = _mm512_reduce_min_ps(lo), mx = _mm512_reduce_max_ps(hi);
  for (; i < k; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  float scale = (mx - mn) / 255.f;
  if (!(scale > 0.f) || !std::isfinite(scale)) scale = 1.f;  // an all-zero row (or inf/nan: left to show up)
  int32_t zero = static_cast<int32_t>(std::nearbyint(-mn / scale));
  zero = std::min(255, std::max(0, zero));
  const __m512 inv = _mm512_set1_ps(1.f / scale);
  const __m512i z = _mm512_set1_epi32(zero), vmin = _mm512_setzero_si512(), vmax = _mm512_set1_epi32(255);
  i = 0;
  for (; i + 16 <= k; i += 16) {
    __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), inv));  // round to nearest even
    v = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(v, z), vmin), vmax);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtepi32_epi8(v));
  }
  for (; i < k; ++i) {
    int32_t v = static_cast<int32_t>(std::nearbyint(x[i] / scale)) + zero;
    q[i] = static_cast<uint8_t>(std::min(255, std::max(0, v)));
  }
  for (; i < kpad; ++i) q[i] = static_cast<uint8_t>(zero);  // padded inputs meet zero weights either way
  return {scale, zero};
}

template <int MB>
inline void tile_sums(const int8_t* w, const uint8_t* q, int64_t groups, int64_t kpad, __m512i acc[][4]) {
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_si512();
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* p = w + g * 256;
    _mm_prefetch(reinterpret_cast<const char*>(p + 4096), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + 4096 + 64), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + 4096 + 128), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + 4096 + 192), _MM_HINT_T0);
    const __m512i w0 = _mm512_loadu_si512(p), w1 = _mm512_loadu_si512(p + 64);
    const __m512i w2 = _mm512_loadu_si512(p + 128), w3 = _mm512_loadu_si512(p + 192);
    for (int m = 0; m < MB; ++m) {
      int32_t four;
      std::memcpy(&four, q + m * kpad + g * 4, 4);
      const __m512i xb = _mm512_set1_epi32(four);
      acc[m][0] = _mm512_dpbusd_epi32(acc[m][0], xb, w0);
      acc[m][1] = _mm512_dpbusd_epi32(acc[m][1], xb, w1);
      acc[m][2] = _mm512_dpbusd_epi32(acc[m][2], xb, w2);
      acc[m][3] = _mm512_dpbusd_epi32(acc[m][3], xb, w3);
    }
  }
}

#if defined(__AMX_TILE__) && defined(__AMX_INT8__)
constexpr bool kAmxBuilt = true;

struct TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// tiles 0-3: the sums of `rows` rows x 4 x 16 outputs; 4: `rows` rows x 64 inputs (uint8); 5, 6: 16 groups of 4
// inputs x 16 outputs (int8, the packed layout read with a 256-byte stride). Writes out (rows x 64 int32).
void amx_tile_sums(const int8_t* w, const uint8_t* q, int64_t groups, int64_t kpad, int32_t* out) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t g = 0; g < groups; g += 16) {
    const int8_t* p = w + g * 256;
    _tile_loadd(4, q + g * 4, kpad);
    _tile_loadd(5, p, 256);
    _tile_dpbusd(0, 4, 5);
    _tile_loadd(6, p + 64, 256);
    _tile_dpbusd(1, 4, 6);
    _tile_loadd(5, p + 128, 256);
    _tile_dpbusd(2, 4, 5);
    _tile_loadd(6, p + 192, 256);
    _tile_dpbusd(3, 4, 6);
  }
  _tile_stored(0, out, 256);
  _tile_stored(1, out + 16, 256);
  _tile_stored(2, out + 32, 256);
  _tile_stored(3, out + 48, 256);
}
#else
constexpr bool kAmxBuilt = false;
#endif

// Whether this process may use AMX tiles: asked of the kernel once (Linux: arch_prctl ARCH_REQ_XCOMP_PERM for
// XTILEDATA, which also fails where the CPU has no AMX).
bool amx_permitted() {
  static const bool ok = [] {
    const char* env = std::getenv("BIGMODELS_AMX");
    if (!kAmxBuilt || (env != nullptr && env[0] == '0')) return false;
#ifdef SYS_arch_prctl
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
#else
    return false;
#endif
  }();
  return ok;
}

// x (M, K) float32; packed (tiles, groups, 64, 4) int8 with groups a multiple of 16; row_sums (tiles * 64,) int32
// = sum_k W[n, k]; scale (N,) float32; bias (N,) float32 or None; in_features = K (the packed inputs past it and
// the packed rows past N are zero).
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& row_sums,
                       const at::Tensor& scale, const std::optional<at::Tensor>& bias, int64_t in_features) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "bigmodels_cpu::int8_linear: x must be a 2-D float32 CPU tensor");
  TORCH_CHECK(packed.dim() == 4 && packed.scalar_type() == at::kChar && packed.size(2) == kTile &&
                  packed.size(3) == 4 && packed.size(1) % 16 == 0 && packed.is_contiguous(),
              "bigmodels_cpu::int8_linear: packed must be a contiguous (tiles, groups, 64, 4) int8 tensor, groups a "
              "multiple of 16 (pack_int8)");
  const int64_t rows = x.size(0), k = x.size(1), tiles = packed.size(0), groups = packed.size(1), kpad = groups * 4;
  const int64_t n = scale.numel();
  TORCH_CHECK(k == in_features && k <= kpad && kpad < k + 64, "bigmodels_cpu::int8_linear: x has ", k,
              " features, the layer ", in_features, " (packed to ", kpad, ")");
  TORCH_CHECK(n > 0 && n <= tiles * kTile && row_sums.numel() == tiles * kTile,
              "bigmodels_cpu::int8_linear: row sums / scales do not match the packed matrix");
  TORCH_CHECK(row_sums.scalar_type() == at::kInt && scale.scalar_type() == at::kFloat &&
                  row_sums.is_contiguous() && scale.is_contiguous(),
              "bigmodels_cpu::int8_linear: row_sums must be contiguous int32, scale contiguous float32");
  at::Tensor bias_c;
  const float* b = bias_data(bias, n, "int8_linear", bias_c);
  at::Tensor y = at::empty({rows, n}, x.options());
  if (rows == 0) return y;
  const at::Tensor xc = x.contiguous();
  const bool amx = rows >= 2 && amx_permitted();
  const int64_t blocks = (rows + 15) / 16;  // AMX: rows in blocks of 16, the last one padded with zero rows
  std::vector<uint8_t> q(static_cast<size_t>((amx ? blocks * 16 : rows) * kpad), 0);
  std::vector<float> sx(rows);
  std::vector<int32_t> zx(rows);
  at::parallel_for(0, rows, 64, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      auto [s, z] = quantize_row(xc.data_ptr<float>() + m * k, k, kpad, q.data() + m * kpad);
      sx[m] = s;
      zx[m] = z;
    }
  });
  float* out = y.data_ptr<float>();
  const int8_t* w = packed.data_ptr<int8_t>();
  const int32_t* sums = row_sums.data_ptr<int32_t>();
  const float* ws = scale.data_ptr<float>();
  // one row's 64 sums of a tile -> its outputs: (sum - zero point * row sums) * scales + bias
  auto finish = [&](int64_t t, int64_t m, const int32_t* tile) {
    const __m512i z = _mm512_set1_epi32(zx[m]);
    const __m512 s = _mm512_set1_ps(sx[m]);
    for (int j = 0; j < 4; ++j) {
      const int64_t col = t * kTile + j * 16;
      if (col >= n) break;
      const __mmask16 mask = n - col >= 16 ? static_cast<__mmask16>(0xFFFF)
                                           : static_cast<__mmask16>((1u << (n - col)) - 1);
      const __m512i exact = _mm512_sub_epi32(_mm512_loadu_si512(tile + j * 16),
                                             _mm512_mullo_epi32(z, _mm512_loadu_si512(sums + col)));
      const __m512 rs = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, ws + col), s);
      const __m512 add = b ? _mm512_maskz_loadu_ps(mask, b + col) : _mm512_setzero_ps();
      _mm512_mask_storeu_ps(out + m * n + col, mask, _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), rs, add));
    }
  };
  // AMX: the work is (output tile, share of the row blocks) pairs; the rows are shared out only where the tiles
  // alone would leave threads idle (a 384-wide layer has 6 tiles), so each thread keeps its tiles' weights cached
  const int64_t threads = at::get_num_threads();
  const int64_t shares = amx ? std::max<int64_t>(1, std::min<int64_t>(blocks, (4 * threads + tiles - 1) / tiles)) : 1;
  // grain: a thread takes at least 4 tiles (a 64 x 768 tile is 48 KB), so small layers do not split thin
  at::parallel_for(0, tiles * shares, shares == 1 ? 4 : 1, [&](int64_t u0, int64_t u1) {
    alignas(64) int32_t tile[16 * kTile];
#if defined(__AMX_TILE__) && defined(__AMX_INT8__)
    if (amx) {
      TileConfig config;
      // weights: 16 groups of 64 bytes; sums and inputs: 16 rows, or fewer where the call has fewer (a tile
      // product's time grows with its rows)
      for (int i = 0; i < 7; ++i) {
        config.rows[i] = static_cast<uint8_t>(i < 5 ? std::min<int64_t>(rows, 16) : 16);
        config.colsb[i] = 64;
      }
      _tile_loadconfig(&config);
      for (int64_t u = u0; u < u1; ++u) {  // a tile's 64 outputs for its share of the row blocks: weights cached
        const int64_t t = u / shares, share = u % shares;
        for (int64_t blk = blocks * share / shares; blk < blocks * (share + 1) / shares; ++blk) {
          amx_tile_sums(w + t * groups * 256, q.data() + blk * 16 * kpad, groups, kpad, tile);
          for (int64_t m = blk * 16; m < std::min(rows, blk * 16 + 16); ++m)
            finish(t, m, tile + (m - blk * 16) * kTile);
        }
      }
      _tile_release();
      return;
    }
#endif
    const int64_t t0 = u0, t1 = u1;  // without AMX shares == 1: units are tiles
    __m512i acc[kRowsPerPass][4];
    for (int64_t t = t0; t < t1; ++t) {
      const int8_t* wt = w + t * groups * 256;
      for (int64_t m0 = 0; m0 < rows; m0 += kRowsPerPass) {
        const int mb = static_cast<int>(std::min<int64_t>(kRowsPerPass, rows - m0));
        const uint8_t* qm = q.data() + m0 * kpad;
        switch (mb) {
          case 1: tile_sums<1>(wt, qm, groups, kpad, acc); break;
          case 2: tile_sums<2>(wt, qm, groups, kpad, acc); break;
          case 3: tile_sums<3>(wt, qm, groups, kpad, acc); break;
          default: tile_sums<4>(wt, qm, groups, kpad, acc); break;
        }
        for (int m = 0; m < mb; ++m) {
          for (int j = 0; j < 4; ++j) _mm512_store_si512(tile + j * 16, acc[m][j]);
          finish(t, m0 + m, tile);
        }
      }
    }
  });
  return y;
}


constexpr int64_t kF32MaxRows = 4;       // linear_f32's most rows (accumulators per column vector)
constexpr int64_t kBandPrefetch = 16384;  // bytes ahead in each row stream (prefetched into L2/L3)

// 16 weights as floats: float32 as they are, float16 widened (exactly)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline float widen(float v) { return v; }
inline float widen(at::Half v) { return static_cast<float>(v); }

// MB rows of x (row stride kx) times W^T rows k0..k1 (a thread's band) into part (MB x N), overwriting it
template <int MB, typename W>
void band_sums(const float* x, int64_t kx, const W* wt, int64_t n, int64_t k0, int64_t k1, float* part) {
  bool first = true;
  int64_t k = k0;
  for (; k + 4 <= k1; k += 4) {
    const W* r0 = wt + k * n;
    const W* r1 = r0 + n;
    const W* r2 = r1 + n;
    const W* r3 = r2 + n;
    __m512 a[MB][4];
    for (int m = 0; m < MB; ++m)
      for (int j = 0; j < 4; ++j) a[m][j] = _mm512_set1_ps(x[m * kx + k + j]);
    int64_t c = 0;
    for (; c + 16 <= n; c += 16) {
      _mm_prefetch(reinterpret_cast<const char*>(r0 + c) + kBandPrefetch, _MM_HINT_T2);
      _mm_prefetch(reinterpret_cast<const char*>(r1 + c) + kBandPrefetch, _MM_HINT_T2);
      _mm_prefetch(reinterpret_cast<const char*>(r2 + c) + kBandPrefetch, _MM_HINT_T2);
      _mm_prefetch(reinterpret_cast<const char*>(r3 + c) + kBandPrefetch, _MM_HINT_T2);
      const __m512 w0 = load16(r0 + c), w1 = load16(r1 + c);
      const __m512 w2 = load16(r2 + c), w3 = load16(r3 + c);
      for (int m = 0; m < MB; ++m) {
        float* y = part + m * n + c;
        __m512 acc = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y);
        acc = _mm512_fmadd_ps(a[m][0], w0, acc);
        acc = _mm512_fmadd_ps(a[m][1], w1, acc);
        acc = _mm512_fmadd_ps(a[m][2], w2, acc);
        acc = _mm512_fmadd_ps(a[m][3], w3, acc);
        _mm512_storeu_ps(y, acc);
      }
    }
    for (; c < n; ++c)
      for (int m = 0; m < MB; ++m) {
        const float* xm = x + m * kx + k;
        float acc = first ? 0.f : part[m * n + c];
        acc += xm[0] * widen(r0[c]);
        acc += xm[1] * widen(r1[c]);
        acc += xm[2] * widen(r2[c]);
        acc += xm[3] * widen(r3[c]);
        part[m * n + c] = acc;
      }
    first = false;
  }
  for (; k < k1; ++k) {  // the band's last rows (K not a multiple of 4)
    const W* r = wt + k * n;
    for (int m = 0; m < MB; ++m) {
      const float xk = x[m * kx + k];
      for (int64_t c = 0; c < n; ++c) part[m * n + c] = (first ? 0.f : part[m * n + c]) + xk * widen(r[c]);
    }
    first = false;
  }
  if (first) std::fill(part, part + MB * n, 0.f);  // an empty band
}

// out (rows x n) = x (rows x k, contiguous, rows <= kF32MaxRows) times wt (k x n, contiguous) + b (or none):
// each thread sums its own band of wt's rows, the bands are added (in order) at the end
template <typename W>
void few_rows(const float* xp, int64_t rows, int64_t k, const W* w, int64_t n, const float* b, float* out) {
  if (rows == 0 || n == 0) return;
  // bands of at least 64 inputs (a narrow layer is not split thin); the caller thread's buffer holds the partials
  const int64_t bands = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), k / 64));
  thread_local std::vector<float> partials;
  if (partials.size() < static_cast<size_t>(bands * rows * n)) partials.resize(bands * rows * n);
  float* part = partials.data();
  at::parallel_for(0, bands, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t k0 = (k * t / bands) & ~int64_t{3}, k1 = t + 1 == bands ? k : (k * (t + 1) / bands) & ~int64_t{3};
      float* pt = part + t * rows * n;
      switch (rows) {
        case 1: band_sums<1>(xp, k, w, n, k0, k1, pt); break;
        case 2: band_sums<2>(xp, k, w, n, k0, k1, pt); break;
        case 3: band_sums<3>(xp, k, w, n, k0, k1, pt); break;
        default: band_sums<4>(xp, k, w, n, k0, k1, pt); break;
      }
    }
  });
  at::parallel_for(0, n, 4096, [&](int64_t c0, int64_t c1) {  // out = bias + the bands' sums, in band order
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t c = c0; c < c1; ++c) {
        float acc = part[m * n + c];
        for (int64_t t = 1; t < bands; ++t) acc += part[(t * rows + m) * n + c];
        out[m * n + c] = b ? acc + b[c] : acc;
      }
  });
}

// x (M, K) float32, M <= kF32MaxRows; wt (K, N) float32 contiguous (the weight's transpose); bias (N,) or None.
at::Tensor linear_f32(const at::Tensor& x, const at::Tensor& wt, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "bigmodels_cpu::linear_f32: x must be a 2-D float32 CPU tensor");
  TORCH_CHECK(x.size(0) <= kF32MaxRows, "bigmodels_cpu::linear_f32: at most ", kF32MaxRows, " rows, not ",
              x.size(0));
  TORCH_CHECK(wt.dim() == 2 && wt.scalar_type() == at::kFloat && wt.is_contiguous() && wt.size(0) == x.size(1),
              "bigmodels_cpu::linear_f32: the weight's transpose must be a contiguous float32 (", x.size(1),
              ", out) tensor (a column-major weight's .t())");
  const int64_t rows = x.size(0), k = x.size(1), n = wt.size(1);
  at::Tensor bias_c;
  const float* b = bias_data(bias, n, "linear_f32", bias_c);
  at::Tensor y = at::empty({rows, n}, x.options());
  const at::Tensor xc = x.contiguous();
  few_rows(xc.data_ptr<float>(), rows, k, wt.data_ptr<float>(), n, b, y.data_ptr<float>());
  return y;
}

// screened_argmax: greedy decoding's pick, argmax_i (x w_i + b_i) over the rows w_i of an output layer W (V, K),
// exact, while reading W mostly as float16. a = x Q^T (+ b) with Q = W rounded to float16 (qt = Q^T (K, V)
// contiguous), summed in float32; |x w_i - fl(x q_i)| <= ||x|| (||w_i - q_i|| + gamma_K ||q_i||) = ||x|| slack_i
// (Cauchy-Schwarz, and the float32 sum's rounding bound; slack (V,) made by the caller). Every i with
// a_i + ||x|| slack_i >= max_j (a_j - ||x|| slack_j) may be the largest, and no other: those candidates are summed
// again from W itself in double, and the largest (the first of equals) is the answer. A non-finite x or a_i
// sends the row through W alone (torch.argmax's answer on the float32 logits, a NaN first).
// x (M, K) float32, M <= kF32MaxRows; w (V', K) float32, any strides, V' >= V; bias (V,) or None -> (M, 1) int64.
at::Tensor screened_argmax(const at::Tensor& x, const at::Tensor& qt, const at::Tensor& slack, const at::Tensor& w,
                           const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu() && x.size(0) <= kF32MaxRows,
              "bigmodels_cpu::screened_argmax: x must be a (rows <= ", kF32MaxRows, ", in) float32 CPU tensor");
  const int64_t rows = x.size(0), k = x.size(1);
  TORCH_CHECK(qt.dim() == 2 && qt.scalar_type() == at::kHalf && qt.is_contiguous() && qt.size(0) == k,
              "bigmodels_cpu::screened_argmax: qt must be the float16 weight's transpose, contiguous (", k, ", V)");
  const int64_t n = qt.size(1);
  TORCH_CHECK(n > 0 && slack.dim() == 1 && slack.scalar_type() == at::kFloat && slack.numel() == n &&
              slack.is_contiguous(), "bigmodels_cpu::screened_argmax: slack must be (V,) float32, contiguous");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.size(0) >= n && w.size(1) == k,
              "bigmodels_cpu::screened_argmax: w must be the float32 weight (>= V, ", k, ")");
  at::Tensor bias_c;
  const float* b = bias_data(bias, n, "screened_argmax", bias_c);
  at::Tensor out = at::empty({rows, 1}, x.options().dtype(at::kLong));
  if (rows == 0) return out;
  const at::Tensor xc = x.contiguous();
  const float* xp = xc.data_ptr<float>();
  thread_local std::vector<float> screen;
  if (screen.size() < static_cast<size_t>(rows * n)) screen.resize(rows * n);
  few_rows(xp, rows, k, reinterpret_cast<const at::Half*>(qt.data_ptr<at::Half>()), n, nullptr, screen.data());
  const float* wp = w.data_ptr<float>();
  const float* sp = slack.data_ptr<float>();
  const int64_t ws0 = w.stride(0), ws1 = w.stride(1);
  int64_t* op = out.data_ptr<int64_t>();
  auto exact = [&](const float* xm, int64_t i) {  // x w_i + b_i in double
    double acc = b ? b[i] : 0.0;
    const float* wi = wp + i * ws0;
    for (int64_t j = 0; j < k; ++j) acc += static_cast<double>(xm[j]) * wi[j * ws1];
    return acc;
  };
  std::vector<int64_t> cands;
  std::vector<double> sums;
  for (int64_t m = 0; m < rows; ++m) {
    const float* xm = xp + m * k;
    const float* a = screen.data() + m * n;
    double norm = 0.0;
    for (int64_t j = 0; j < k; ++j) norm += static_cast<double>(xm[j]) * xm[j];
    norm = std::sqrt(norm) * (1.0 + 1e-12);
    auto screened = [&](int64_t i) { return b ? static_cast<double>(a[i]) + b[i] : static_cast<double>(a[i]); };
    double floor = -INFINITY;  // the largest logit is at least this
    bool finite = std::isfinite(norm);
    for (int64_t i = 0; i < n && finite; ++i) {
      finite = std::isfinite(a[i]);
      floor = std::max(floor, screened(i) - norm * sp[i]);
    }
    int64_t best = -1;
    if (finite) {
      cands.clear();
      for (int64_t i = 0; i < n; ++i)
        if (screened(i) + norm * sp[i] >= floor) cands.push_back(i);
      sums.assign(cands.size(), 0.0);
      if (ws0 == 1) {  // column-major W (W^T's rows contiguous): read it row by row, as stored
        for (int64_t j = 0; j < k; ++j) {
          const float* row = wp + j * ws1;
          const double xj = xm[j];
          for (size_t c = 0; c < cands.size(); ++c) sums[c] += xj * row[cands[c]];
        }
        for (size_t c = 0; c < cands.size(); ++c) sums[c] += b ? b[cands[c]] : 0.0;
      } else {
        for (size_t c = 0; c < cands.size(); ++c) sums[c] = exact(xm, cands[c]);
      }
      double top = -INFINITY;
      for (size_t c = 0; c < cands.size(); ++c)
        if (best < 0 || sums[c] > top) best = cands[c], top = sums[c];  // the first of equals
    } else {  // inf or NaN about: the float32 logits from W, torch.argmax's rule (the first NaN, else the largest)
      float fbest = -INFINITY;
      for (int64_t i = 0; i < n; ++i) {
        const float v = static_cast<float>(exact(xm, i));
        if (std::isnan(v)) { best = i; break; }
        if (best < 0 || v > fbest) best = i, fbest = v;
      }
    }
    op[m] = best;
  }
  return out;
}


// q (B, H, 1, D); k, v (B, H, L, D); each with unit stride along D. mask: additive float32, broadcastable to
// (B, H, 1, L), or None. Returns (B, H, 1, D).
at::Tensor one_query_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::optional<at::Tensor>& mask, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(2) == 1,
              "bigmodels_cpu::one_query_attention: q must be (B, H, 1, D), k and v (B, H, L, D)");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3), L = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(1) == H && k.size(3) == D && v.sizes() == k.sizes() && L > 0,
              "bigmodels_cpu::one_query_attention: k and v must both be (", B, ", ", H, ", L, ", D, ")");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "bigmodels_cpu::one_query_attention: float32 only");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
              "bigmodels_cpu::one_query_attention: the head dimension must have unit stride");
  at::Tensor m;
  const float* mp = nullptr;
  int64_t msb = 0, msh = 0, msl = 0;
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->scalar_type() == at::kFloat, "bigmodels_cpu::one_query_attention: an additive float32 mask");
    m = mask->expand({B, H, 1, L});
    mp = m.data_ptr<float>();
    msb = m.stride(0);
    msh = m.stride(1);
    msl = m.stride(3);
  }
  at::Tensor out = at::empty({B, H, 1, D}, q.options());
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t qsb = q.stride(0), qsh = q.stride(1), ksb = k.stride(0), ksh = k.stride(1), ksl = k.stride(2);
  const int64_t vsb = v.stride(0), vsh = v.stride(1), vsl = v.stride(2);
  const float s = static_cast<float>(scale);
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> w(L), acc(D);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, h = i % H;
      const float* qi = qp + b * qsb + h * qsh;
      const float* ki = kp + b * ksb + h * ksh;
      const float* vi = vp + b * vsb + h * vsh;
      float top = -INFINITY;
      for (int64_t l = 0; l < L; ++l) {
        const float* kl = ki + l * ksl;
        __m512 a = _mm512_setzero_ps();
        int64_t d = 0;
        for (; d + 16 <= D; d += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(qi + d), _mm512_loadu_ps(kl + d), a);
        float dot = _mm512_reduce_add_ps(a);
        for (; d < D; ++d) dot += qi[d] * kl[d];
        w[l] = dot * s + (mp ? mp[b * msb + h * msh + l * msl] : 0.f);
        top = std::max(top, w[l]);
      }
      float sum = 0.f;
      for (int64_t l = 0; l < L; ++l) {
        w[l] = std::exp(w[l] - top);  // a masked key (-inf) gives 0; every key masked gives NaN, as softmax does
        sum += w[l];
      }
      const float inv = 1.f / sum;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t l = 0; l < L; ++l) {
        if (w[l] == 0.f) continue;
        const float* vl = vi + l * vsl;
        const float p = w[l] * inv;
        const __m512 pv = _mm512_set1_ps(p);
        int64_t d = 0;
        for (; d + 16 <= D; d += 16)
          _mm512_storeu_ps(acc.data() + d, _mm512_fmadd_ps(pv, _mm512_loadu_ps(vl + d), _mm512_loadu_ps(acc.data() + d)));
        for (; d < D; ++d) acc[d] += p * vl[d];
      }
      if (!(sum > 0.f)) std::fill(acc.begin(), acc.end(), NAN);
      std::copy(acc.begin(), acc.end(), op + i * D);
    }
  });
  return out;
}

// x (B, V) float32 -> (B, 1) int64: torch.argmax(x, -1, keepdim=True)
at::Tensor argmax(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.size(1) > 0,
              "bigmodels_cpu::argmax: x must be a (rows, values) float32 tensor with values");
  const at::Tensor xc = x.contiguous();
  const int64_t rows = xc.size(0), V = xc.size(1);
  at::Tensor out = at::empty({rows, 1}, x.options().dtype(at::kLong));
  const float* xp = xc.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = xp + r * V;
      __m512 best = _mm512_set1_ps(-INFINITY);
      __mmask16 nan = 0;
      int64_t i = 0;
      for (; i + 16 <= V; i += 16) {
        const __m512 v = _mm512_loadu_ps(row + i);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        best = _mm512_max_ps(best, v);
      }
      float top = _mm512_reduce_max_ps(best);
      bool has_nan = nan != 0;
      for (int64_t j = i; j < V; ++j) {
        has_nan |= std::isnan(row[j]);
        top = std::max(top, row[j]);
      }
      int64_t at = 0;
      if (has_nan) {
        while (!std::isnan(row[at])) ++at;
      } else {
        while (row[at] != top) ++at;  // the first index of the largest value
      }
      op[r] = at;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(bigmodels_cpu, m) {
  m.def("int8_linear(Tensor x, Tensor packed, Tensor row_sums, Tensor scale, Tensor? bias, int in_features) -> Tensor");
  m.def("one_query_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor");
  m.def("argmax(Tensor x) -> Tensor");
  m.def("linear_f32(Tensor x, Tensor wt, Tensor? bias) -> Tensor");
  m.def("screened_argmax(Tensor x, Tensor qt, Tensor slack, Tensor w, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(bigmodels_cpu, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("one_query_attention", &one_query_attention);
  m.impl("argmax", &argmax);
  m.impl("linear_f32", &linear_f32);
  m.impl("screened_argmax", &screened_argmax);
}
