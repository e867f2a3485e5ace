"""Image encoders."""

from selfsup.encoders.timm_fpn import TimmFPN

__all__ = ["TimmFPN"]
