"""Build the bundled nuscenes-devkit data root ``data/samples/nuscenes/`` from ``nuscenes_raw/``.

Two real nuScenes keyframes are arranged as a ``v1.0-mini`` data root that
``nuscenes.nuscenes.NuScenes(version="v1.0-mini", dataroot=...)`` (devkit 1.2.0) loads:

* scene-0061, sample ``ca9a282c9e77460f8360f564131a8af5``, from the mmdet3d v1.1 info
  ``.pkl`` in ``nuscenes_raw/scene-0061_ca9a282c/`` (4x4 ``cam2ego``, ``lidar2ego``,
  ``lidar2cam``, one ``ego2global`` at LiDAR time, timestamps in the file names);
* scene-0003, sample ``fd8420396768425eabec9bdddf7e64b6``, from the BEVDet yaml in
  ``nuscenes_raw/scene-0003_fd842039/`` (quaternion calibrations and one ego pose per sensor).

The mmdet3d info has a single ego pose (LiDAR time), but its ``lidar2cam`` was built from
the per-camera ego poses (``lidar2cam = inv(T_global_egoL T_egoL_lidar)^-1 ...``), so the
camera-time ego pose is recovered exactly as
``T_global_egoC = T_global_egoL @ T_egoL_lidar @ inv(lidar2cam) @ inv(cam2ego)``.
The same formula applied to scene-0003, which has both, reproduces its camera ego poses
to 1e-13 (checked by :func:`_check_recovery` on every run).

Tokens are the real ones where a source holds them; the others are invented as
``md5("selfsup-sample-root/<what>")`` so every run writes identical files. The README
written next to the tables lists which is which.

Usage: ``python scripts/make_nuscenes_sample_root.py [--src data/samples/nuscenes_raw]
[--out data/samples/nuscenes]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import yaml
from pyquaternion import Quaternion

from selfsup.camera import pose_matrix

VERSION = "v1.0-mini"
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
LIDAR = "LIDAR_TOP"
IMAGE_W, IMAGE_H = 1600, 900

SCENE_0061 = dict(
    name="scene-0061",
    dir="scene-0061_ca9a282c",
    sample_token="ca9a282c9e77460f8360f564131a8af5",
    # Real tokens of scene-0061 (nuScenes v1.0-mini scene.json / sample.json / log.json).
    scene_token="cc8c0bf57f984915a77078b10eb33198",
    log_token="7e25a2c8ea1f41c5b0da1e69ecfa71a2",
    lidar_sd_token="9d9bf11fb0e144c8b446d54a8a00184f",
    logfile="n015-2018-07-24-11-22-45+0800",
    date="2018-07-24",
    location="singapore-onenorth",
    description="Parked truck, construction, intersection, turn left, following a van",
)
SCENE_0003 = dict(
    name="scene-0003",
    dir="scene-0003_fd842039",
    sample_token="fd8420396768425eabec9bdddf7e64b6",
    scene_token="e7ef871f77f44331aefdebc24ec034b7",
    logfile="n015-2018-08-02-17-16-37+0800",
    date="2018-08-02",
    # Not in the source; the ego position (250, 918) lies in the One North map extent.
    location="singapore-onenorth",
    description="",
)


def invented_token(what: str) -> str:
    """A deterministic 32-hex token for records whose real token is not in the source."""
    return hashlib.md5(f"selfsup-sample-root/{what}".encode()).hexdigest()


def _matrix_to_rt(T: np.ndarray) -> tuple[list[float], list[float]]:
    """4x4 rigid transform -> (translation xyz, quaternion wxyz); re-orthonormalises float32 input."""
    U, _, Vt = np.linalg.svd(T[:3, :3])
    R = U @ Vt
    q = Quaternion(matrix=R)
    q = q if q.w >= 0 else -q
    return [float(x) for x in T[:3, 3]], [float(x) for x in q.elements]


def _rt_to_matrix(rotation_wxyz, translation) -> np.ndarray:
    return pose_matrix(rotation_wxyz, translation)


def _timestamp_from_name(name: str) -> int:
    """``<log>__<CHANNEL>__<microseconds>.<ext>`` -> microseconds."""
    return int(name.split("__")[-1].split(".")[0])


def _read_0061(src: Path) -> dict:
    d = SCENE_0061
    pkl = src / d["dir"] / f"{d['logfile']}.pkl"
    with open(pkl, "rb") as f:
        info = pickle.load(f)["data_list"][0]
    if info["token"] != d["sample_token"]:
        raise ValueError(f"{pkl}: sample token {info['token']}, expected {d['sample_token']}")
    T_global_egoL = np.array(info["ego2global"], dtype=np.float64)
    T_egoL_lidar = np.array(info["lidar_points"]["lidar2ego"], dtype=np.float64)
    lidar_name = info["lidar_points"]["lidar_path"]
    sensors = {
        LIDAR: dict(
            sd_token=d["lidar_sd_token"],
            file=src / d["dir"] / lidar_name,
            filename=f"samples/{LIDAR}/{lidar_name}",
            timestamp=_timestamp_from_name(lidar_name),
            T_ego_sensor=T_egoL_lidar,
            T_global_ego=T_global_egoL,
            K=None,
        )
    }
    for cam in CAMERAS:
        c = info["images"][cam]
        T_ego_cam = np.array(c["cam2ego"], dtype=np.float64)
        T_cam_lidar = np.array(c["lidar2cam"], dtype=np.float64)
        T_global_egoC = T_global_egoL @ T_egoL_lidar @ np.linalg.inv(T_cam_lidar) @ np.linalg.inv(T_ego_cam)
        sensors[cam] = dict(
            sd_token=c["sample_data_token"],
            file=src / d["dir"] / c["img_path"],
            filename=f"samples/{cam}/{c['img_path']}",
            timestamp=_timestamp_from_name(c["img_path"]),
            T_ego_sensor=T_ego_cam,
            T_global_ego=T_global_egoC,
            K=np.array(c["cam2img"], dtype=np.float64),
        )
    return dict(meta=d, timestamp=sensors[LIDAR]["timestamp"], sensors=sensors)


def _read_0003(src: Path) -> dict:
    d = SCENE_0003
    path = src / d["dir"] / "sample0000.yaml"
    with open(path) as f:
        y = yaml.safe_load(f)
    if y["token"] != d["sample_token"] or y["scene_token"] != d["scene_token"]:
        raise ValueError(f"{path}: tokens {y['token']}/{y['scene_token']} differ from the expected ones")
    lidar_name = os.path.basename(y["lidar_path"])
    sensors = {
        LIDAR: dict(
            sd_token=invented_token(f"sample_data/{d['name']}/{LIDAR}"),
            file=src / d["dir"] / "0.bin",
            filename=f"samples/{LIDAR}/{lidar_name}",
            timestamp=int(y["timestamp"]),
            T_ego_sensor=_rt_to_matrix(y["lidar2ego_rotation"], y["lidar2ego_translation"]),
            T_global_ego=_rt_to_matrix(y["ego2global_rotation"], y["ego2global_translation"]),
            K=None,
        )
    }
    for cam in CAMERAS:
        c = y["cams"][cam]
        name = os.path.basename(c["data_path"])
        sensors[cam] = dict(
            sd_token=c["sample_data_token"],
            file=src / d["dir"] / "imgs" / f"{cam}.jpg",
            filename=f"samples/{cam}/{name}",
            timestamp=int(c["timestamp"]),
            T_ego_sensor=_rt_to_matrix(c["sensor2ego_rotation"], c["sensor2ego_translation"]),
            T_global_ego=_rt_to_matrix(c["ego2global_rotation"], c["ego2global_translation"]),
            K=np.array(c["cam_intrinsic"], dtype=np.float64),
            T_lidar_cam=np.block(
                [[np.array(c["sensor2lidar_rotation"]), np.array(c["sensor2lidar_translation"])[:, None]],
                 [np.zeros((1, 3)), np.ones((1, 1))]]
            ),
        )
    return dict(meta=d, timestamp=int(y["timestamp"]), sensors=sensors)


def _check_recovery(scene: dict) -> float:
    """Max error of the camera-ego-pose recovery used for scene-0061, on scene-0003's real poses."""
    lid = scene["sensors"][LIDAR]
    err = 0.0
    for cam in CAMERAS:
        s = scene["sensors"][cam]
        T_cam_lidar = np.linalg.inv(s["T_lidar_cam"])
        rec = lid["T_global_ego"] @ lid["T_ego_sensor"] @ np.linalg.inv(T_cam_lidar) @ np.linalg.inv(s["T_ego_sensor"])
        err = max(err, float(np.abs(rec - s["T_global_ego"]).max()))
    if err > 1e-6:
        raise RuntimeError(f"camera ego pose recovery is off by {err} on scene-0003")
    return err


def _tiny_png() -> bytes:
    """A 1x1 black greyscale PNG: the devkit asserts that each map file exists."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")


def build_tables(scenes: list[dict]) -> dict[str, list[dict]]:
    """The 13 devkit tables for ``scenes`` (one keyframe each, no annotations)."""
    sensor = [
        dict(token=invented_token(f"sensor/{ch}"), channel=ch, modality="lidar" if ch == LIDAR else "camera")
        for ch in (LIDAR, *CAMERAS)
    ]
    sensor_token = {s["channel"]: s["token"] for s in sensor}
    tables: dict[str, list[dict]] = {name: [] for name in (
        "category", "attribute", "visibility", "instance", "sample_annotation",
        "calibrated_sensor", "ego_pose", "log", "scene", "sample", "sample_data", "map")}
    tables["sensor"] = sensor
    map_token = invented_token("map/placeholder")
    log_tokens = []
    for sc in scenes:
        m = sc["meta"]
        log_token = m.get("log_token") or invented_token(f"log/{m['logfile']}")
        log_tokens.append(log_token)
        tables["log"].append(dict(token=log_token, logfile=m["logfile"], vehicle=m["logfile"].split("-")[0],
                                  date_captured=m["date"], location=m["location"]))
        tables["scene"].append(dict(token=m["scene_token"], log_token=log_token, nbr_samples=1,
                                    first_sample_token=m["sample_token"], last_sample_token=m["sample_token"],
                                    name=m["name"], description=m["description"]))
        tables["sample"].append(dict(token=m["sample_token"], timestamp=sc["timestamp"], prev="", next="",
                                     scene_token=m["scene_token"]))
        for ch in (LIDAR, *CAMERAS):
            s = sc["sensors"][ch]
            cs_token = invented_token(f"calibrated_sensor/{m['name']}/{ch}")
            t, q = _matrix_to_rt(s["T_ego_sensor"])
            tables["calibrated_sensor"].append(dict(
                token=cs_token, sensor_token=sensor_token[ch], translation=t, rotation=q,
                camera_intrinsic=[] if s["K"] is None else s["K"].tolist()))
            t, q = _matrix_to_rt(s["T_global_ego"])
            # nuScenes gives each sample_data an ego_pose with the same token.
            tables["ego_pose"].append(dict(token=s["sd_token"], timestamp=s["timestamp"], rotation=q, translation=t))
            is_cam = s["K"] is not None
            tables["sample_data"].append(dict(
                token=s["sd_token"], sample_token=m["sample_token"], ego_pose_token=s["sd_token"],
                calibrated_sensor_token=cs_token, timestamp=s["timestamp"],
                fileformat="jpg" if is_cam else "pcd", is_key_frame=True,
                height=IMAGE_H if is_cam else 0, width=IMAGE_W if is_cam else 0,
                filename=s["filename"], prev="", next=""))
    tables["map"].append(dict(token=map_token, log_tokens=log_tokens, category="semantic_prior",
                              filename=f"maps/{map_token}.png"))
    return tables


def write_root(scenes: list[dict], out: Path) -> None:
    """Write tables, sensor files and the placeholder map into ``out`` (replacing earlier output)."""
    tables = build_tables(scenes)
    for sub in (VERSION, "samples", "maps"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / VERSION).mkdir(parents=True)
    for name, rows in sorted(tables.items()):
        with open(out / VERSION / f"{name}.json", "w") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")
    for sc in scenes:
        for s in sc["sensors"].values():
            dst = out / s["filename"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(s["file"], dst)
    (out / "maps").mkdir()
    (out / tables["map"][0]["filename"]).write_bytes(_tiny_png())


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=repo / "data/samples/nuscenes_raw")
    parser.add_argument("--out", type=Path, default=repo / "data/samples/nuscenes")
    args = parser.parse_args()
    s0061, s0003 = _read_0061(args.src), _read_0003(args.src)
    err = _check_recovery(s0003)
    write_root([s0061, s0003], args.out)
    print(f"wrote {args.out} ({VERSION}); camera ego pose recovery error on scene-0003: {err:.1e}")


if __name__ == "__main__":
    main()
