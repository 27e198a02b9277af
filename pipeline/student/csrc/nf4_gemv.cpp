// NF4 matrix-vector product for bitsandbytes' packed CPU layout (AVX512-BF16).
//
// Same arithmetic, in the same order, as bitsandbytes' own CPU kernel (the results are bit for
// bit equal; tests/test_student_decode.py checks it): each 32-row tile accumulates
// dpbf16(code[w], x) over one 64-wide quantisation block, then scales by that block's absmax.
// It is faster for one token because four tiles are interleaved, so the dot-product dependency
// chains overlap, and each weight stream is prefetched 2 KiB ahead (closer to the bandwidth bound
// than 1 KiB in bench/student.py). w: (N, K/2) uint8, tiles of 32 rows with k in pairs; absmax:
// (K/bs, N) bf16; lut: the 16 NF4 codes as bf16 bits, twice (32 x int16), so vpermw can look up
// a zero-extended byte directly: its index bit 4 (the high nibble's low bit) picks either copy.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>

template <int T>
static inline void tiles(const int32_t* xr, const uint8_t* wp, const uint16_t* ap, uint16_t* op,
                         int64_t nb, int64_t KP, int64_t KB, int64_t N, int64_t bs, __m512i L) {
  __m512 tot[T][2];
  for (int t = 0; t < T; ++t) { tot[t][0] = _mm512_setzero_ps(); tot[t][1] = _mm512_setzero_ps(); }
  for (int64_t kb = 0; kb < KB; ++kb) {
    __m512 acc[T][2];
    for (int t = 0; t < T; ++t) { acc[t][0] = _mm512_setzero_ps(); acc[t][1] = _mm512_setzero_ps(); }
    const int64_t p0 = kb * bs / 2, p1 = p0 + bs / 2;
    for (int64_t p = p0; p < p1; ++p) {
      __m512bh xb = (__m512bh)_mm512_set1_epi32(xr[p]);
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        if ((p & 1) == 0)  // one prefetch per 64-byte line, 2 KiB ahead
          _mm_prefetch((const char*)(wp + ((nb + t) * KP + p) * 32 + 2048), _MM_HINT_T0);
        __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(wp + ((nb + t) * KP + p) * 32)));
        acc[t][0] = _mm512_dpbf16_ps(acc[t][0], (__m512bh)_mm512_permutexvar_epi16(v, L), xb);
        acc[t][1] = _mm512_dpbf16_ps(acc[t][1], (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), L), xb);
      }
    }
    for (int t = 0; t < T; ++t) {
      const uint16_t* s = ap + kb * N + (nb + t) * 32;
      for (int h = 0; h < 2; ++h) {
        __m512 sc = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(s + 16 * h))), 16));
        tot[t][h] = _mm512_fmadd_ps(acc[t][h], sc, tot[t][h]);
      }
    }
  }
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < 2; ++h)
      _mm256_storeu_si256((__m256i*)(op + (nb + t) * 32 + 16 * h), (__m256i)_mm512_cvtneps_pbh(tot[t][h]));
}

torch::Tensor nf4_gemv(torch::Tensor x, torch::Tensor w, torch::Tensor absmax, torch::Tensor lut, int64_t bs) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.is_contiguous(), "x: contiguous (M, K) bf16");
  TORCH_CHECK(w.scalar_type() == at::kByte && w.is_contiguous() && w.size(1) * 2 == x.size(1), "w: (N, K/2) uint8");
  TORCH_CHECK(absmax.scalar_type() == at::kBFloat16 && absmax.is_contiguous(), "absmax: bf16");
  TORCH_CHECK(lut.numel() == 32 && lut.scalar_type() == at::kShort && lut.is_contiguous() &&
              std::equal(lut.data_ptr<int16_t>(), lut.data_ptr<int16_t>() + 16, lut.data_ptr<int16_t>() + 16),
              "lut: the 16 codes twice (32 x int16)");
  TORCH_CHECK(w.size(0) % 32 == 0 && x.size(1) % bs == 0 && bs % 2 == 0, "shape not tileable");
  TORCH_CHECK(absmax.numel() == (x.size(1) / bs) * w.size(0), "absmax size");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0), KP = K / 2, NB = N / 32, KB = K / bs;
  auto out = torch::empty({M, N}, x.options());
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const uint16_t* ap = reinterpret_cast<const uint16_t*>(absmax.data_ptr());
  uint16_t* op = reinterpret_cast<uint16_t*>(out.data_ptr());
  const __m512i L = _mm512_loadu_si512(lut.data_ptr());
  at::parallel_for(0, NB / 4, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t m = 0; m < M; ++m)
        tiles<4>(reinterpret_cast<const int32_t*>(xp + m * K), wp, ap, op + m * N, 4 * b, KP, KB, N, bs, L);
  });
  for (int64_t nb = NB / 4 * 4; nb < NB; ++nb)
    for (int64_t m = 0; m < M; ++m)
      tiles<1>(reinterpret_cast<const int32_t*>(xp + m * K), wp, ap, op + m * N, nb, KP, KB, N, bs, L);
  return out;
}
