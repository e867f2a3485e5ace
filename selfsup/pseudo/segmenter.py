"""Closed-vocabulary semantics: Mask2Former / OneFormer semantic segmentation -> Occ3D.

The model's own classes (``config.id2label``: Cityscapes, Mapillary Vistas, ADE20K, ...)
are mapped to Occ3D class ids by name through :data:`CLOSED_VOCAB_TO_OCC3D` (lower-cased,
``_`` / ``-`` read as spaces), or by a user JSON file ``{class name: Occ3D id or null}``
(``--label-map``). Names the map does not cover are unlabelled and listed in the manifest
(``backend_config.unmapped``), so a user sees at once what a checkpoint's vocabulary loses.

The mapping for Cityscapes' 19 classes (the usual choice for driving scenes):
road -> driveable_surface 11, sidewalk -> 13, building / wall / fence / pole / traffic
light / traffic sign -> manmade 15, vegetation -> 16, terrain -> 14, sky -> unlabelled,
person -> pedestrian 7, rider -> unlabelled (a rider sits on a bicycle or motorcycle,
which Occ3D labels as the vehicle; the pixel could be either), car -> 4, truck -> 10,
bus -> 3, train -> others 0 (Occ3D has no train; nuScenes has almost none),
motorcycle -> 6, bicycle -> 2. Mapillary / ADE20K names used by common checkpoints are
listed too (e.g. "curb" -> sidewalk 13, "traffic cone" -> 8, "barrier" -> 1).

OneFormer's processor needs its class-info JSON (``{"0": {"name": ..., "isthing": 0|1}}``)
and downloads it from the Hub when the file is not local: here it must be given
(``--class-info FILE``, default ``<checkpoint>/class_info.json``) and is read from disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from selfsup.pseudo.hf import checkpoint_config, checkpoint_hash, import_transformers, load_pretrained
from selfsup.pseudo.sources import PseudoSample

CLOSED_VOCAB_TO_OCC3D: dict[str, int | None] = {
    # Cityscapes (19 training classes)
    "road": 11, "sidewalk": 13, "building": 15, "wall": 15, "fence": 15, "pole": 15, "traffic light": 15,
    "traffic sign": 15, "vegetation": 16, "terrain": 14, "sky": None, "person": 7, "rider": None, "car": 4,
    "truck": 10, "bus": 3, "train": 0, "motorcycle": 6, "bicycle": 2,
    # Mapillary Vistas / ADE20K names seen in driving checkpoints
    "curb": 13, "curb cut": 13, "crosswalk plain": 11, "lane marking crosswalk": 11, "lane marking general": 11,
    "bike lane": 11, "service lane": 11, "parking": 12, "rail track": 12, "pedestrian area": 13,
    "traffic island": 12, "barrier": 1, "guard rail": 1, "traffic cone": 8, "bicyclist": None, "motorcyclist": None,
    "other rider": None, "trailer": 9, "caravan": 9, "on rails": 0, "other vehicle": 0, "boat": 0,
    "bridge": 15, "tunnel": 15, "street light": 15, "utility pole": 15, "traffic sign frame": 15,
    "billboard": 15, "banner": 15, "bench": 15, "bike rack": 0, "fire hydrant": 15, "mailbox": 15,
    "manhole": 11, "pothole": 11, "trash can": 0, "catch basin": 11, "junction box": 15, "phone booth": 15,
    "mountain": 14, "sand": 14, "snow": 14, "water": 14, "grass": 14, "earth": 14, "field": 14, "tree": 16,
    "plant": 16, "palm": 16, "flower": 16, "house": 15, "skyscraper": 15, "signboard": 15, "streetlight": 15,
    "van": 4, "minibike": 6, "truck trailer": 9, "railing": 15, "column": 15, "tower": 15, "awning": 15,
    "floor": 12, "path": 13, "stairs": 15, "stairway": 15, "ego vehicle": None, "unlabeled": None,
    "car mount": None, "dynamic": None, "static": 0, "ground": 12, "animal": 0, "bird": 0,
}


def _norm(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def class_lut(id2label: dict, label_map: dict[str, int | None]) -> tuple[np.ndarray, list[str]]:
    """Model class index -> Occ3D id (-1 = unlabelled), and the unmapped names.

    Raises:
        ValueError: a map value outside 0-16.
    """
    norm_map = {_norm(k): v for k, v in label_map.items()}
    for k, v in norm_map.items():
        if v is not None and not (isinstance(v, int) and 0 <= v <= 16):
            raise ValueError(f"label map: class {k!r} -> {v!r}; expected an Occ3D id 0-16 or null")
    n = max(int(i) for i in id2label) + 1
    lut = np.full(n + 1, -1, dtype=np.int64)  # the last entry: "no object" / out of range
    unmapped = []
    for i, name in id2label.items():
        key = _norm(name)
        if key in norm_map:
            lut[int(i)] = -1 if norm_map[key] is None else norm_map[key]
        else:
            unmapped.append(str(name))
    return lut, unmapped


class SegmenterBackend:
    """Mask2Former or OneFormer semantic segmentation from a local checkpoint folder.

    Args:
        checkpoint: model + processor folder (``save_pretrained``).
        label_map: JSON file ``{class name: Occ3D id or null}`` replacing
            :data:`CLOSED_VOCAB_TO_OCC3D`, or None.
        class_info: OneFormer class-info JSON (default ``<checkpoint>/class_info.json``).

    Raises:
        FileNotFoundError: missing folder, label map or OneFormer class-info file.
        ValueError: not a Mask2Former / OneFormer checkpoint, or unloadable.
    """

    kind = "semantic"
    name = "segmenter"
    needs_images = True

    def __init__(self, checkpoint: str, batch_size: int = 6, device="cpu", label_map: str | None = None,
                 class_info: str | None = None):
        cfg = checkpoint_config(checkpoint, "Mask2Former / OneFormer", ("mask2former", "oneformer"))
        self.model_type = cfg["model_type"]
        tf = import_transformers()
        mapping = CLOSED_VOCAB_TO_OCC3D
        if label_map is not None:
            if not Path(label_map).is_file():
                raise FileNotFoundError(f"label map file {label_map} does not exist")
            mapping = json.loads(Path(label_map).read_text())
        if self.model_type == "oneformer":
            info = Path(class_info) if class_info else Path(checkpoint) / "class_info.json"
            if not info.is_file():
                raise FileNotFoundError(f"OneFormer needs its class-info JSON locally: {info} does not exist "
                                        "(pass --class-info FILE; the processor would otherwise download it)")
            self.processor = load_pretrained(tf.OneFormerProcessor, checkpoint, "OneFormer processor",
                                             repo_path=str(info.parent), class_info_file=info.name)
            self.model = load_pretrained(tf.OneFormerForUniversalSegmentation, checkpoint, "OneFormer")
            self.class_info = str(info)
        else:
            self.processor = load_pretrained(tf.AutoImageProcessor, checkpoint, "Mask2Former image processor")
            self.model = load_pretrained(tf.Mask2FormerForUniversalSegmentation, checkpoint, "Mask2Former")
            self.class_info = None
        self.model = self.model.eval().to(device)
        self.lut, self.unmapped = class_lut(self.model.config.id2label, mapping)
        self.label_map = label_map
        self.mapping = {str(self.model.config.id2label[i]): int(self.lut[int(i)]) for i in self.model.config.id2label}
        self.checkpoint, self.batch_size, self.device = str(checkpoint), int(batch_size), torch.device(device)

    def manifest(self) -> dict:
        return dict(backend=self.name, checkpoint=self.checkpoint, checkpoint_sha256=checkpoint_hash(self.checkpoint),
                    backend_config=dict(model_type=self.model_type, label_map=self.label_map or "CLOSED_VOCAB_TO_OCC3D",
                                        class_to_occ3d=self.mapping, unmapped=self.unmapped, class_info=self.class_info))

    @torch.no_grad()
    def predict(self, sample: PseudoSample, out_hw: tuple[int, int]) -> tuple[np.ndarray, dict]:
        if sample.images is None:
            raise ValueError(f"sample {sample.token}: the segmenter backend needs images")
        images = list(sample.images)
        out = []
        for s in range(0, len(images), self.batch_size):
            chunk = images[s:s + self.batch_size]
            if self.model_type == "oneformer":
                inputs = self.processor(images=chunk, task_inputs=["semantic"] * len(chunk), return_tensors="pt")
            else:
                inputs = self.processor(images=chunk, return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
            pred = self.model(**inputs)
            maps = self.processor.post_process_semantic_segmentation(pred, target_sizes=[tuple(out_hw)] * len(chunk))
            for m in maps:
                idx = m.cpu().numpy().astype(np.int64).clip(0, len(self.lut) - 1)
                out.append(self.lut[idx])
        labels = np.stack(out)
        return labels, dict(labelled_fraction=float((labels >= 0).mean()))
