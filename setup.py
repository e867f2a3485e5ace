"""selfsup: install with `pip install -e .` (see README). torch is deliberately not a build
requirement: build isolation would pull a CUDA torch. cuda/ kernels are built lazily on
first use (torch.utils.cpp_extension.load, see eval/kernels.py), never here.

Only the three packages are installed. ``config/``, ``scripts/`` and ``cuda/`` stay in the
checkout: generic top-level names would collide with other distributions (``cuda`` is
NVIDIA's namespace package of cuda-bindings); the kernel sources ship as data inside
``eval`` (``eval/_cuda``)."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.split("#")[0].strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip() and not line.startswith("-")
]

setup(
    name="selfsup",
    version="0.1.0",
    description="Self-supervised and supervised 3D semantic occupancy from multi-camera video",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[*find_packages(include=["selfsup", "selfsup.*", "render", "render.*", "eval", "eval.*"]), "eval._cuda"],
    package_dir={"eval._cuda": "cuda"},
    package_data={"eval._cuda": ["*.cu", "*.cpp", "*.h"]},
    install_requires=requirements,
    extras_require={"dev": ["pytest==9.2.0"]},
    license="Apache-2.0",
)
