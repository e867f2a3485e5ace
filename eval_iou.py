"""Evaluate Occ3D-nuScenes occupancy: mIoU (challenge protocol) and RayIoU (SparseOcc).

Predictions-directory mode:

    python eval_iou.py --occ3d --pred-dir PRED --data-root ROOT --version v1.0-mini \
        [--gt-dir GT] [--use-mask] [--json-out FILE]

- predictions: PRED/{scene_name}/{sample_token}/labels.npz, key `semantics`, uint8 200x200x16;
- GT: ROOT/gts/{scene_name}/{sample_token}/labels.npz (or GT/...), keys `semantics`,
  `mask_lidar`, `mask_camera`; every GT sample is evaluated and must have a prediction;
- RayIoU origins: the LIDAR_TOP positions of all keyframes of the sample's scene, in the
  current keyframe's ego frame: from `lidar_origins.npy` next to the GT file where it exists
  (written by scripts/generate_occ_gt.py for any dataset; then --data-root is optional), else
  from the nuScenes tables in ROOT (nuscenes-devkit);
- sample directories: `{scene}/{token_dir}`, where a token `"{scene}/<id>"` (DDAD) maps to
  `<id>` (`selfsup.occ_gt.paths.gt_label_path`).

Checkpoint mode (voxelize the model's representation for every val sample, then the same):

    python eval_iou.py --py-config CFG (--resume-from CKPT | --init) --occ3d [--use-mask] [--sem] \
        [--resolution 0.4] [--save-occ-path DIR] [--gt-dir GT] [--json-out FILE]

- any dataset of the ``Frames`` contract (nuScenes, DDAD, ...): GT from ``--gt-dir``
  (``{gt_dir}/{scene}/{token}/labels.npz``, a ``/`` in a token replaced by ``_``) or, without
  it, the voxel GT the config's ``val_data`` loads itself (its ``gt_dir``); RayIoU origins
  from the dataset's own LiDAR poses (``lidar_poses(i)``); ``--init`` evaluates the untrained
  model; ``--save-occ-path`` writes the predictions in the predictions-directory layout
  (atomically), so they can be re-scored without the model;
- without ``--sem`` only the geometric IoU (occupied vs free) is reported.

Runs the same under `accelerate launch --num_processes N`: samples are split by rank
without padding (no sample counted twice), and the integer metric states are summed.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from eval.occ3d import FREE_LABEL, OCC3D_CLASS_NAMES, Occ3DMetric
from eval.rayiou import GRID_SHAPE, RayIoUMetric, scene_lidar_origins_ego, select_origins


@dataclass(frozen=True)
class EvalSample:
    """One sample for the evaluation loop (what a checkpoint mode must also produce)."""

    scene_name: str
    token: str
    pred: np.ndarray  # uint8 [200, 200, 16] labels 0..17
    gt: np.ndarray  # uint8 [200, 200, 16]
    mask: Optional[np.ndarray]  # bool [200, 200, 16] camera mask, or None
    origins: np.ndarray  # float64 [O, 3] selected LiDAR origins, ego frame, metres


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """Items of one process: a contiguous block, sizes differing by at most one, no padding.

    Every item goes to exactly one rank, for any number of items (also fewer than ranks).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad rank {rank} for world size {world_size}")
    base, extra = divmod(len(items), world_size)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (1 if rank < extra else 0)])


def load_labels(path: Path, keys: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """Read `keys` of an Occ3D-style labels.npz, each (200, 200, 16).

    Raises:
        FileNotFoundError, ValueError: missing file, corrupt npz, missing key, wrong shape.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{what} file {path} is not a readable npz (not a zip archive)")
    try:
        with np.load(path) as data:
            files = list(data.files)
            arrays = {k: np.asarray(data[k]) for k in keys if k in files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise ValueError(f"{what} file {path} is not a readable npz: {err}") from err
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"{what} file {path} has no key(s) {missing} (has {files})")
    for k, arr in arrays.items():
        if arr.shape != GRID_SHAPE:
            raise ValueError(f"{what} file {path}: `{k}` has shape {arr.shape}, expected {GRID_SHAPE}")
    return arrays


def find_gt_samples(gt_dir: Path) -> list[tuple[str, str]]:
    """(scene_name, sample_token) of every gt_dir/{scene}/{token}/labels.npz, sorted.

    Raises:
        FileNotFoundError: the directory does not exist or holds no labels.npz.
    """
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"GT directory not found: {gt_dir}")
    found = sorted((p.parent.parent.name, p.parent.name) for p in gt_dir.glob("*/*/labels.npz"))
    if not found:
        raise FileNotFoundError(f"no {{scene}}/{{token}}/labels.npz under {gt_dir}")
    return found


def _pose(translation: Sequence[float], rotation_wxyz: Sequence[float]) -> np.ndarray:
    from selfsup.camera import pose_matrix

    # Built as the reference builds them (pyquaternion rotation matrix, float64).
    return pose_matrix(rotation_wxyz, translation)


class NuScenesOrigins:
    """LiDAR origins of a sample's scene keyframes from the nuScenes tables."""

    def __init__(self, data_root: Path, version: str) -> None:
        from nuscenes.nuscenes import NuScenes

        self.nusc = NuScenes(version=version, dataroot=str(data_root), verbose=False)

    def _lidar_poses(self, sample_token: str) -> tuple[np.ndarray, np.ndarray]:
        sample = self.nusc.get("sample", sample_token)
        lidar = self.nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        ego = self.nusc.get("ego_pose", lidar["ego_pose_token"])
        calib = self.nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])
        return _pose(ego["translation"], ego["rotation"]), _pose(calib["translation"], calib["rotation"])

    def __call__(self, sample_token: str, scene_name: str) -> np.ndarray:
        """Selected origins (float64 [O, 3], metres) for RayIoU of this keyframe.

        Raises:
            KeyError: the token is not in the tables, or belongs to another scene.
        """
        try:
            sample = self.nusc.get("sample", sample_token)
        except KeyError as err:
            raise KeyError(f"sample token {sample_token} not found in the nuScenes tables") from err
        scene = self.nusc.get("scene", sample["scene_token"])
        if scene["name"] != scene_name:
            raise KeyError(f"sample {sample_token} belongs to {scene['name']}, not {scene_name}")
        tokens = []
        token = scene["first_sample_token"]
        while token:
            tokens.append(token)
            token = self.nusc.get("sample", token)["next"]
        poses = [self._lidar_poses(t) for t in tokens]
        T_global_lidar = np.stack([ego.dot(calib) for ego, calib in poses])
        current = tokens.index(sample_token)
        T_global_ego, T_ego_lidar = poses[current]
        origins = scene_lidar_origins_ego(T_global_ego, T_ego_lidar, T_global_lidar, current)
        return select_origins(origins)


def sidecar_origins(gt_path: Path) -> Optional[np.ndarray]:
    """Selected RayIoU origins from the `lidar_origins.npy` next to a GT file, or None.

    Raises:
        ValueError: the file exists but is not a float [K, 3] array.
    """
    from selfsup.occ_gt.paths import ORIGINS_FILE

    path = gt_path.parent / ORIGINS_FILE
    if not path.is_file():
        return None
    try:
        origins = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"RayIoU origins file {path} is not a readable .npy: {err}") from err
    if origins.ndim != 2 or origins.shape[1] != 3 or not np.issubdtype(origins.dtype, np.floating):
        raise ValueError(f"RayIoU origins file {path}: expected float [K, 3], got {origins.dtype} {origins.shape}")
    return select_origins(origins.astype(np.float64))


def sample_origins(gt_path: Path, token: str, scene_name: str, origins: Optional[NuScenesOrigins]) -> np.ndarray:
    """RayIoU origins of a sample: the GT's sidecar file, else the nuScenes tables.

    Raises:
        FileNotFoundError: neither exists (naming the sidecar path).
    """
    found = sidecar_origins(gt_path)
    if found is not None:
        return found
    if origins is None:
        raise FileNotFoundError(
            f"no RayIoU origins for {scene_name}/{token}: {gt_path.parent / 'lidar_origins.npy'} does not exist "
            "and no --data-root with nuScenes tables was given")
    return origins(token, scene_name)


def iterate_prediction_dir(
    samples: Sequence[tuple[str, str]],
    pred_dir: Path,
    gt_dir: Path,
    origins: Optional[NuScenesOrigins],
    use_mask: bool,
) -> Iterator[EvalSample]:
    """Yield the samples of a predictions directory with their GT, mask and origins.

    `samples` are (scene_name, directory name) pairs as `find_gt_samples` returns them.
    """
    gt_keys = ["semantics", "mask_camera"] if use_mask else ["semantics"]
    for scene_name, token in samples:
        gt_path = gt_dir / scene_name / token / "labels.npz"
        gt = load_labels(gt_path, gt_keys, "GT")
        pred_path = pred_dir / scene_name / token / "labels.npz"
        pred = load_labels(pred_path, ["semantics"], "prediction")["semantics"]
        if not np.issubdtype(pred.dtype, np.integer) or (pred.size and int(pred.max()) > FREE_LABEL):
            raise ValueError(f"prediction file {pred_path}: labels must be integers 0..{FREE_LABEL}")
        mask = gt["mask_camera"].astype(bool) if use_mask else None
        yield EvalSample(scene_name, token, pred, gt["semantics"], mask,
                         sample_origins(gt_path, token, scene_name, origins))


def evaluate(
    samples: Iterable[EvalSample], device: str = "cpu", backend: str = "torch", miou_protocol: str = "challenge"
) -> tuple[Occ3DMetric, RayIoUMetric]:
    """The per-sample loop: mIoU and RayIoU counts of the given samples (``miou_protocol``:
    see ``eval.occ3d.Occ3DMetric``; RayIoU is always SparseOcc's)."""
    miou, rayiou = Occ3DMetric(miou_protocol), RayIoUMetric(device=device, backend=backend)
    for s in samples:
        miou.update(s.pred, s.gt, s.mask)
        # RayIoU never uses the camera mask (SparseOcc protocol).
        rayiou.update(s.pred, s.gt, s.origins)
    return miou, rayiou


def all_reduce_states(miou: Occ3DMetric, rayiou: RayIoUMetric) -> tuple[Occ3DMetric, RayIoUMetric]:
    """Sum the integer states over processes (no-op in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return miou, rayiou
    state = np.concatenate([miou.state_vector(), rayiou.state_vector()])
    tensor = torch.from_numpy(state)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    summed = tensor.cpu().numpy().astype(np.int64)
    split = miou.state_vector().size
    return (
        Occ3DMetric.from_state_vector(summed[:split], miou.protocol),
        RayIoUMetric.from_state_vector(summed[split:], device=rayiou.device, backend=rayiou.backend),
    )


def summarize(miou: Occ3DMetric, rayiou: RayIoUMetric) -> dict:
    """The JSON result: Occ3D metrics in percent, RayIoU as fractions (as SparseOcc prints)."""
    occ = miou.compute()
    ray = rayiou.compute()
    return {
        "mIoU": occ["mIoU"],
        "mIoU_D": occ["mIoU_D"],
        "IoU": occ["IoU"],
        "RayIoU": ray["RayIoU"],
        "RayIoU@1": ray["RayIoU@1"],
        "RayIoU@2": ray["RayIoU@2"],
        "RayIoU@4": ray["RayIoU@4"],
        "IoU_per_class": occ["IoU_per_class"],
        "RayIoU_per_class": ray["RayIoU_per_class"],
        "num_samples": occ["num_samples"],
    }


def format_table(result: dict) -> str:
    lines = [f"{'class':<22}{'IoU':>8}{'RayIoU@1':>10}{'RayIoU@2':>10}{'RayIoU@4':>10}"]
    for name in OCC3D_CLASS_NAMES[:FREE_LABEL]:
        ray = result["RayIoU_per_class"][name]
        lines.append(f"{name:<22}{result['IoU_per_class'][name]:>8.2f}" + "".join(f"{v:>10.3f}" for v in ray))
    lines.append(
        f"{'MEAN':<22}{result['mIoU']:>8.2f}{result['RayIoU@1']:>10.3f}"
        f"{result['RayIoU@2']:>10.3f}{result['RayIoU@4']:>10.3f}"
    )
    lines.append(
        f"mIoU {result['mIoU']:.2f}  mIoU_D {result['mIoU_D']:.2f}  IoU {result['IoU']:.2f}  "
        f"RayIoU {result['RayIoU']:.4f}  ({result['num_samples']} samples)"
    )
    return "\n".join(lines)


def _nan_to_none(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def write_json_atomic(result: dict, path: Path) -> None:
    """Write strict JSON (NaN -> null) through a temporary file in the same folder and
    os.replace, so a reader never sees a half-written file."""
    from selfsup.io import atomic_write_text

    atomic_write_text(path, json.dumps(_nan_to_none(result), indent=2, sort_keys=True, allow_nan=False))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--occ3d", action="store_true", help="evaluate on the Occ3D-nuScenes grid")
    parser.add_argument("--pred-dir", type=Path, help="PRED/{scene}/{token}/labels.npz")
    parser.add_argument("--data-root", type=Path, help="nuScenes root (tables; gts/ by default)")
    parser.add_argument("--version", default="v1.0-trainval", help="nuScenes table version")
    parser.add_argument("--gt-dir", type=Path, help="GT root; default DATA_ROOT/gts")
    parser.add_argument("--use-mask", action="store_true", help="mIoU over mask_camera voxels")
    parser.add_argument("--miou-protocol", default="challenge", choices=("challenge", "gaussianflowocc"),
                        help="challenge: Occ3D CVPR 2023, 17 classes; gaussianflowocc: its own convention "
                             "(GT 0 and 12 masked out, 15-class mIoU; use with --use-mask as it does)")
    parser.add_argument("--json-out", type=Path, help="write the results here (atomically)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "cpp", "cuda"),
                        help="RayIoU marcher; auto = compiled C++ twin on CPU, PyTorch on CUDA")
    parser.add_argument("--sem", action="store_true", help="checkpoint mode: evaluate semantics (else geometry only)")
    parser.add_argument("--resolution", type=float, default=0.4, help="voxel size in metres (Occ3D: 0.4)")
    parser.add_argument("--save-occ-path", type=Path, help="checkpoint mode: write PRED/{scene}/{token}/labels.npz")
    from selfsup.training.build import add_model_args

    add_model_args(parser)
    # In predictions-directory mode --py-config is not needed.
    for action in parser._actions:
        if action.dest == "py_config":
            action.required = False
    return parser.parse_args(argv)


def resolve_backend(backend: str, device: str) -> str:
    if backend != "auto":
        return backend
    return "torch" if str(device).startswith("cuda") else "cpp"


class DatasetOrigins:
    """RayIoU origins from a ``Frames`` dataset's own LiDAR poses (``dataset.lidar_poses(i)``:
    the current sample's ``T_global_ego`` / ``T_ego_lidar``, ``T_global_lidar`` of every
    keyframe of its scene and its position), as SparseOcc takes them from nuScenes."""

    def __init__(self, dataset) -> None:
        if not hasattr(dataset, "lidar_poses"):
            raise SystemExit(
                f"eval_iou.py --py-config: {type(dataset).__name__} has no lidar_poses(i), needed for RayIoU origins"
            )
        self.dataset = dataset

    def __call__(self, index: int) -> np.ndarray:
        T_global_ego, T_ego_lidar, T_global_lidar, current = self.dataset.lidar_poses(index)
        return select_origins(scene_lidar_origins_ego(T_global_ego, T_ego_lidar, T_global_lidar, current))


def checkpoint_samples(args, exp, state, gt_dir: Optional[Path]) -> tuple[int, Iterator[EvalSample]]:
    """Predictions of the model for this process's share of the val samples.

    GT: ``{gt_dir}/{scene}/{token}/labels.npz`` (``selfsup.occ_gt.paths.gt_label_path``) when
    ``gt_dir`` is given, else the voxel GT the dataset puts into ``Frames.occ_*`` (its
    ``gt_dir``). RayIoU origins: the dataset's own LiDAR poses (:class:`DatasetOrigins`).
    """
    data = exp.eval_data
    origins = DatasetOrigins(data)
    indices = shard(list(range(len(data))), state.process_index, state.num_processes)
    gt_keys = ["semantics", "mask_camera"] if args.use_mask else ["semantics"]

    def generate() -> Iterator[EvalSample]:
        from selfsup.data.frames import collate_frames
        from selfsup.io import atomic_path
        from selfsup.occ_gt.paths import gt_label_path

        for i in indices:
            batch = collate_frames([data[i]]).to(args.device)
            scene, token = batch.scene_names[0], batch.tokens[0]
            with torch.no_grad():
                pred = exp.model.predict_occupancy(exp.model.encode(batch)).labels[0].cpu().numpy().astype(np.uint8)
            if args.save_occ_path is not None:
                with atomic_path(gt_label_path(args.save_occ_path, scene, token)) as tmp:
                    with open(tmp, "wb") as f:
                        np.savez_compressed(f, semantics=pred)
            if not args.sem:
                pred = np.where(pred == FREE_LABEL, FREE_LABEL, 0).astype(np.uint8)
            if gt_dir is not None:
                gt = load_labels(gt_label_path(gt_dir, scene, token), gt_keys, "GT")
            elif batch.occ_semantics is not None:
                gt = {"semantics": batch.occ_semantics[0].cpu().numpy()}
                if args.use_mask:
                    if batch.occ_mask_camera is None:
                        raise ValueError(f"--use-mask: sample {token} has no occ_mask_camera")
                    gt["mask_camera"] = batch.occ_mask_camera[0].cpu().numpy()
            else:
                raise SystemExit(
                    "eval_iou.py: no ground truth: pass --gt-dir or give the config's val_data a gt_dir "
                    "(its samples then carry Frames.occ_semantics)"
                )
            gt_sem = gt["semantics"]
            if not args.sem:
                gt_sem = np.where(gt_sem == FREE_LABEL, FREE_LABEL, 0).astype(np.uint8)
            mask = gt["mask_camera"].astype(bool) if args.use_mask else None
            yield EvalSample(scene, token, pred, gt_sem, mask, origins(i))

    return len(data), generate()


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    if not args.occ3d:
        raise SystemExit("eval_iou.py: pass --occ3d (the only supported benchmark)")
    if abs(args.resolution - 0.4) > 1e-9:
        raise SystemExit(f"eval_iou.py: --resolution {args.resolution}: Occ3D-nuScenes ground truth is 0.4 m")
    backend = resolve_backend(args.backend, args.device)

    from accelerate import PartialState

    state = PartialState(cpu=not str(args.device).startswith("cuda"))
    if args.py_config:
        from selfsup.training.build import build_for_eval

        exp = build_for_eval(args)
        gt_dir = args.gt_dir
        data = exp.eval_data
        if gt_dir is None and getattr(data, "gt_dir", None) is None and hasattr(data, "data_root"):
            gt_dir = Path(data.data_root) / "gts"  # the Occ3D-nuScenes layout under the data root
        expected, samples = checkpoint_samples(args, exp, state, gt_dir)
    else:
        if args.pred_dir is None or (args.data_root is None and args.gt_dir is None):
            raise SystemExit("eval_iou.py: --pred-dir and --data-root (or --gt-dir) are required (or --py-config for a checkpoint)")
        gt_dir = args.gt_dir if args.gt_dir is not None else args.data_root / "gts"
        all_samples = find_gt_samples(gt_dir)
        expected = len(all_samples)
        mine = shard(all_samples, state.process_index, state.num_processes)
        # nuScenes tables only where a GT sample has no lidar_origins.npy beside it
        origins = NuScenesOrigins(args.data_root, args.version) if args.data_root is not None else None
        samples = iterate_prediction_dir(mine, args.pred_dir, gt_dir, origins, args.use_mask)
    miou, rayiou = evaluate(samples, device=args.device, backend=backend, miou_protocol=args.miou_protocol)
    miou, rayiou = all_reduce_states(miou, rayiou)
    result = summarize(miou, rayiou)
    result["miou_protocol"] = args.miou_protocol
    if result["num_samples"] != expected:
        raise RuntimeError(f"evaluated {result['num_samples']} samples, expected {expected}")
    result["num_processes"] = state.num_processes
    if args.py_config and not args.sem:
        result = {"IoU": result["IoU"], "num_samples": result["num_samples"], "semantic": False,
                  "num_processes": state.num_processes}
    if state.is_main_process:
        print(format_table(result) if "mIoU" in result else f"IoU {result['IoU']:.2f} ({result['num_samples']} samples)")
        if args.json_out is not None:
            write_json_atomic(result, args.json_out)
    from selfsup.training.launch import finish_distributed

    finish_distributed(state)
    return result


if __name__ == "__main__":
    from selfsup.training.launch import relaunch_for_cpu_ddp

    relaunch_for_cpu_ddp()
    try:
        main()
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"eval_iou.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
