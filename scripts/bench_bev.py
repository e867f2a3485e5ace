"""BEV benchmarks: the LSS splat (voxel pooling) and the BEV model's forward pass.

- ``splat``: :func:`selfsup.representations.lss.splat_features` at the FlashOcc M1 size
  (6 cameras, 88 depth bins, 16 x 44 feature cells of a 256 x 704 image at stride 16, 64
  channels) into the 200 x 200 BEV plane, and at the BEVDet-Occ 3D size (32 channels) into
  the 200 x 200 x 16 volume: ms per call forward and forward + backward, frustum points
  per second.
- ``model``: ``BEVOcc`` of ``config/flashocc_r50.py`` (and ``bevdet_occ_r50_3d.py``) on one
  sample of 6 x 256 x 704 images: ms per forward (encode + voxel labels, eval mode, no
  gradient) and the peak resident memory the forward adds (Linux ``VmHWM`` after resetting
  it through ``/proc/self/clear_refs``; on CUDA ``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _timeit(fn, repeats: int, device: str) -> float:
    """Median ms of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_mb(fn, device: str) -> float:
    """Peak memory one call of ``fn`` adds, MB (see the module docstring)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - base) / 1024


def splat(device: str = "cpu", repeats: int = 3) -> dict:
    from selfsup.grid import OCC3D_GRID
    from selfsup.representations.lss import FLASHOCC_DEPTH_BINS, frustum_points, splat_features

    torch.manual_seed(0)
    B, V, h, w = 1, 6, 16, 44
    D = FLASHOCC_DEPTH_BINS.count
    K = torch.tensor([[560.0, 0.0, 352.0], [0.0, 560.0, 128.0], [0.0, 0.0, 1.0]], device=device).expand(B, V, 3, 3)
    T = torch.eye(4, device=device).repeat(B, V, 1, 1)
    for v in range(V):  # six cameras around the car, 1.5 m high, looking outwards
        yaw = 2 * torch.pi * v / V
        c, s = float(torch.cos(torch.tensor(yaw))), float(torch.sin(torch.tensor(yaw)))
        R = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
        Rz = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        T[:, v, :3, :3] = (Rz @ R).to(device)
        T[:, v, 2, 3] = 1.5
    pts = frustum_points(K, T, (h, w), 16, FLASHOCC_DEPTH_BINS.values(device))
    out = {}
    for name, C, collapse in (("bev_64ch", 64, True), ("volume_32ch", 32, False)):
        probs = torch.rand(B, V, D, h, w, device=device).softmax(2).requires_grad_()
        ctx = torch.randn(B, V, C, h, w, device=device, requires_grad=True)

        def fwd():
            with torch.no_grad():
                splat_features(probs, ctx, pts, OCC3D_GRID, collapse)

        def fwd_bwd():
            splat_features(probs, ctx, pts, OCC3D_GRID, collapse).sum().backward()

        ms = _timeit(fwd, repeats, device)
        out[name] = {
            "points": B * V * D * h * w, "channels": C, "collapse_z": collapse,
            "forward_ms": round(ms, 2), "forward_backward_ms": round(_timeit(fwd_bwd, repeats, device), 2),
            "mpoints_per_s": round(B * V * D * h * w / ms / 1e3, 2),
        }
    return out


def model(device: str = "cpu", repeats: int = 1, configs: tuple[str, ...] = ("flashocc_r50", "bevdet_occ_r50_3d")) -> dict:
    import fiddle as fdl

    from selfsup.data.frames import Frames, collate_frames
    from selfsup.training.config import load_config

    out = {}
    for name in configs:
        cfg = load_config(REPO / "config" / f"{name}.py")
        torch.manual_seed(0)
        net = fdl.build(cfg.model).to(device).eval()
        H, W = 256, 704
        V = 6
        K = torch.tensor([[560.0, 0.0, 352.0], [0.0, 560.0, 128.0], [0.0, 0.0, 1.0]]).expand(1, V, 3, 3)
        sample = Frames(
            images=torch.rand(1, V, 3, H, W), K=K.clone(), T_ego_cam=torch.eye(4).repeat(1, V, 1, 1),
            T_global_ego=torch.eye(4)[None], timestamps=torch.zeros(1, dtype=torch.float64),
            frame_offsets=torch.zeros(1, dtype=torch.int64), valid_masks=torch.ones(V, H, W, dtype=torch.bool),
            points_ego=[torch.zeros(0, 3)], tokens="bench", scene_names="bench",
        )
        batch = collate_frames([sample]).to(device)

        def fwd():
            with torch.no_grad():
                net.predict_occupancy(net.encode(batch))

        ms = _timeit(fwd, repeats, device)
        out[name] = {
            "input": [1, V, 3, H, W], "forward_ms": round(ms, 1), "peak_memory_mb": round(peak_memory_mb(fwd, device), 1),
            "parameters_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
        }
        del net
    return out


def run(device: str = "cpu") -> dict:
    return {"splat": splat(device), "model": model(device)}
