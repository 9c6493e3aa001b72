"""The installer's command line: options, the header that says what will happen, steps or uninstall.

Options given once are remembered in the install record, so a plain re-run (the way to repair or
resume) does what the first run did, and an empty value (``--backend-python ''``) clears one.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

from .errors import InstallError
from .models import check_terms, load_registry, parse_model_ids
from .platform_paths import Platform, find_gimp_profiles
from .plugin import DEFAULT_URL
from .state import STATE_NAME, InstallState
from .steps import Context, Options, build_steps, run_steps
from .torch_choice import FLAVOURS, MachineFacts, TorchChoiceError, choose_torch, probe_machine
from .uninstall import uninstall

MIN_PYTHON = (3, 10)
REMEMBERED = ("torch", "torch_spec", "torch_index_url", "editable", "backend_python", "gimp_profile",
              "plugin", "models", "models_dir", "url", "token", "ca_file", "accept_licence")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 installer/install.py",
        description="Install (or repair, or remove) GIMP Diffusion Upscale: backend environment, PyTorch, "
        "GIMP 3 plug-in, models. Options are remembered for the next run.",
    )
    p.add_argument("--torch", choices=("auto", *FLAVOURS), help="PyTorch build (default: auto-detect)")
    p.add_argument("--torch-spec", help="PyTorch requirement, e.g. 'torch==2.13.0' (default: torch)")
    p.add_argument(
        "--torch-index-url",
        help="package index for PyTorch builds the default index lacks (ROCm, CUDA on Windows, CPU-only "
        "Linux); also GDU_TORCH_INDEX_URL",
    )
    p.add_argument("--editable", action=argparse.BooleanOptionalAction, default=None,
                   help="install the checkout in editable mode (developers)")  # fmt: skip
    p.add_argument("--backend-python", help="use this existing environment's Python instead ('' : make one)")
    p.add_argument("--gimp-profile", help="GIMP 3 profile folder (default: found; GIMP3_DIRECTORY)")
    p.add_argument("--plugin", action=argparse.BooleanOptionalAction, default=None,
                   help="install the GIMP plug-in (--no-plugin: a backend-only machine)")  # fmt: skip
    p.add_argument("--models", help="models to download, e.g. 'pasd,color' (ids: python -m backend models)")
    p.add_argument("--accept-licence", action="append", metavar="TERMS",
                   help="accept a model's licence terms so it may be downloaded (e.g. 'supir': SUPIR's "
                        "non-commercial licence; else it only shows the terms)")  # fmt: skip
    p.add_argument("--models-dir", help="model folder (default: per-user data folder; GDU_MODELS_DIR)")
    p.add_argument("--url", help=f"backend address the plug-in uses (default {DEFAULT_URL})")
    p.add_argument("--token", help="access token of a backend on another machine")
    p.add_argument("--ca-file", help="certificate to trust for an https backend with its own certificate")
    p.add_argument("--dry-run", action="store_true", help="show what would be done; change nothing")
    p.add_argument("--uninstall", action="store_true", help="remove what the installer installed")
    p.add_argument("--purge-models", action="store_true", help="with --uninstall: also downloaded models")
    return p


def _settings_value(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def merge_options(
    args: argparse.Namespace, remembered: dict[str, object], environ: dict[str, str]
) -> Options:
    """Explicit options, else those of the last run, else the environment, else the defaults.
    An empty string clears a remembered value (e.g. ``--backend-python ''``)."""
    given: dict[str, object] = {}
    for name in REMEMBERED:
        value = getattr(args, name)
        if value is None:
            value = remembered.get(name)
        if value is None:
            continue
        if name == "models":
            value = parse_model_ids(value) if isinstance(value, str) else tuple(value)  # type: ignore[arg-type]
        elif name == "accept_licence":
            value = tuple(dict.fromkeys([*remembered.get(name, ()), *value]))  # type: ignore[misc]
        elif name in ("backend_python", "gimp_profile", "models_dir", "ca_file"):
            value = Path(str(value)).expanduser().absolute() if value else None
        elif name in ("torch_index_url", "token"):
            value = value or None
        elif name in ("torch_spec", "url") and not value:
            continue
        given[name] = value
    if given.get("torch_index_url") is None and environ.get("GDU_TORCH_INDEX_URL"):
        given["torch_index_url"] = environ["GDU_TORCH_INDEX_URL"]
    known = {f.name for f in fields(Options)}
    return replace(Options(dry_run=args.dry_run), **{k: v for k, v in given.items() if k in known})


def _header(ctx: Context) -> None:
    o = ctx.options
    ctx.out(f"GIMP Diffusion Upscale installer{' (dry run: nothing is changed)' if o.dry_run else ''}")
    ctx.out(f"  data folder:         {ctx.data_dir}")
    ctx.out(f"  backend environment: {ctx.python}{'' if o.backend_python else ' (made here)'}")
    if ctx.torch_plan:
        plan = ctx.torch_plan
        index = f" from {plan.index_url}" if plan.index_url else ""
        ctx.out(f"  PyTorch:             {plan.flavour}: {plan.spec}{index} ({plan.reason})")
        for note in plan.notes:
            ctx.out(f"  NOTE: {note}")
    for profile in ctx.profiles:
        state = "" if profile.exists else " (not there yet: made now, GIMP uses it on its first start)"
        ctx.out(f"  GIMP 3 profile:      {profile.path} [{profile.kind}]{state}")
    if o.models:
        ctx.out(f"  models:              {', '.join(o.models)} into {ctx.models_dir}")


def _advise_model(ctx: Context, facts: MachineFacts) -> None:
    """Which restoration model fits this machine, said before anything is downloaded."""
    recommended, why = load_registry().recommend_model("upscale", facts.gpu_free_bytes)
    if facts.gpu_free_bytes is None and (facts.rocm or facts.apple_silicon):
        return  # a GPU whose free memory nvidia-smi cannot tell: no advice rather than a wrong one
    chosen = ctx.options.models or ()
    if recommended not in chosen:
        ctx.out(f"  recommended model:   {recommended} ({why} Install it with --models {recommended}.)")
    else:
        ctx.out(f"  recommended model:   {recommended} ({why})")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if sys.version_info < MIN_PYTHON:
        print(f"error: the backend needs Python {'.'.join(map(str, MIN_PYTHON))} or newer; run the installer "
              "with that Python (e.g. python3.11 installer/install.py)", file=sys.stderr)  # fmt: skip
        return 1
    platform = Platform()
    data_dir = platform.user_data_dir()
    state = InstallState.load(data_dir / STATE_NAME, dry_run=args.dry_run)
    try:
        if args.uninstall:
            return uninstall(state, purge_models=args.purge_models, dry_run=args.dry_run, out=print)
        options = merge_options(args, state.settings, dict(os.environ))
        plan = None
        facts = probe_machine()
        if not options.backend_python:
            plan = choose_torch(facts, options.torch, options.torch_spec, options.torch_index_url)
        profiles = find_gimp_profiles(platform, options.gimp_profile) if options.plugin else []
        check_terms(options.models, options.accept_licence)
        ctx = Context(options, platform, state, data_dir, profiles, plan)
        _header(ctx)
        _advise_model(ctx, facts)
        # remembered with the first step that changes something (a run that fails at once leaves nothing)
        state.settings = {n: _settings_value(getattr(options, n)) for n in REMEMBERED}
        changed = run_steps(build_steps(options), ctx)
        state.save()
    except (InstallError, TorchChoiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted. Run the installer again to resume where it stopped.", file=sys.stderr)
        return 130
    if options.dry_run:
        print(
            "Dry run: nothing was changed." if changed else "Dry run: everything is installed and up to date."
        )
        return 0
    print("Everything is installed and up to date." if not changed else "Installed.")
    if options.plugin:
        print(
            "In GIMP 3: Filters > Enhance > Diffusion Upscale... / Diffusion Colorize... (restart GIMP once)."
        )
    print(f"Check the set-up any time with: {ctx.python} -m backend doctor")
    return 0
