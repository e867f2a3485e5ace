"""selfsup: self-supervised and supervised 3D semantic occupancy from multi-camera video.

Importing this package stays light (no torch import) because
``selfsup.compat.torchvision_ops`` is imported at interpreter start-up through a ``.pth``
hook on CPU-only installs; see that module.
"""

__version__ = "0.1.0"
