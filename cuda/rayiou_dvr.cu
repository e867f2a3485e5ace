// RayIoU first-hit voxel traversal: one thread per ray, G label grids marched together.
// Same arithmetic as eval/rayiou.py::march_first_hit (its PyTorch twin) and as the
// SparseOcc lib/dvr render_forward kernel in phase "test". Products and sums use explicit
// round-to-nearest intrinsics so nvcc cannot fuse them: the twin computes them unfused.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <torch/extension.h>

#include <cfloat>

namespace {

constexpr int kMaxStep = 1000;

__global__ void march_kernel(const bool* __restrict__ occupied, int num_grids, int size_x,
                             int size_y, int size_z, const float* __restrict__ origin,
                             const float* __restrict__ end, int num_rays,
                             double* __restrict__ out_dist, int64_t* __restrict__ out_index) {
  const int ray = blockIdx.x * blockDim.x + threadIdx.x;
  if (ray >= num_rays) return;
  const double xo = origin[3 * ray], yo = origin[3 * ray + 1], zo = origin[3 * ray + 2];
  const double rx = __dsub_rn(double(end[3 * ray]), xo);
  const double ry = __dsub_rn(double(end[3 * ray + 1]), yo);
  const double rz = __dsub_rn(double(end[3 * ray + 2]), zo);
  const double length =
      sqrt(__dadd_rn(__dadd_rn(__dmul_rn(rx, rx), __dmul_rn(ry, ry)), __dmul_rn(rz, rz)));
  const double dx = rx / length, dy = ry / length, dz = rz / length;
  int vx = int(xo), vy = int(yo), vz = int(zo);  // truncation toward zero, as the reference
  const int sx = dx >= 0 ? 1 : -1, sy = dy >= 0 ? 1 : -1, sz = dz >= 0 ? 1 : -1;
  double tmx = dx != 0 ? (double(vx + (sx < 0 ? 0 : 1)) - xo) / dx : DBL_MAX;
  double tmy = dy != 0 ? (double(vy + (sy < 0 ? 0 : 1)) - yo) / dy : DBL_MAX;
  double tmz = dz != 0 ? (double(vz + (sz < 0 ? 0 : 1)) - zo) / dz : DBL_MAX;
  const double tdx = dx != 0 ? sx / dx : DBL_MAX;
  const double tdy = dy != 0 ? sy / dy : DBL_MAX;
  const double tdz = dz != 0 ? sz / dz : DBL_MAX;

  const int64_t grid_size = int64_t(size_x) * size_y * size_z;
  unsigned found_mask = 0;
  const unsigned all_mask = (num_grids >= 32) ? 0xffffffffu : ((1u << num_grids) - 1u);
  double last_d = -1.0;
  int lx = 0, ly = 0, lz = 0;
  bool was_inside = false;
  for (int step = 0; step <= kMaxStep; ++step) {
    const bool inside = vx >= 0 && vx < size_x && vy >= 0 && vy < size_y && vz >= 0 && vz < size_z;
    if (!inside && was_inside) break;
    const int cx = vx, cy = vy, cz = vz;
    double d;
    if (tmx < tmy) {
      if (tmx < tmz) { d = tmx; vx += sx; tmx = __dadd_rn(tmx, tdx); }
      else { d = tmz; vz += sz; tmz = __dadd_rn(tmz, tdz); }
    } else {
      if (tmy < tmz) { d = tmy; vy += sy; tmy = __dadd_rn(tmy, tdy); }
      else { d = tmz; vz += sz; tmz = __dadd_rn(tmz, tdz); }
    }
    if (inside) {
      was_inside = true;
      last_d = d; lx = cx; ly = cy; lz = cz;
      const int64_t flat = (int64_t(cx) * size_y + cy) * size_z + cz;
      for (int g = 0; g < num_grids; ++g) {
        if ((found_mask >> g) & 1u) continue;
        if (occupied[g * grid_size + flat]) {
          found_mask |= 1u << g;
          const int64_t o = int64_t(g) * num_rays + ray;
          out_dist[o] = d;
          out_index[3 * o] = cx; out_index[3 * o + 1] = cy; out_index[3 * o + 2] = cz;
        }
      }
      if (found_mask == all_mask) return;
    }
  }
  for (int g = 0; g < num_grids; ++g) {
    if ((found_mask >> g) & 1u) continue;
    const int64_t o = int64_t(g) * num_rays + ray;
    out_dist[o] = last_d;
    out_index[3 * o] = lx; out_index[3 * o + 1] = ly; out_index[3 * o + 2] = lz;
  }
}

}  // namespace

std::vector<torch::Tensor> march(torch::Tensor occupied, torch::Tensor origin, torch::Tensor end) {
  TORCH_CHECK(occupied.is_cuda() && origin.is_cuda() && end.is_cuda(), "inputs must be CUDA tensors");
  TORCH_CHECK(occupied.dim() == 4 && occupied.scalar_type() == torch::kBool, "occupied: bool [G, X, Y, Z]");
  TORCH_CHECK(occupied.size(0) <= 32, "at most 32 grids per call");
  TORCH_CHECK(origin.scalar_type() == torch::kFloat && end.scalar_type() == torch::kFloat,
              "origin and end must be float32");
  TORCH_CHECK(origin.dim() == 2 && origin.size(1) == 3 && end.sizes() == origin.sizes(),
              "origin and end: [N, 3]");
  auto occ = occupied.contiguous();
  auto o = origin.contiguous();
  auto e = end.contiguous();
  const int num_grids = occ.size(0);
  const int num_rays = o.size(0);
  auto dist = torch::empty({num_grids, num_rays}, o.options().dtype(torch::kFloat64));
  auto index = torch::empty({num_grids, num_rays, 3}, o.options().dtype(torch::kInt64));
  if (num_rays > 0) {
    const int threads = 256;
    march_kernel<<<(num_rays + threads - 1) / threads, threads, 0,
                   c10::cuda::getCurrentCUDAStream()>>>(
        occ.data_ptr<bool>(), num_grids, occ.size(1), occ.size(2), occ.size(3), o.data_ptr<float>(),
        e.data_ptr<float>(), num_rays, dist.data_ptr<double>(), index.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {dist, index};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("march", &march, "RayIoU first-hit voxel traversal (CUDA)");
}
