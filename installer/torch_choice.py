"""Which PyTorch build fits this machine (CUDA, ROCm, Apple MPS or CPU), and how pip gets it.

The default package index has CUDA builds for Linux, MPS-capable builds for macOS on Apple silicon
and CPU builds elsewhere. ROCm builds, CUDA builds for Windows and slim CPU-only builds for Linux
live on PyTorch's own wheel index, whose address only the user gives (``--torch-index-url``): the
installer never guesses a host. When a build needs that index and none was given, it says so.
"""

from __future__ import annotations

import platform as _platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .platform_paths import current_system

FLAVOURS = ("cuda", "rocm", "mps", "cpu")
INDEX_HINT = (
    "the matching index address is on the 'Get started' page of PyTorch's website "
    "(the --index-url of its pip command)"
)


class TorchChoiceError(ValueError):
    """The requested build cannot run on this machine."""


@dataclass(frozen=True)
class MachineFacts:
    """What decides the build: operating system, CPU architecture and the GPUs the drivers report."""

    system: str  # linux | windows | darwin
    machine: str  # x86_64, amd64, arm64, aarch64, ...
    nvidia_gpus: tuple[str, ...] = ()  # "name, memory" lines from nvidia-smi
    rocm: bool = False
    rocm_gpus: tuple[str, ...] = ()
    gpu_free_bytes: int | None = None  # the largest free memory of an NVIDIA GPU, for the model advice

    @property
    def apple_silicon(self) -> bool:
        return self.system == "darwin" and self.machine.lower() in ("arm64", "aarch64")


def _run(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def probe_machine() -> MachineFacts:
    """Ask the drivers: ``nvidia-smi`` for NVIDIA GPUs, ``rocminfo`` or ``/opt/rocm`` for ROCm."""
    system = current_system()
    nvidia: tuple[str, ...] = ()
    gpu_free: int | None = None
    if shutil.which("nvidia-smi"):
        out = _run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"])
        nvidia = tuple(line.strip() for line in (out or "").splitlines() if line.strip())
        free = _run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"])
        mib = [int(v) for v in (free or "").split() if v.strip().isdigit()]
        gpu_free = max(mib) * 2**20 if mib else None
    rocm_gpus: tuple[str, ...] = ()
    rocm = False
    if system == "linux":
        rocminfo = shutil.which("rocminfo") or (
            "/opt/rocm/bin/rocminfo" if Path("/opt/rocm/bin/rocminfo").exists() else None
        )
        rocm = rocminfo is not None or Path("/opt/rocm").is_dir()
        if rocminfo:
            names = {line.partition(":")[2].strip() for line in (_run([rocminfo]) or "").splitlines()}
            rocm_gpus = tuple(sorted(name for name in names if name.startswith("gfx")))
    return MachineFacts(system, _platform.machine(), nvidia, rocm, rocm_gpus, gpu_free)


@dataclass(frozen=True)
class TorchPlan:
    """The build to install: ``pip install SPEC [--index-url INDEX]``, why, and notes for the user."""

    flavour: str
    reason: str
    spec: str
    index_url: str | None
    notes: tuple[str, ...] = ()

    def pip_args(self) -> list[str]:
        return [self.spec] + (["--index-url", self.index_url] if self.index_url else [])

    @property
    def fingerprint(self) -> str:
        return f"{self.flavour}|{self.spec}|{self.index_url or ''}"


def detect_flavour(facts: MachineFacts) -> tuple[str, str]:
    if facts.nvidia_gpus and facts.system in ("linux", "windows"):
        return "cuda", f"NVIDIA GPU found: {'; '.join(facts.nvidia_gpus)}"
    if facts.rocm and facts.system == "linux":
        found = f" ({', '.join(facts.rocm_gpus)})" if facts.rocm_gpus else ""
        return "rocm", f"AMD ROCm found{found}"
    if facts.apple_silicon:
        return "mps", "Apple silicon: Metal (MPS)"
    return "cpu", "no supported GPU found"


def choose_torch(
    facts: MachineFacts, requested: str = "auto", spec: str = "torch", index_url: str | None = None
) -> TorchPlan:
    """The build for ``requested`` (``auto`` detects it); raises when it cannot run on this system."""
    if requested == "auto":
        flavour, reason = detect_flavour(facts)
    elif requested in FLAVOURS:
        flavour, reason = requested, "chosen with --torch"
    else:
        raise TorchChoiceError(f"--torch must be auto, {', '.join(FLAVOURS)}; not {requested!r}")
    if flavour == "cuda" and facts.system == "darwin":
        raise TorchChoiceError("PyTorch has no CUDA builds for macOS; use --torch mps or cpu")
    if flavour == "rocm" and facts.system != "linux":
        raise TorchChoiceError("PyTorch's ROCm builds are for Linux only; use --torch cpu")
    if flavour == "mps" and not facts.apple_silicon:
        raise TorchChoiceError("Apple MPS needs a Mac with Apple silicon; use --torch cpu")

    notes: list[str] = []
    if not index_url:
        if flavour == "rocm":
            notes.append(
                "ROCm builds of PyTorch are not on the default package index: without --torch-index-url "
                "the default build is installed and runs on the CPU only. Re-run with --torch-index-url "
                f"(or GDU_TORCH_INDEX_URL) for ROCm; {INDEX_HINT}."
            )
        elif flavour == "cuda" and facts.system == "windows":
            notes.append(
                "The default package index has only CPU builds of PyTorch for Windows: without "
                "--torch-index-url the GPU is not used. Re-run with --torch-index-url (or "
                f"GDU_TORCH_INDEX_URL) for a CUDA build; {INDEX_HINT}."
            )
        elif flavour == "cpu" and facts.system == "linux" and spec.strip() == "torch":
            notes.append(
                "On Linux the default PyTorch build carries CUDA libraries (several GB). For a smaller "
                f"CPU-only build pass --torch-index-url with PyTorch's CPU index; {INDEX_HINT}."
            )
    return TorchPlan(flavour, reason, spec.strip() or "torch", index_url or None, tuple(notes))
