"""`make demo`: train the SDF tri-plane model self-supervised on the bundled real DDAD scene,
then score it against the real LiDAR of the trained frame (never seen in training).

Steps:
  0. sparse depth triangulated from the images: SIFT keypoints of each camera matched between
     the trained frame and its previous and next frames and triangulated with the known poses
     (`scripts/generate_pseudo_depth.py --backend triangulation`; only when the config reads
     it, as the default `config/sdf_ddad_tiny_keypoints.py` does; complete samples are kept);
  1. `accelerate launch train.py --py-config config/sdf_ddad_tiny_keypoints.py` (photometric,
     colour, regularisers and the keypoints' depth: no LiDAR enters the loss);
  2. depth vs the LiDAR of the scored frame for the SDF prior alone (the analytic ground
     plane, decoder output zeroed), the untrained model, the trained model, a constant
     depth, and for reference the previous and next frames' LiDAR copied into the scored
     cameras (median-scaled and raw AbsRel, and AbsRel per distance band);
  3. occupancy: the voxelized field vs the LiDAR occupancy ground truth of the frame
     (`data/samples/occ_gt/`, geometric IoU inside `mask_lidar`) and the occupied fraction of
     the observed voxels;
  4. pictures in `WORK/pictures/` (per camera: input, depth before / after, LiDAR points on
     the same colour scale; bird's-eye and 3-D views of the occupancy coloured by height);
  5. `WORK/demo_summary.json` and a verdict against the targets of the demo.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG = "config/sdf_ddad_tiny_keypoints.py"
OCC_GT_DIR = REPO / "data/samples/occ_gt/ddad"
# Targets of the demo (issue 9): median-scaled AbsRel, and relative to the untrained model.
TARGET_ABS_REL = 0.20
TARGET_RATIO = 0.65
# SIFT on the full 1216 x 1936 images (67 s for the scene on 2 cores). Half size takes 17 s
# but finds half the points (510 per camera instead of 1180); with 64 keypoint rays instead of
# 128 it scored 0.209 / 0.208 (seeds 0 / 2) against 0.193 / 0.197.
SIFT_SCALE = 1.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="work_dirs/demo")
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--set", dest="overrides", nargs="*", default=[], help="dotted overrides for the run")
    p.add_argument("--skip-train", action="store_true", help="evaluate an existing run in --work-dir")
    p.add_argument("--sift-scale", type=float, default=SIFT_SCALE,
                   help="image scale of the keypoint detection when the config reads triangulated depth")
    p.add_argument("--occ-gt-dir", default=str(OCC_GT_DIR),
                   help="LiDAR occupancy ground truth: DIR/{scene}/{sample time}/labels.npz (scripts/generate_occ_gt.py)")
    args = p.parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    tic = time.perf_counter()

    triangulate_s = 0.0
    if not args.skip_train:
        triangulate_s = ensure_triangulated_depth(args.config, args.overrides, bin_dir, args.sift_scale)
        print(f"[1/4] training {args.config} (self-supervised: no LiDAR in the loss)", flush=True)
        cmd = [str(bin_dir / "accelerate"), "launch", "--num_processes", "1", "--mixed_precision", "no",
               "--num_machines", "1", "--dynamo_backend", "no", "train.py", "--py-config", args.config,
               "--work-dir", str(work)]
        if args.overrides:
            cmd += ["--set", *args.overrides]
        subprocess.run(cmd, cwd=REPO, check=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    train_s = time.perf_counter() - tic

    import numpy as np
    import torch

    from selfsup.training.build import build_for_eval
    from selfsup.training.launch import configure_cpu_threads

    configure_cpu_threads()
    import eval_depth

    common = ["--py-config", args.config, *(["--set", *args.overrides] if args.overrides else [])]
    initial_exp = build_for_eval(eval_depth.parse_args([*common, "--init"]))
    trained_exp = build_for_eval(eval_depth.parse_args([*common, "--resume-from", str(work)]))
    models = {"prior": prior_only(initial_exp.model), "initial": initial_exp.model, "trained": trained_exp.model}
    data = trained_exp.eval_data
    hw = tuple(trained_exp.eval.depth_hw)
    limits = dict(min_depth=trained_exp.eval.min_depth, max_depth=trained_exp.eval.max_depth)

    print(f"[2/4] depth vs the real LiDAR at {hw[0]}x{hw[1]}", flush=True)
    from selfsup.evaluation import evaluate_depth, format_depth_table, median_lidar_depth
    from selfsup.io import atomic_write_text

    t_eval = time.perf_counter()
    depth_res = {}
    for name, model in models.items():
        depth_res[name] = evaluate_depth(model, data, hw, keep_maps=True, **limits)
        print(format_depth_table(depth_res[name], f"{name} model"))
    constant = median_lidar_depth(data, hw, **limits)
    depth_res["constant"] = evaluate_depth(models["initial"], data, hw, constant_depth=constant, keep_maps=True, **limits)
    # A baseline that sees real geometry: the LiDAR of the previous and next frames (never
    # used in training either) moved into the scored cameras; scored where it lands, and
    # everywhere with each empty pixel taking the nearest copied depth.
    from selfsup.data.frames import collate_frames
    from selfsup.evaluation import fill_nearest, neighbour_lidar_depth

    copied = neighbour_lidar_depth(collate_frames([data[0]]), hw, **limits)
    lidar_copy = evaluate_depth(None, data, hw, predicted_maps=[copied], **limits)
    depth_res["lidar_copy_filled"] = evaluate_depth(None, data, hw, predicted_maps=[fill_nearest(copied)], keep_maps=True, **limits)
    eval_s = time.perf_counter() - t_eval
    for name in ("initial", "trained"):
        res = depth_res[name]
        atomic_write_text(work / f"depth_{name}.json", json.dumps(
            {"model": {"overall": res["overall"], "per_camera": res["per_camera"]}, "depth_hw": list(hw)}, indent=1))
    bands = band_table(depth_res, data, hw, limits)

    print("[3/4] occupancy vs the LiDAR occupancy ground truth", flush=True)
    occupancy = {name: predict_labels(model, data) for name, model in models.items()}
    gt = load_occ_gt(data[0], Path(args.occ_gt_dir))
    occ_scores = {name: occupancy_scores(labels, gt) for name, labels in occupancy.items()}

    print("[4/4] pictures", flush=True)
    pictures = write_pictures(work / "pictures", data, hw, limits, depth_res, occupancy, gt)

    summary = verdict(depth_res, bands, occ_scores, constant)
    summary["lidar_copy_covered"] = {"coverage": lidar_copy["coverage"],
                                     **{k: lidar_copy["overall"][k]["all"]["abs_rel"] for k in ("median", "raw")}}
    print(f"neighbour-frame LiDAR copied into the scored cameras: covers {100 * lidar_copy['coverage']:.1f}% of the "
          f"scored points, AbsRel there {summary['lidar_copy_covered']['median']:.4f} median-scaled / "
          f"{summary['lidar_copy_covered']['raw']:.4f} raw (row lidar_copy_filled: the nearest copied depth elsewhere)")
    summary["triangulation_seconds"] = round(triangulate_s, 1)
    summary["train_seconds"] = round(train_s - triangulate_s, 1)
    summary["eval_seconds"] = round(eval_s, 1)
    summary["total_seconds"] = round(time.perf_counter() - tic, 1)
    summary["pictures"] = [str(p) for p in pictures]
    atomic_write_text(work / "demo_summary.json", json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "abs_rel_bands"}, indent=1))
    print("pictures:\n  " + "\n  ".join(summary["pictures"]))
    print(f"outputs in {work}: demo_summary.json, depth_*.json, pictures/, TensorBoard logs, checkpoints/")
    return 0 if summary["learned"] else 1


def ensure_triangulated_depth(config: str, overrides: list[str], bin_dir: Path, sift_scale: float) -> float:
    """If the training dataset reads triangulated sparse depth (``pseudo_depth_dir`` of a
    ``DDADFrames``), write it first with ``scripts/generate_pseudo_depth.py --backend
    triangulation`` (samples already complete are skipped). Returns the seconds spent."""
    from selfsup.training.config import apply_overrides, load_config

    cfg = apply_overrides(load_config(REPO / config), list(overrides))
    ds = cfg.train_data
    while not hasattr(ds, "pseudo_depth_dir") and hasattr(ds, "dataset"):
        ds = ds.dataset
    out = getattr(ds, "pseudo_depth_dir", None)
    if not out:
        return 0.0
    tic = time.perf_counter()
    scenes = (ds.scene,) if isinstance(ds.scene, str) else tuple(ds.scene)
    print(f"[0/4] sparse depth triangulated from the images (SIFT + the known poses, no LiDAR) -> {out}", flush=True)
    cmd = [str(bin_dir / "python"), "scripts/generate_pseudo_depth.py", "--data-root", str(ds.root), "--dataset", "ddad",
           "--scenes", *scenes, "--backend", "triangulation", "--out-dir", str(out), "--sift-scale", str(sift_scale)]
    if getattr(ds, "ego_mask_dir", None):
        cmd += ["--ego-mask-dir", str(ds.ego_mask_dir)]
    subprocess.run(cmd, cwd=REPO, check=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return time.perf_counter() - tic


# ---------------------------------------------------------------------------- models
# The prior alone is the ground plane z = 0, which passes exactly through the centres of the
# Occ3D voxel layer k = 2 ([-0.2, 0.2] m). Its SDF there is 0, so whether the voxelizer's
# ``sdf <= 0`` counts that layer was decided by float rounding: 17.4 % IoU with the layer,
# 0.06 % without, and a field box with a shell flipped it. The prior is scored with its
# plane this far above z = 0, so that the layer holding the plane counts as ground.
PRIOR_PLANE_LIFT = 1e-3  # metres


def prior_only(model):
    """A copy of the model whose decoded SDF is the constant ``-PRIOR_PLANE_LIFT``: the
    analytic SDF prior alone, its ground plane lifted by 1 mm so that the voxel layer whose
    centres lie on it is counted occupied whatever the rounding (colour and semantic outputs
    are untouched; they do not affect depth or occupancy).

    Raises:
        ValueError: the representation drops the decoder's SDF bias (``learn_sdf_offset=False``),
            so the plane cannot be lifted.
    """
    import torch

    prior = copy.deepcopy(model)
    rep = prior.representation
    if not rep.learn_sdf_offset:
        raise ValueError("prior_only: the representation has learn_sdf_offset=False, so its decoded SDF has no "
                         "constant term to lift the prior's plane with")
    last = rep.decoder[-1]
    with torch.no_grad():
        last.weight[0].zero_()
        last.bias[0].fill_(-PRIOR_PLANE_LIFT / rep.sdf_scale)
    return prior.eval()


def predict_labels(model, data):
    import torch

    from selfsup.data.frames import collate_frames

    with torch.no_grad():
        return model.predict_occupancy(model.encode(collate_frames([data[0]]))).labels[0].cpu().numpy()


# ---------------------------------------------------------------------------- depth bands
def band_table(depth_res: dict, data, hw, limits) -> dict:
    """AbsRel per LiDAR depth band (median-scaled and raw), averaged over images."""
    import numpy as np
    import torch

    from eval.depth import banded_abs_rel
    from selfsup.data.frames import collate_frames
    from selfsup.evaluation import frame_lidar_targets

    _, targets = frame_lidar_targets(collate_frames([data[0]]), 0, hw, **limits)
    table = {}
    for name, res in depth_res.items():
        maps = torch.from_numpy(res["maps"][0])
        table[name] = {}
        for kind in ("median", "raw"):
            per_band: dict[str, list] = {}
            counts: dict[str, int] = {}
            for v, target in enumerate(targets):
                if target.depth.numel() == 0:
                    continue
                pred = maps[v, target.rows, target.cols].double()
                for band, r in banded_abs_rel(pred, target.depth.double(), median_scaling=kind == "median").items():
                    counts[band] = counts.get(band, 0) + r["count"]
                    if r["count"]:
                        per_band.setdefault(band, []).append(r["abs_rel"])
            table[name][kind] = {b: float(np.mean(per_band[b])) if b in per_band else float("nan") for b in counts}
        table[name]["points"] = counts
    names = list(table)
    bands = list(table[names[0]]["median"])
    print("\nAbsRel by LiDAR depth band (median-scaled / raw; images averaged)")
    print(f"{'band m':10s}{'points':>8s}" + "".join(f"{n:>18s}" for n in names))
    for b in bands:
        cells = "".join(f"{table[n]['median'][b]:9.3f} /{table[n]['raw'][b]:6.3f}" + "  " for n in names)
        print(f"{b:10s}{table[names[0]]['points'][b]:8d}  {cells}")
    return table


# ---------------------------------------------------------------------------- occupancy
def load_occ_gt(sample, root: Path) -> dict | None:
    """The LiDAR occupancy ground truth of the scored frame, or None when not shipped."""
    import numpy as np

    scene = sample.scene_names
    stamp = str(sample.tokens).split("/")[-1]
    folder = root / scene
    if not folder.is_dir():
        print(f"no occupancy ground truth under {folder}: occupancy IoU not scored")
        return None
    hits = sorted(p for p in folder.rglob("labels.npz") if stamp in str(p.relative_to(folder)))
    if not hits:
        print(f"no labels.npz for sample {sample.tokens} under {folder}: occupancy IoU not scored")
        return None
    with np.load(hits[0]) as f:
        return {"semantics": f["semantics"], "mask_lidar": f["mask_lidar"].astype(bool),
                "mask_camera": f["mask_camera"], "path": str(hits[0])}


def geometric_iou(labels, gt: dict) -> float:
    """Geometric IoU (occupied vs free, percent) inside ``mask_lidar``: the ground-truth
    issue's ``selfsup.occ_gt.metrics.geometric_iou`` when present, else the same Occ3D
    formula (``eval.occ3d``: every occupied label counts as one class)."""
    import numpy as np

    try:
        from selfsup.occ_gt.metrics import geometric_iou as gt_iou
    except ImportError:
        gt_iou = None
    if gt_iou is not None:
        return gt_iou(labels, {k: gt[k] for k in ("semantics", "mask_lidar", "mask_camera")}, mask="mask_lidar")
    from eval.occ3d import occ3d_miou

    geo = lambda x: np.where(x == 17, 17, 0).astype(np.uint8)  # noqa: E731
    return occ3d_miou(geo(labels), geo(gt["semantics"]), gt["mask_lidar"])["IoU"]


def occupancy_scores(labels, gt: dict | None) -> dict:
    """Geometric IoU (percent) inside ``mask_lidar`` and occupied fractions."""
    out = {"occupied_fraction_grid": float((labels != 17).mean())}
    if gt is not None:
        mask = gt["mask_lidar"]
        out["iou"] = geometric_iou(labels, gt)
        out["occupied_fraction_observed"] = float((labels[mask] != 17).mean())
        out["gt_occupied_fraction_observed"] = float((gt["semantics"][mask] != 17).mean())
    return out


# ---------------------------------------------------------------------------- pictures
def write_pictures(folder: Path, data, hw, limits, depth_res, occupancy, gt) -> list[Path]:
    """Per-camera panels and occupancy views; returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    import torch.nn.functional as F

    from selfsup.data.frames import collate_frames
    from selfsup.evaluation import frame_lidar_targets
    from selfsup.io import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    sample = data[0]
    batch = collate_frames([sample])
    _, targets = frame_lidar_targets(batch, 0, hw, **limits)
    images = F.interpolate(batch.images[0, 0], size=hw, mode="bilinear", align_corners=False).clamp(0, 1)
    images = images.permute(0, 2, 3, 1).numpy()
    # The ego car's pixels (kept out of the photometric loss), outlined on the input images.
    body = ~F.interpolate(batch.valid_masks[0, :, None].float(), size=hw, mode="nearest")[:, 0].numpy().astype(bool)
    vmax = 60.0
    cmap = "turbo_r"
    written = []

    def save(fig, name):
        path = folder / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    columns = [("input image", None), ("depth, untrained", "initial"), ("depth, trained", "trained"),
               ("LiDAR (never seen)", "lidar")]
    V = len(targets)
    fig_all, axes_all = plt.subplots(V, 4, figsize=(16, 2.2 * V))
    for v, (cam, target) in enumerate(zip(sample.camera_names, targets)):
        fig, axes = plt.subplots(1, 4, figsize=(16, 2.4))
        for ax_row in (axes, axes_all[v]):
            for c, (title, key) in enumerate(columns):
                ax = ax_row[c]
                ax.set_xticks([]), ax.set_yticks([])
                if key is None:
                    ax.imshow(images[v])
                    if body[v].any():
                        ax.contour(body[v], levels=[0.5], colors="magenta", linewidths=0.8)
                        title = f"{title} (magenta: own car, not in the loss)"
                elif key == "lidar":
                    ax.imshow(images[v] * 0.35)
                    sc = ax.scatter(target.cols.numpy() + 0.5, target.rows.numpy() + 0.5, c=target.depth.numpy(),
                                    s=1.5, cmap=cmap, vmin=0, vmax=vmax, linewidths=0)
                else:
                    d = depth_res[key]["maps"][0][v]
                    m = depth_res[key]["per_camera"].get(cam, {}).get("median", {}).get("all", {})
                    ax.imshow(np.where(d > 0, d, np.nan), cmap=cmap, vmin=0, vmax=vmax)
                    title = f"{title} (AbsRel med {m.get('abs_rel', float('nan')):.3f})"
                ax.set_title(f"{cam}: {title}" if c == 0 else title, fontsize=8)
        fig.colorbar(sc, ax=axes, fraction=0.015, label="depth (m)")
        save(fig, f"depth_{cam}.png")
    fig_all.colorbar(sc, ax=axes_all, fraction=0.01, label="depth (m)")
    save(fig_all, "depth_all_cameras.png")

    # Bird's-eye view coloured by the height of the highest occupied voxel.
    from selfsup.grid import OCC3D_GRID

    z_centres = OCC3D_GRID.lower[2] + OCC3D_GRID.voxel_size * (np.arange(OCC3D_GRID.shape[2]) + 0.5)
    panels = [(f"{k}", lab) for k, lab in occupancy.items()]
    if gt is not None:
        panels.append(("LiDAR ground truth", gt["semantics"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4))
    extent = (OCC3D_GRID.upper[1], OCC3D_GRID.lower[1], OCC3D_GRID.lower[0], OCC3D_GRID.upper[0])
    for ax, (title, lab) in zip(axes, panels):
        occ = lab != 17
        top = np.where(occ.any(axis=2), z_centres[occ.shape[2] - 1 - np.argmax(occ[:, :, ::-1], axis=2)], np.nan)
        if gt is not None:
            top = np.where(gt["mask_lidar"].any(axis=2) | occ.any(axis=2), top, np.nan)
        im = ax.imshow(top[::-1, ::-1], cmap="viridis", vmin=OCC3D_GRID.lower[2], vmax=OCC3D_GRID.upper[2],
                       extent=extent, interpolation="nearest")
        ax.set_facecolor("black")
        ax.set_title(f"{title}: {100 * occ.mean():.1f}% of grid", fontsize=9)
        ax.set_xlabel("y (m, left)"), ax.set_ylabel("x (m, forward)")
    fig.colorbar(im, ax=axes, fraction=0.02, label="height of top occupied voxel (m)")
    save(fig, "occupancy_bev.png")

    # 3-D view of the occupied voxels' surface (occupied with a free 6-neighbour: what a
    # camera could see; the solid interior is hidden) for the trained field and the GT.
    def shell(occ):
        pad = np.pad(occ, 1, constant_values=True)  # outside the box counts as hidden
        free_nb = np.zeros_like(occ)
        for axis in range(3):
            for shift in (-1, 1):
                free_nb |= ~np.roll(pad, shift, axis=axis)[1:-1, 1:-1, 1:-1]
        return occ & free_nb

    fig = plt.figure(figsize=(12, 5.5))
    shown = [("trained", occupancy["trained"])] + ([("LiDAR ground truth", gt["semantics"])] if gt is not None else [])
    centres = OCC3D_GRID.centers().numpy()
    for i, (title, lab) in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), i + 1, projection="3d")
        occ = shell(lab != 17)
        pts = centres[occ]
        rng = np.random.default_rng(0)
        if len(pts) > 40000:
            pts = pts[rng.choice(len(pts), 40000, replace=False)]
        ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c=pts[:, 2], cmap="viridis", s=0.6,
                   vmin=OCC3D_GRID.lower[2], vmax=OCC3D_GRID.upper[2], linewidths=0)
        ax.set_xlim(-40, 40), ax.set_ylim(-40, 40), ax.set_zlim(-1, 5.4)
        ax.set_box_aspect((80, 80, 12))
        ax.view_init(elev=35, azim=-150)
        ax.set_title(f"{title}: surface of the occupied voxels, coloured by height", fontsize=9)
        ax.set_xlabel("x (m)"), ax.set_ylabel("y (m)")
    save(fig, "occupancy_3d.png")
    return written


# ---------------------------------------------------------------------------- verdict
def verdict(depth_res: dict, bands: dict, occ: dict, constant: float) -> dict:
    def absrel(name, kind):
        return depth_res[name]["overall"][kind]["all"]["abs_rel"]

    rows = {name: {k: absrel(name, k) for k in ("median", "raw")}
            for name in ("prior", "initial", "trained", "constant", "lidar_copy_filled") if name in depth_res}
    print("\nAbsRel vs the real LiDAR of the trained frame (lower is better)")
    print(f"{'':10s}{'median-scaled':>15s}{'raw':>10s}")
    for name, r in rows.items():
        print(f"{name:10s}{r['median']:15.4f}{r['raw']:10.4f}")
    learned = rows["trained"]["median"] < min(rows["initial"]["median"], rows["prior"]["median"], rows["constant"]["median"])
    raw_better = rows["trained"]["raw"] < min(rows["initial"]["raw"], rows["constant"]["raw"])
    ratio = rows["trained"]["median"] / rows["initial"]["median"]
    targets = {
        f"median AbsRel <= {TARGET_ABS_REL}": rows["trained"]["median"] <= TARGET_ABS_REL,
        f"median AbsRel <= {TARGET_RATIO} x initial": ratio <= TARGET_RATIO,
    }
    iou = {k: v.get("iou", float("nan")) for k, v in occ.items()}
    print("\nOccupancy vs LiDAR ground truth (geometric IoU inside mask_lidar, %; occupied fraction of observed voxels)")
    for name, v in occ.items():
        print(f"{name:10s} IoU {v.get('iou', float('nan')):6.2f}  occupied observed "
              f"{100 * v.get('occupied_fraction_observed', float('nan')):5.1f}%  grid {100 * v['occupied_fraction_grid']:5.1f}%")
    if "iou" in occ["trained"]:
        print(f"ground truth occupied fraction of observed voxels: {100 * occ['trained']['gt_occupied_fraction_observed']:.1f}%")
        targets["occupancy IoU above the initial model's"] = iou["trained"] > iou["initial"]
    for k, ok in targets.items():
        print(f"target {k}: {'met' if ok else 'NOT met'}")
    return {
        "abs_rel": rows,
        "abs_rel_ratio_trained_to_initial": ratio,
        "abs_rel_bands": bands,
        "constant_depth_m": constant,
        "occupancy_iou": {"initial": iou["initial"], "trained": iou["trained"], "prior": iou["prior"]},
        "occupancy": occ,
        "targets": targets,
        "learned": learned,
        "raw_also_better": raw_better,
    }


if __name__ == "__main__":
    raise SystemExit(main())
