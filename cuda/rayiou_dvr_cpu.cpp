// CPU build of the RayIoU first-hit traversal (same arithmetic as cuda/rayiou_dvr.cu and as
// eval/rayiou.py::march_first_hit). Optional: built lazily by cuda.load_kernel on first use.
// -ffp-contract=off (see cuda/__init__.py) keeps products and sums unfused, like the twin.
#include <torch/extension.h>

#include <cfloat>
#include <cmath>

namespace {

constexpr int kMaxStep = 1000;

void march_ray(const bool* occupied, int num_grids, int size_x, int size_y, int size_z,
               const float* origin, const float* end, int64_t ray, int64_t num_rays,
               double* out_dist, int64_t* out_index) {
  const double xo = origin[0], yo = origin[1], zo = origin[2];
  const double rx = double(end[0]) - xo, ry = double(end[1]) - yo, rz = double(end[2]) - zo;
  const double length = std::sqrt(rx * rx + ry * ry + rz * rz);
  const double dx = rx / length, dy = ry / length, dz = rz / length;
  int vx = int(xo), vy = int(yo), vz = int(zo);
  const int sx = dx >= 0 ? 1 : -1, sy = dy >= 0 ? 1 : -1, sz = dz >= 0 ? 1 : -1;
  double tmx = dx != 0 ? (double(vx + (sx < 0 ? 0 : 1)) - xo) / dx : DBL_MAX;
  double tmy = dy != 0 ? (double(vy + (sy < 0 ? 0 : 1)) - yo) / dy : DBL_MAX;
  double tmz = dz != 0 ? (double(vz + (sz < 0 ? 0 : 1)) - zo) / dz : DBL_MAX;
  const double tdx = dx != 0 ? sx / dx : DBL_MAX;
  const double tdy = dy != 0 ? sy / dy : DBL_MAX;
  const double tdz = dz != 0 ? sz / dz : DBL_MAX;
  const int64_t grid_size = int64_t(size_x) * size_y * size_z;
  unsigned found = 0;
  const unsigned all = (1u << num_grids) - 1u;
  double last_d = -1.0;
  int lx = 0, ly = 0, lz = 0;
  bool was_inside = false;
  for (int step = 0; step <= kMaxStep; ++step) {
    const bool inside = vx >= 0 && vx < size_x && vy >= 0 && vy < size_y && vz >= 0 && vz < size_z;
    if (!inside && was_inside) break;
    const int cx = vx, cy = vy, cz = vz;
    double d;
    if (tmx < tmy) {
      if (tmx < tmz) { d = tmx; vx += sx; tmx += tdx; } else { d = tmz; vz += sz; tmz += tdz; }
    } else {
      if (tmy < tmz) { d = tmy; vy += sy; tmy += tdy; } else { d = tmz; vz += sz; tmz += tdz; }
    }
    if (!inside) continue;
    was_inside = true;
    last_d = d; lx = cx; ly = cy; lz = cz;
    const int64_t flat = (int64_t(cx) * size_y + cy) * size_z + cz;
    for (int g = 0; g < num_grids; ++g) {
      if (((found >> g) & 1u) || !occupied[g * grid_size + flat]) continue;
      found |= 1u << g;
      const int64_t o = g * num_rays + ray;
      out_dist[o] = d;
      out_index[3 * o] = cx; out_index[3 * o + 1] = cy; out_index[3 * o + 2] = cz;
    }
    if (found == all) return;
  }
  for (int g = 0; g < num_grids; ++g) {
    if ((found >> g) & 1u) continue;
    const int64_t o = g * num_rays + ray;
    out_dist[o] = last_d;
    out_index[3 * o] = lx; out_index[3 * o + 1] = ly; out_index[3 * o + 2] = lz;
  }
}

}  // namespace

std::vector<torch::Tensor> march(torch::Tensor occupied, torch::Tensor origin, torch::Tensor end) {
  TORCH_CHECK(!occupied.is_cuda(), "CPU kernel: pass CPU tensors");
  TORCH_CHECK(occupied.dim() == 4 && occupied.scalar_type() == torch::kBool, "occupied: bool [G, X, Y, Z]");
  TORCH_CHECK(occupied.size(0) <= 31, "at most 31 grids per call");
  TORCH_CHECK(origin.scalar_type() == torch::kFloat && end.scalar_type() == torch::kFloat,
              "origin and end must be float32");
  TORCH_CHECK(origin.dim() == 2 && origin.size(1) == 3 && end.sizes() == origin.sizes(), "origin, end: [N, 3]");
  auto occ = occupied.contiguous();
  auto o = origin.contiguous();
  auto e = end.contiguous();
  const int num_grids = occ.size(0);
  const int64_t num_rays = o.size(0);
  auto dist = torch::empty({num_grids, num_rays}, o.options().dtype(torch::kFloat64));
  auto index = torch::empty({num_grids, num_rays, 3}, o.options().dtype(torch::kInt64));
  const bool* occ_p = occ.data_ptr<bool>();
  const float* o_p = o.data_ptr<float>();
  const float* e_p = e.data_ptr<float>();
  double* d_p = dist.data_ptr<double>();
  int64_t* i_p = index.data_ptr<int64_t>();
  const int sx = occ.size(1), sy = occ.size(2), sz = occ.size(3);
  at::parallel_for(0, num_rays, 2048, [&](int64_t begin, int64_t stop) {
    for (int64_t r = begin; r < stop; ++r) {
      march_ray(occ_p, num_grids, sx, sy, sz, o_p + 3 * r, e_p + 3 * r, r, num_rays, d_p, i_p);
    }
  });
  return {dist, index};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("march", &march, "RayIoU first-hit voxel traversal (CPU)");
}
