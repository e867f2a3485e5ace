"""Full-precision islands inside mixed-precision (autocast) training.

``accelerate``'s ``mixed_precision="bf16"`` runs the forward pass under ``torch.autocast``,
which turns matmuls and linear layers into bfloat16 (8 mantissa bits, ~3 significant
digits). Rendering cannot live with that: ray directions lose unit norm (NeuS checks it),
pixel coordinates of a 704-pixel image are off by several pixels, transmittance products
and depth sorting break, and gsplat refuses non-float32 inputs. Every renderer in this
package therefore runs under :func:`full_precision`: autocast is switched off for the
device and half-precision floating inputs are cast to float32 (float64 stays float64, so
the analytic reference tests keep their precision). Gradients flow through the casts.

:func:`ambient_autocast` re-enters the caller's autocast state for work inside a renderer
that is *not* precision-sensitive and dominates the cost (the neural field that the NeuS
renderer queries), so that the field still runs in bfloat16 on a GPU.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)
# (device_type, enabled, dtype) of the autocast state outside the innermost full_precision.
_AMBIENT: contextvars.ContextVar[tuple[tuple[str, bool, torch.dtype], ...]] = contextvars.ContextVar(
    "render_ambient_autocast", default=()
)

F = TypeVar("F", bound=Callable[..., Any])


def to_full(x: Any) -> Any:
    """``x`` cast to float32 if it is a float16 / bfloat16 tensor, else ``x`` unchanged."""
    if isinstance(x, Tensor) and x.dtype in _HALF:
        return x.float()
    return x


def _device_types(values: Iterator[Any]) -> set[str]:
    types = {"cpu"}
    for v in values:
        if isinstance(v, Tensor):
            types.add(v.device.type)
    return types


@contextlib.contextmanager
def no_autocast(device_types: set[str] | tuple[str, ...] = ("cpu",)) -> Iterator[None]:
    """Disable autocast on ``device_types`` (and remember the state for ``ambient_autocast``)."""
    ambient = []
    with contextlib.ExitStack() as stack:
        for dev in sorted(set(device_types)):
            try:
                enabled = torch.is_autocast_enabled(dev)
                dtype = torch.get_autocast_dtype(dev)
            except (RuntimeError, TypeError):  # a device type autocast does not know
                continue
            ambient.append((dev, enabled, dtype))
            stack.enter_context(torch.autocast(device_type=dev, enabled=False))
        token = _AMBIENT.set(tuple(ambient))
        try:
            yield
        finally:
            _AMBIENT.reset(token)


@contextlib.contextmanager
def ambient_autocast() -> Iterator[None]:
    """Inside :func:`full_precision`: restore the caller's autocast state (no-op outside)."""
    with contextlib.ExitStack() as stack:
        for dev, enabled, dtype in _AMBIENT.get():
            if enabled:
                stack.enter_context(torch.autocast(device_type=dev, dtype=dtype, enabled=True))
        yield


def full_precision(fn: F) -> F:
    """Decorator: run ``fn`` with autocast disabled and half-precision tensor arguments
    (positional or keyword, also inside lists / tuples) cast to float32."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        def cast(v):
            if isinstance(v, (list, tuple)) and not hasattr(v, "_fields"):
                return type(v)(to_full(x) for x in v)
            return to_full(v)

        args = tuple(cast(a) for a in args)
        kwargs = {k: cast(v) for k, v in kwargs.items()}
        flat = [*args, *kwargs.values()]
        flat += [x for v in flat if isinstance(v, (list, tuple)) for x in v]
        with no_autocast(_device_types(iter(flat))):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
