// Attention for one new token per sequence (decoding), float32 math on bf16 inputs (AVX-512).
//
// q: (B, H, 1, D) bf16; k, v: (B, Hkv, T, D) bf16, any batch/head/time strides, last dim
// contiguous (views into a KV cache are fine); returns (B, 1, H, D) bf16, the layout Hugging
// Face's attention functions return. Per head: s_t = scale * <q, k_t>, p = softmax(s),
// o = sum_t p_t v_t, all in float32, rounded to bf16 once at the end. It replaces three batched
// float32 ops (attention.py, used for prompts) whose cost for one query is mostly per-call
// setup, with one pass over K and V.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <vector>

static inline __m512 load_bf16(const at::BFloat16* p) {  // 16 bf16 -> 16 fp32 (exact)
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

static inline __m512 exp_ps(__m512 x) {  // e^x for x <= 0, ~1 ulp (Cephes polynomial)
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

torch::Tensor attend_one(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(2) == 1, "q: (B, H, 1, D); k, v: (B, Hkv, T, D)");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 && v.scalar_type() == at::kBFloat16, "bf16 only");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3), Hkv = k.size(1), T = k.size(2);
  TORCH_CHECK(D % 16 == 0 && D <= 256, "head dim must be a multiple of 16, at most 256");
  TORCH_CHECK(H % Hkv == 0 && k.size(0) == B && v.sizes() == k.sizes() && k.size(3) == D && T > 0, "shapes");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "last dim must be contiguous");
  auto out = torch::empty({B, 1, H, D}, q.options());
  const int64_t groups = H / Hkv, DV = D / 16;
  const auto *qp = q.data_ptr<at::BFloat16>(), *kp = k.data_ptr<at::BFloat16>(), *vp = v.data_ptr<at::BFloat16>();
  auto* op = out.data_ptr<at::BFloat16>();
  at::parallel_for(0, B * H, 4, [&](int64_t i0, int64_t i1) {
    std::vector<float> s(T);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, h = i % H, hk = h / groups;
      const at::BFloat16* qh = qp + b * q.stride(0) + h * q.stride(1);
      const at::BFloat16* kh = kp + b * k.stride(0) + hk * k.stride(1);
      const at::BFloat16* vh = vp + b * v.stride(0) + hk * v.stride(1);
      __m512 qv[16];
      for (int64_t j = 0; j < DV; ++j) qv[j] = load_bf16(qh + 16 * j);
      float mx = -INFINITY;
      for (int64_t t = 0; t < T; ++t) {
        const at::BFloat16* kt = kh + t * k.stride(2);
        __m512 acc = _mm512_mul_ps(qv[0], load_bf16(kt));
        for (int64_t j = 1; j < DV; ++j) acc = _mm512_fmadd_ps(qv[j], load_bf16(kt + 16 * j), acc);
        s[t] = _mm512_reduce_add_ps(acc) * (float)scale;
        mx = std::max(mx, s[t]);
      }
      float sum = 0.f;
      int64_t t = 0;
      const __m512 m = _mm512_set1_ps(mx);
      __m512 sv = _mm512_setzero_ps();
      for (; t + 16 <= T; t += 16) {
        __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(&s[t]), m));
        _mm512_storeu_ps(&s[t], e);
        sv = _mm512_add_ps(sv, e);
      }
      if (t < T) {
        const __mmask16 tail = (__mmask16)((1u << (T - t)) - 1);
        __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, &s[t]), m));
        _mm512_mask_storeu_ps(&s[t], tail, e);
        sv = _mm512_add_ps(sv, _mm512_maskz_mov_ps(tail, e));
      }
      sum = _mm512_reduce_add_ps(sv);
      __m512 o[16];
      for (int64_t j = 0; j < DV; ++j) o[j] = _mm512_setzero_ps();
      for (int64_t t2 = 0; t2 < T; ++t2) {
        const __m512 p = _mm512_set1_ps(s[t2]);
        const at::BFloat16* vt = vh + t2 * v.stride(2);
        for (int64_t j = 0; j < DV; ++j) o[j] = _mm512_fmadd_ps(p, load_bf16(vt + 16 * j), o[j]);
      }
      const __m512 inv = _mm512_set1_ps(1.f / sum);
      at::BFloat16* oh = op + (b * H + h) * D;
      for (int64_t j = 0; j < DV; ++j)
        _mm256_storeu_si256((__m256i*)(oh + 16 * j), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(o[j], inv)));
    }
  });
  return out;
}
