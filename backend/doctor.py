"""``python -m backend doctor``: is everything in place, and if not, what exactly to do about it.

Each check gives OK, WARN (works, but worse than it could) or FAIL (something users will hit), a
detail and the fix. It looks where the plug-in and the installer look (the same GIMP profile
discovery, the plug-in's JSON for the server, token and model folder), and ends with a self-test:
a tiny random-weight model through the whole pipeline on the CPU, so a broken environment shows
here rather than in the middle of a GIMP session. Exit code 1 when any check FAILs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .client import AuthError, Client, ClientError, ServerUnreachable, is_loopback

OK, WARN, FAIL = "OK", "WARN", "FAIL"
DEFAULT_URL = "http://127.0.0.1:7861"
MIN_PYTHON = (3, 10)
INSTALL = "python3 installer/install.py"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: str  # OK | WARN | FAIL
    detail: str
    advice: str = ""


@dataclass(frozen=True)
class PluginConfig:
    """The plug-in's ``diffusion_upscale.json`` as found (the server, token and models to check)."""

    path: Path
    url: str | None = None
    python: str | None = None
    models: str | None = None
    token: str | None = None


# --------------------------------------------------------------------------- environment
def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info < MIN_PYTHON:
        return Check(
            "python", FAIL, f"{version} ({sys.executable})", f"The backend needs Python 3.10+; {INSTALL}"
        )
    return Check("python", OK, f"{version} ({sys.executable})")


def check_torch() -> list[Check]:
    """PyTorch and the device a run would use; a GPU the drivers see but PyTorch does not is a WARN."""
    try:
        import torch
    except Exception as exc:  # an import that half-works raises anything
        return [
            Check(
                "pytorch", FAIL, f"does not import: {exc}", f"Re-run {INSTALL}: it repairs the environment."
            )
        ]
    build = (
        f"CUDA {torch.version.cuda} build"
        if torch.version.cuda
        else f"ROCm {torch.version.hip} build"
        if getattr(torch.version, "hip", None)
        else "CPU and Apple MPS build"
        if sys.platform == "darwin"
        else "CPU build"
    )
    checks = [Check("pytorch", OK, f"{torch.__version__} ({build})")]
    from .devices import DeviceError, choose_device

    try:
        choice = choose_device("auto", "auto")
    except (DeviceError, RuntimeError) as exc:
        return [*checks, Check("device", FAIL, str(exc), "Check the GPU driver, or run with --device cpu.")]
    memory = f"{choice.total_memory / 2**30:.1f} GiB"
    detail = f"{choice.name}, {memory}, {str(choice.dtype).removeprefix('torch.')}"
    if choice.is_accelerator:
        if choice.total_memory < 6 * 2**30:
            return [
                *checks,
                Check("device", WARN, detail, "Little GPU memory: models are offloaded, runs are slower."),
            ]
        return [*checks, Check("device", OK, detail)]
    from installer.torch_choice import detect_flavour, probe_machine

    flavour, reason = detect_flavour(probe_machine())
    if flavour in ("cuda", "rocm"):
        return [
            *checks,
            Check(
                "device",
                WARN,
                f"{detail}; {reason}, but this PyTorch cannot use it",
                f"Re-run {INSTALL} --torch {flavour} (with --torch-index-url if it says so).",
            ),
        ]
    return [*checks, Check("device", WARN, f"{detail}; no GPU", "Runs on the CPU: expect minutes per image.")]


def check_dialog() -> Check:
    if importlib.util.find_spec("PySide6") is None:
        return Check(
            "dialog",
            WARN,
            "PySide6 is not installed: GIMP's plain dialog is used instead of the preview dialog",
            f"{sys.executable} -m pip install PySide6-Essentials",
        )
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("PySide6-Essentials")
    except PackageNotFoundError:
        found = "installed"
    return Check("dialog", OK, f"PySide6 {found}")


def check_faces() -> Check:
    """The face detector (faces as the foreground) runs on a picture with no face in it."""
    import numpy as np

    from .faces import DETECTOR, FaceDetectionError, detect_faces

    try:
        detect_faces(np.full((64, 64), 128, np.uint8))
    except FaceDetectionError as exc:
        return Check(
            "faces", WARN, str(exc), f"{sys.executable} -m pip install 'opencv-python-headless>=4.8,<5'"
        )
    return Check("faces", OK, f"{DETECTOR} (OpenCV's bundled cascades)")


# --------------------------------------------------------------------------- models
def check_models(models_dir: Path) -> list[Check]:
    """What is installed, whether registry models are complete, and which model each task would use."""
    from .models.registry import DEFAULT_MODEL_FOR_TASK, REGISTRY, with_requirements
    from .models.store import installed_models, missing_files

    installed = installed_models(models_dir)
    names = [f"{m.root.name} ({m.manifest.family})" for m in installed]
    if not installed:
        return [
            Check(
                "models",
                FAIL,
                f"no models in {models_dir}",
                f"{sys.executable} -m backend download pasd pasd-color (about 12 GB), or re-run "
                f"{INSTALL} --models pasd,color",
            )
        ]
    checks = [Check("models", OK, f"{', '.join(names)} in {models_dir}")]
    for model_id in REGISTRY:
        if not (models_dir / model_id).is_dir():
            continue
        damaged = [
            f"{spec.id}/{name}"
            for spec in with_requirements(model_id)
            for name in missing_files(spec, models_dir / spec.id)
        ]
        if damaged:
            checks.append(
                Check(
                    f"model {model_id}",
                    FAIL,
                    f"missing or damaged: {', '.join(damaged[:4])}{' …' if len(damaged) > 4 else ''}",
                    f"{sys.executable} -m backend download {model_id} --models {models_dir} (it repairs)",
                )
            )
    checks += [_check_supir(m.root, m.manifest) for m in installed if m.manifest.family == "supir"]
    for task, default in DEFAULT_MODEL_FOR_TASK.items():
        able = [m.root.name for m in installed if task in m.manifest.tasks]
        if default in able:
            checks.append(Check(task, OK, f"{default} (the default)"))
        elif able:
            checks.append(Check(task, OK, f"{able[0]} (the default {default} is not installed)"))
        else:
            checks.append(
                Check(task, WARN, f"no model can {task}", f"{sys.executable} -m backend download {default}")
            )
    return checks


# --------------------------------------------------------------------------- GIMP plug-in
def _read_config(path: Path) -> tuple[PluginConfig | None, str | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{path} is not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, f"{path} is not a JSON object"
    text = {k: (str(data[k]) if data.get(k) else None) for k in ("url", "python", "models", "token")}
    return PluginConfig(path, **text), None


def check_plugin(gimp_profile: Path | None) -> tuple[list[Check], PluginConfig | None]:
    """The plug-in where GIMP 3 looks: files, executable bit, JSON, and the interpreter it names."""
    from installer.platform_paths import find_gimp_profiles
    from installer.plugin import CONFIG_NAME, expected_files, is_executable

    profiles = find_gimp_profiles(explicit=gimp_profile)
    found = [p for p in profiles if (p.plugin_dir / "diffusion_upscale.py").is_file()]
    if not found:
        where = ", ".join(str(p.plug_ins) for p in profiles)
        return [
            Check("plug-in", FAIL, f"not installed in {where}", f"Run {INSTALL} (or --gimp-profile DIR).")
        ], None
    checks: list[Check] = []
    config: PluginConfig | None = None
    for profile in found:
        folder = profile.plugin_dir
        name = "plug-in" if len(found) == 1 else f"plug-in ({profile.kind})"
        problems, stale = [], []
        for file, content in expected_files().items():
            if not (folder / file).is_file():
                problems.append(f"{file} is missing")
            elif (folder / file).read_bytes() != content:
                stale.append(file)
        if not is_executable(folder / "diffusion_upscale.py"):
            problems.append("diffusion_upscale.py is not executable (GIMP skips it)")
        json_path = folder / CONFIG_NAME
        if not json_path.is_file():
            problems.append(f"{CONFIG_NAME} is missing (the plug-in cannot start the backend)")
        else:
            found_config, error = _read_config(json_path)
            if error:
                problems.append(error)
            else:
                assert found_config is not None
                config = config or found_config
                python = found_config.python
                if python and not (Path(python).is_file() and os.access(python, os.X_OK)):
                    problems.append(f"its JSON names the Python {python}, which does not exist")
                elif not python:
                    problems.append("its JSON names no backend Python (the plug-in cannot start the server)")
        if problems:
            checks.append(
                Check(name, FAIL, f"{folder}: {'; '.join(problems)}", f"Re-run {INSTALL} to repair it.")
            )
        elif stale:
            checks.append(
                Check(
                    name,
                    WARN,
                    f"{folder}: older than this backend ({', '.join(stale)})",
                    f"Re-run {INSTALL}.",
                )
            )
        else:
            checks.append(Check(name, OK, f"{folder} ({profile.kind} profile)"))
    return checks, config


# --------------------------------------------------------------------------- server
def check_server(url: str, token: str | None, config: PluginConfig | None) -> Check:
    """Health of the server; not running is a WARN when the plug-in can start it, else a FAIL."""
    try:
        client = Client(url, token=token, timeout=5)
        health = client.health()
    except AuthError:
        return Check(
            "server",
            FAIL,
            f"{url} refuses the access token",
            "`python -m backend token` on the server's machine shows it; re-run the installer with --token.",
        )
    except ServerUnreachable:
        python = config.python if config else None
        startable = bool(python and Path(python).is_file())
        start = f"{python if startable else sys.executable} -m backend serve"
        if not is_loopback(client.host):
            return Check(
                "server",
                FAIL,
                f"{url} does not answer",
                "Start it on that machine: python -m backend serve --host 0.0.0.0 (needs `backend token`).",
            )
        if startable or config is None:
            note = "GIMP starts it on first use" if startable else "the CLI works without it"
            return Check("server", WARN, f"not running at {url} ({note})", f"To start it now: {start}")
        return Check(
            "server", FAIL, f"not running at {url}, and the plug-in cannot start it", f"Start it: {start}"
        )
    except ClientError as exc:
        return Check(
            "server", FAIL, f"{url}: {exc}", "Is another program using that port? Try --port in serve."
        )
    model = health.loaded_model or "no model loaded yet"
    summary = f"{url}: version {health.version}, {health.device} {health.dtype}, {model}"
    if health.warnings:
        return Check("server", WARN, summary, " ".join(health.warnings))
    return Check("server", OK, summary)


# --------------------------------------------------------------------------- self-test
def _check_supir(root: Path, manifest: Any) -> Check:
    """SUPIR's parts (control model, connectors, denoise encoder) and its SDXL base checked key by
    key and shape by shape against the official layout, from the files' headers."""
    from .models.loading import ModelLoadError
    from .models.supir.configs import full_configs
    from .models.supir.loading import check_files
    from .models.supir.tiny import tiny_supir_configs

    try:
        configs = tiny_supir_configs(manifest.resolve(root, "tokenizer")) if manifest.tiny else full_configs()
        base = manifest.resolve(root, "base_file") if "base_file" in manifest.extra else None
        report = check_files(configs, manifest.resolve(root, "supir"), base)
    except (ModelLoadError, OSError) as exc:
        return Check(
            f"model {root.name}",
            FAIL,
            " ".join(line.strip() for line in str(exc).splitlines()[:6])[:400],
            f"{sys.executable} -m backend download {manifest.id} --accept-licence supir "
            f"--models {root.parent} (it repairs), or replace the file named above",
        )
    ignored = sum(len(v) for v in report.ignored.values())
    note = f"; {ignored} keys of no part ignored" if ignored else ""
    return Check(f"model {root.name}", OK, f"SUPIR parts and SDXL base match the official layout{note}")


def self_test() -> Check:
    """A tiny model of each family (PASD, PASD-SDXL, SUPIR), written to a temporary folder, through the whole
    pipeline on the CPU."""
    started = time.perf_counter()
    try:
        import numpy as np
        import torch
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        from .engine import Engine
        from .models.supir.tiny import write_tiny_supir
        from .models.tiny import write_tiny_model
        from .pipelines.params import RestoreParams

        # the report is the output: no progress bars or loading notes from the libraries
        for library in (diffusers_logging, transformers_logging):
            library.disable_progress_bar()
            library.set_verbosity_error()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a tiny model gains nothing from threads; spin-waits cost seconds
        try:
            with tempfile.TemporaryDirectory(prefix="gdu-doctor-") as tmp:
                engine = Engine(models_dir=tmp, device="cpu")
                image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
                params = RestoreParams(steps=2, process_size=256, seed=1, scale=2)
                results = []
                for variant in ("full", "sdxl"):
                    model = write_tiny_model(Path(tmp) / f"doctor-tiny-{variant}", variant, seed=1)
                    results.append(engine.restore(image, params, model=model))
                model = write_tiny_supir(Path(tmp) / "doctor-tiny-supir", seed=1)
                results.append(engine.restore(image, params, model=model))
        finally:
            torch.set_num_threads(threads)
    except Exception as exc:
        return Check(
            "self-test",
            FAIL,
            f"the pipeline failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            f"Re-run {INSTALL} (it repairs the environment); if it persists, report this output.",
        )
    for result in results:
        out = result.image
        if out.shape != (64, 64, 3) or out.dtype != np.uint8:
            return Check(
                "self-test", FAIL, f"wrong result: {out.shape} {out.dtype}, expected (64, 64, 3) uint8"
            )
    seconds = time.perf_counter() - started
    return Check(
        "self-test",
        OK,
        f"tiny PASD, PASD-SDXL and SUPIR, 32x32 -> 64x64 upscale on the CPU in {seconds:.1f} s",
    )


# --------------------------------------------------------------------------- report
def run_checks(
    models: Path | None = None,
    server: str | None = None,
    gimp_profile: Path | None = None,
    run_self_test: bool = True,
) -> list[Check]:
    checks = [check_python(), *check_torch()]
    plugin_checks, config = check_plugin(gimp_profile)
    from .paths import models_dir as default_models_dir

    folder = models or (Path(config.models) if config and config.models else default_models_dir())
    checks += check_models(folder.expanduser())
    checks += plugin_checks
    checks.append(check_dialog())
    checks.append(check_faces())
    url = server or (config.url if config else None) or DEFAULT_URL
    checks.append(check_server(url, config.token if config else None, config))
    if run_self_test:
        checks.append(self_test())
    return checks


def format_table(checks: Sequence[Check], width: int | None = None) -> str:
    """Four columns (check, status, detail, what to do), wrapped to fit the terminal."""
    width = max(80, width or shutil.get_terminal_size((140, 24)).columns)
    name_w = max(len("CHECK"), *(len(c.name) for c in checks))
    status_w = len("STATUS")
    rest = width - name_w - status_w - 6
    detail_w = max(30, rest * 11 // 20)
    advice_w = max(24, rest - detail_w)
    lines = [f"{'CHECK':<{name_w}}  {'STATUS':<{status_w}}  {'DETAIL':<{detail_w}}  WHAT TO DO"]
    lines.append("-" * min(width, name_w + status_w + detail_w + advice_w + 6))
    for check in checks:
        # paths and commands stay whole (copy-pastable), even when longer than their column
        detail = textwrap.wrap(check.detail, detail_w, break_long_words=False, break_on_hyphens=False) or [""]
        advice = textwrap.wrap(check.advice, advice_w, break_long_words=False, break_on_hyphens=False) or [""]
        for i in range(max(len(detail), len(advice))):
            name, status = (check.name, check.status) if i == 0 else ("", "")
            left = detail[i] if i < len(detail) else ""
            right = advice[i] if i < len(advice) else ""
            lines.append(f"{name:<{name_w}}  {status:<{status_w}}  {left:<{detail_w}}  {right}".rstrip())
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    summary = (
        f"{failed} problem(s) to fix, {warned} warning(s)."
        if failed
        else f"No problems; {warned} warning(s)."
    )
    return "\n".join([*lines, "", summary])


def run_doctor(args: argparse.Namespace) -> int:
    checks = run_checks(args.models, args.server, args.gimp_profile, not args.no_self_test)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(format_table(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, help="model folder (default: the plug-in's, else the per-user one)")
    p.add_argument("--server", help=f"backend address (default: the plug-in's, else {DEFAULT_URL})")
    p.add_argument("--gimp-profile", type=Path, help="GIMP 3 profile folder (default: where GIMP looks)")
    p.add_argument("--no-self-test", action="store_true", help="skip running the tiny model")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=run_doctor)


def add_doctor_parser(sub: Any) -> None:
    """Register ``doctor`` on the backend CLI's sub-commands."""
    _add_arguments(sub.add_parser("doctor", help="check the set-up and say what to do about each problem"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend doctor", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    return run_doctor(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
