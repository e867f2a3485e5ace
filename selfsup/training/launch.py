"""Make ``accelerate launch --num_processes N train.py ...`` start N CPU processes.

On a machine without CUDA (and without an accelerate config file saying otherwise),
``accelerate launch`` ignores ``--num_processes`` and runs a single process (its "simple
launcher"). To keep the command working exactly as typed, the entry points call
:func:`relaunch_for_cpu_ddp` first: when the parent ``accelerate launch`` asked for N > 1
processes and none were started, the script replaces itself with
``torch.distributed.run --standalone --nproc_per_node N``; with ``ACCELERATE_USE_CPU`` set,
accelerate then forms one DDP group over the gloo backend (``DistributedType.MULTI_CPU``).

Threads: ``accelerate launch`` (and ``torch.distributed.run``) export ``OMP_NUM_THREADS=1``
for CPU processes, so torch would use one core of many. :func:`configure_cpu_threads` sets
``torch.set_num_threads`` to the cores this process may use divided by the processes on the
node; the training loop calls it first and logs the number.

Denormals: :func:`flush_denormals` sets flush-to-zero for CPU float math (the training loop,
evaluation builds and the demo call it): x86 computes denormal floats about 7x slower, and
the SDF decoder's Softplus(beta=100) produces them in bulk (exp(-100 x) for x near 1).
"""

from __future__ import annotations

import os
import sys

import psutil
import torch


def requested_num_processes(cmdline: list[str]) -> int | None:
    """The ``--num_processes`` value of an ``accelerate launch`` command line, if any."""
    if not any(os.path.basename(a).startswith("accelerate") for a in cmdline[:3]) or "launch" not in cmdline:
        return None
    for i, arg in enumerate(cmdline):
        for flag in ("--num_processes", "--num-processes"):
            if arg == flag and i + 1 < len(cmdline):
                return int(cmdline[i + 1])
            if arg.startswith(flag + "="):
                return int(arg.split("=", 1)[1])
    return None


def relaunch_for_cpu_ddp() -> None:
    """Re-execute this script under torch.distributed.run when accelerate could not.

    Does nothing when already distributed (``WORLD_SIZE`` set), when CUDA is available
    (accelerate launches multi-GPU itself), or when not started by ``accelerate launch``.
    """
    if "WORLD_SIZE" in os.environ or "ACCELERATE_USE_CPU" not in os.environ or torch.cuda.is_available():
        return
    try:
        parent = psutil.Process(os.getppid()).cmdline()
    except (psutil.Error, OSError):
        return
    n = requested_num_processes(parent)
    if n is None or n <= 1:
        return
    env = dict(os.environ, ACCELERATE_USE_CPU="true")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *sys.argv]
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)


def cpu_threads_per_process() -> int:
    """Cores available to this process (its CPU affinity) divided by the processes of this
    node (``LOCAL_WORLD_SIZE``, 1 when not distributed), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, local))


def configure_cpu_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``num_threads`` (``None``: :func:`cpu_threads_per_process`)
    and return the number set. Undoes the ``OMP_NUM_THREADS=1`` that launchers export.

    Raises:
        ValueError: for ``num_threads < 1``.
    """
    n = cpu_threads_per_process() if num_threads is None else int(num_threads)
    if n < 1:
        raise ValueError(f"configure_cpu_threads: num_threads must be >= 1, got {num_threads}")
    torch.set_num_threads(n)
    return n


def flush_denormals(enabled: bool = True) -> bool:
    """Flush denormal floats to zero on CPU (``torch.set_flush_denormal``) or stop doing so;
    returns whether flushing is now on (False when disabled or when the CPU cannot: it needs
    x86 with SSE3). Values below about 1e-38 (float32) become 0."""
    return bool(torch.set_flush_denormal(enabled)) and enabled


def finish_distributed(state) -> None:
    """End a multi-process run cleanly: wait for every process, then leave the process group.

    Call it last in scripts that form a group through ``accelerate.PartialState`` (the training
    loop's ``Accelerator.end_training`` does the same). A gloo process that reaches interpreter
    shutdown still in the group can abort (SIGABRT) while its peers are running, because gloo's
    worker threads release their tensors during finalization (pytorch/pytorch#179291 describes
    the race); seen once in CI as rank 1 of ``generate_pseudo_depth.py`` dying after its last sample.
    A no-op for a single process.
    """
    if state.num_processes > 1:
        state.wait_for_everyone()
    state.destroy_process_group()


def print_line_atomic(text: str) -> None:
    """Write ``text`` and a newline to stdout with one ``write(2)``.

    Processes of one launch share the stdout pipe; ``print`` may split a line into several
    writes, so two ranks' lines could interleave. One write of at most ``PIPE_BUF`` (4096)
    bytes to a pipe is atomic on POSIX; longer lines are written whole but may interleave.
    """
    sys.stdout.flush()
    data = (text.rstrip("\n") + "\n").encode()
    fd = sys.stdout.fileno()
    while data:
        data = data[os.write(fd, data):]
