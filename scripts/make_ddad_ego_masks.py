"""Write the ego-vehicle (self-occlusion) masks of the bundled DDAD rig.

DDAD's cameras see parts of the recording car: a painted body panel in CAMERA_09, the roof and
body panels in CAMERA_07 and CAMERA_08 (about a quarter of those images), the lower
body in CAMERA_05 and CAMERA_06; CAMERA_01 sees none. The panels are glossy: they mirror
the sky and the trees, and the mirrored image changes from frame to frame, so the
photometric loss's auto-masking (which catches pixels that do not change) does not remove
them, and the loss fits geometry to reflections. Self-supervised surround-view methods on
DDAD exclude these pixels with per-camera self-occlusion masks (the masks PackNet-SfM,
FSM and SurroundDepth train with); they are not part of the bundled sample, so this script
draws them.

The polygons below were traced by hand on the middle frame of ``scene_02`` at full
resolution (1936 x 1216 pixels) and moved about 15 pixels into the scene, so that no body
pixel is left at the demo's 1/11 scale; the other two frames were checked to show the body
at the same place (the cameras are fixed to the car). They describe this car's rig only.

Output: ``<out>/<CAMERA>_mask.png``, 8-bit grey, 255 = scene, 0 = own car body (the
format of ``selfsup.data.image.load_valid_mask``), written atomically.

Usage: ``python scripts/make_ddad_ego_masks.py [--out data/samples/ddad/ego_masks]``.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from selfsup.io import atomic_write_bytes  # noqa: E402

WIDTH, HEIGHT = 1936, 1216

# Car-body polygons per camera, (column, row) pixels of the full-resolution image.
EGO_POLYGONS: dict[str, list[list[tuple[int, int]]]] = {
    "CAMERA_01": [],
    "CAMERA_05": [[(0, 1185), (400, 1155), (700, 1105), (840, 1055), (1000, 1025), (1120, 1029), (1300, 1055),
                   (1400, 1105), (1500, 1145), (1580, 1125), (1700, 1045), (1936, 1035), (1936, HEIGHT),
                   (0, HEIGHT)]],
    "CAMERA_06": [[(0, 1075), (120, 1085), (200, 1125), (260, 1165), (500, 1105), (700, 1065), (800, 1049),
                   (1000, 1065), (1200, 1105), (1400, 1135), (1600, 1165), (1700, 1185), (1736, HEIGHT),
                   (0, HEIGHT)]],
    "CAMERA_07": [[(0, 745), (500, 815), (1000, 905), (1500, 1025), (1936, 1115), (1936, HEIGHT), (0, HEIGHT)],
                  [(0, 0), (530, 0), (0, 265)]],  # roof edge in the top-left corner
    "CAMERA_08": [[(0, 1175), (200, 1125), (400, 1075), (600, 1015), (800, 965), (1000, 925), (1200, 895),
                   (1400, 865), (1600, 825), (1800, 775), (1936, 741), (1936, HEIGHT), (0, HEIGHT)],
                  [(1240, 0), (1400, 25), (1600, 105), (1800, 205), (1936, 285), (1936, 0)]],  # pillar
    "CAMERA_09": [[(0, 1065), (200, 1015), (400, 975), (600, 955), (800, 945), (1000, 949), (1200, 965),
                   (1400, 1005), (1600, 1075), (1700, 1115), (1800, 1155), (1936, 1185), (1936, HEIGHT),
                   (0, HEIGHT)],
                  [(0, 0), (1936, 0), (1936, 22), (0, 22)]],  # camera housing along the top edge
}


def ego_mask(camera: str) -> Image.Image:
    """The mask of one camera, 255 = scene, 0 = car body.

    Raises:
        KeyError: naming the camera if it is not one of the rig's six.
    """
    if camera not in EGO_POLYGONS:
        raise KeyError(f"no DDAD ego mask for camera {camera!r}; known: {sorted(EGO_POLYGONS)}")
    image = Image.new("L", (WIDTH, HEIGHT), 255)
    draw = ImageDraw.Draw(image)
    for polygon in EGO_POLYGONS[camera]:
        draw.polygon(polygon, fill=0)
    return image


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "data/samples/ddad/ego_masks"), help="output folder")
    args = parser.parse_args(argv)
    out = Path(args.out)
    for camera in EGO_POLYGONS:
        mask = ego_mask(camera)
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG", optimize=True)
        atomic_write_bytes(out / f"{camera}_mask.png", buffer.getvalue())
        body = 1.0 - float(np.asarray(mask).mean()) / 255.0
        print(f"{out / f'{camera}_mask.png'}: {100 * body:.1f} % car body")


if __name__ == "__main__":
    main()
