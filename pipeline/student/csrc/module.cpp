// Python bindings of the native decoding kernels (built by pipeline/student/kernels.py).
#include <torch/extension.h>

torch::Tensor nf4_gemv(torch::Tensor x, torch::Tensor w, torch::Tensor absmax, torch::Tensor lut, int64_t bs);
torch::Tensor attend_one(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("nf4_gemv", &nf4_gemv, "NF4 matrix-vector product on bitsandbytes' packed CPU layout");
  m.def("attend_one", &attend_one, "float32 attention of one new token per sequence");
}
