"""The install as resumable steps: each checks what is on disk, says "up to date" or does its work.

A step is marked started in the install record before it changes anything and done after; the next
run sees a step that started and never finished and repairs it (a half-made venv is made again, a
half-written pip install is cleaned up before pip runs again). A step whose check passes changes
nothing, so a second run is a no-op.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from . import environment as env
from . import models as model_files
from .errors import InstallError
from .platform_paths import GimpProfile, Platform
from .plugin import CONFIG_NAME, DEFAULT_URL, PluginSettings, install_plugin, plugin_problems
from .state import ENV, MODELS, InstallState
from .torch_choice import TorchPlan


@dataclass(frozen=True)
class Options:
    torch: str = "auto"
    torch_spec: str = "torch"
    torch_index_url: str | None = None
    editable: bool = False
    backend_python: Path | None = None
    gimp_profile: Path | None = None
    plugin: bool = True
    models: tuple[str, ...] = ()
    models_dir: Path | None = None
    url: str = DEFAULT_URL
    token: str | None = None
    ca_file: Path | None = None
    accept_licence: tuple[str, ...] = ()  # licence terms the user accepted (registry LICENCE_TERMS ids)
    dry_run: bool = False


@dataclass
class Context:
    options: Options
    platform: Platform
    state: InstallState
    data_dir: Path
    profiles: list[GimpProfile]
    torch_plan: TorchPlan | None = None
    out: Callable[[str], None] = print

    @property
    def venv(self) -> Path:
        return self.data_dir / "venv"

    @property
    def python(self) -> Path:
        """The backend environment's interpreter (never resolved: a venv's python is a symlink)."""
        if self.options.backend_python:
            return self.options.backend_python.expanduser().absolute()
        return self.platform.venv_python(self.venv)

    @property
    def models_dir(self) -> Path:
        return (self.options.models_dir or self.platform.models_dir()).expanduser()

    def plugin_settings(self) -> PluginSettings:
        explicit = self.options.models_dir or self.platform.environ.get("GDU_MODELS_DIR")
        return PluginSettings(
            url=self.options.url,
            python=str(self.python),
            models=str(Path(explicit).expanduser().absolute()) if explicit else None,
            token=self.options.token or None,
            ca_file=str(self.options.ca_file) if self.options.ca_file else None,
        )


class Step:
    """One part of the install: ``pending`` says why it must run (None: up to date), ``run`` does it."""

    name = ""
    title = ""

    def fingerprint(self, ctx: Context) -> str:
        return ""

    def pending(self, ctx: Context) -> str | None:
        raise NotImplementedError

    def plan(self, ctx: Context) -> list[str]:
        return []

    def run(self, ctx: Context, interrupted: bool) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- the environment
class CreateEnvironment(Step):
    name, title = "venv", "Backend environment"

    def fingerprint(self, ctx: Context) -> str:
        return str(ctx.venv)

    def pending(self, ctx: Context) -> str | None:
        if not ctx.venv.exists():
            return f"creating {ctx.venv}"
        if env.python_version(ctx.python) is None:
            return f"{ctx.venv} is damaged (its Python does not run); making it again"
        return None

    def plan(self, ctx: Context) -> list[str]:
        return [f"would create a virtual environment in {ctx.venv} with {sys.executable}"]

    def run(self, ctx: Context, interrupted: bool) -> None:
        if ctx.venv.exists():
            if not ctx.state.owns(ctx.venv):
                raise InstallError(
                    f"{ctx.venv} exists but was not made by this installer, and its Python does not run. "
                    "Move it away, or use an environment of your own with --backend-python."
                )
            shutil.rmtree(ctx.venv)
        ctx.state.make_dirs(ctx.venv.parent, ENV)
        ctx.state.record(ctx.venv, "tree", ENV)
        env.create_venv(ctx.venv)


class UseExistingEnvironment(Step):
    """``--backend-python``: a developer's environment is used as it is and never changed."""

    name, title = "existing-env", "Backend environment"

    def pending(self, ctx: Context) -> str | None:
        if env.python_version(ctx.python) is None:
            raise InstallError(f"--backend-python {ctx.python} does not run.")
        version, missing = env.project_status(ctx.python)
        if version is None or missing or env.torch_status(ctx.python) is None:
            what = f"lacks {', '.join(missing)}" if missing else "cannot import the backend or PyTorch"
            raise InstallError(
                f"The environment of {ctx.python} {what}. Install the project there first "
                '(pip install torch -e ".") or run the installer without --backend-python.'
            )
        return None

    def run(self, ctx: Context, interrupted: bool) -> None:
        """Nothing to do: ``pending`` either passes or says what the environment lacks."""


def _repair(ctx: Context) -> None:
    for dist in env.repair_interrupted(ctx.python, ctx.venv):
        ctx.out(
            f"      removed the half-installed {dist.dist_info.name} ({dist.reason}); pip installs it again"
        )


class InstallTorch(Step):
    name, title = "torch", "PyTorch"

    def fingerprint(self, ctx: Context) -> str:
        assert ctx.torch_plan is not None
        return ctx.torch_plan.fingerprint

    def pending(self, ctx: Context) -> str | None:
        assert ctx.torch_plan is not None
        installed = env.torch_status(ctx.python)
        record = ctx.state.step(self.name)
        if installed is None:
            return f"installing {ctx.torch_plan.spec} ({ctx.torch_plan.flavour})"
        if record is None or record.status != "done":
            return f"checking {ctx.torch_plan.spec} ({ctx.torch_plan.flavour}) against {installed}"
        if record.fingerprint != self.fingerprint(ctx):
            return f"the requested build changed ({record.fingerprint} -> {self.fingerprint(ctx)})"
        return None

    def plan(self, ctx: Context) -> list[str]:
        assert ctx.torch_plan is not None
        return [f"would run pip install {' '.join(ctx.torch_plan.pip_args())}  ({ctx.torch_plan.reason})"]

    def run(self, ctx: Context, interrupted: bool) -> None:
        assert ctx.torch_plan is not None
        if interrupted:
            _repair(ctx)
        record = ctx.state.step(self.name)
        changed = record is not None and record.fingerprint not in ("", self.fingerprint(ctx))
        if changed and env.torch_status(ctx.python) is not None:
            env.check([ctx.python, "-I", "-m", "pip", "uninstall", "-y", "torch"], "Removing the old PyTorch")
        env.pip_install(ctx.python, ctx.torch_plan.pip_args(), f"Installing PyTorch ({ctx.torch_plan.spec})")
        version = env.torch_status(ctx.python)
        if version is None:
            raise InstallError("PyTorch was installed but does not import; run the installer again.")
        ctx.out(f"      PyTorch {version}")


class InstallProject(Step):
    name, title = "project", "GIMP Diffusion Upscale backend"

    def fingerprint(self, ctx: Context) -> str:
        return f"{env.source_fingerprint()}|editable={ctx.options.editable}"

    def pending(self, ctx: Context) -> str | None:
        version, missing = env.project_status(ctx.python)
        record = ctx.state.step(self.name)
        if version is None:
            return "installing the backend into the environment"
        if missing:
            return f"missing requirements: {', '.join(missing)}"
        if record is None or record.fingerprint != self.fingerprint(ctx):
            return "this checkout differs from the installed backend; updating it"
        return None

    def plan(self, ctx: Context) -> list[str]:
        what = f"-e {env.ROOT}" if ctx.options.editable else f"{env.ROOT} (from a copy)"
        spec = ctx.torch_plan.spec if ctx.torch_plan else "torch"
        return [f"would run pip install {what} {spec}"]

    def run(self, ctx: Context, interrupted: bool) -> None:
        if interrupted:
            _repair(ctx)
        spec = ctx.torch_plan.spec if ctx.torch_plan else "torch"
        version, _ = env.project_status(ctx.python)
        if version is not None:  # a local folder of the same version would count as installed
            env.check(
                [ctx.python, "-I", "-m", "pip", "uninstall", "-y", env.DIST_NAME], "Removing the old backend"
            )
        if ctx.options.editable:
            env.pip_install(ctx.python, ["-e", env.ROOT, spec], "Installing the backend")
        else:
            with tempfile.TemporaryDirectory(prefix="gdu-install-") as tmp:
                source = env.copy_source(env.ROOT, Path(tmp) / "gimp-diffusion-upscale")
                env.pip_install(ctx.python, [source, spec], "Installing the backend")
        version, missing = env.project_status(ctx.python)
        if version is None or missing:
            raise InstallError(
                f"The backend did not install completely ({', '.join(missing) or 'no import'})."
            )


# --------------------------------------------------------------------------- GIMP
class InstallPlugin(Step):
    name, title = "plugin", "GIMP plug-in"

    def fingerprint(self, ctx: Context) -> str:
        return ";".join(str(p.path) for p in ctx.profiles)

    def pending(self, ctx: Context) -> str | None:
        settings = ctx.plugin_settings()
        reasons = [
            f"{p.plugin_dir}: {', '.join(problems)}"
            for p in ctx.profiles
            if (problems := plugin_problems(p.plugin_dir, settings))
        ]
        return "; ".join(reasons) or None

    def plan(self, ctx: Context) -> list[str]:
        settings = json.dumps(asdict(ctx.plugin_settings()))
        return [
            f"would write {p.plugin_dir} ({p.kind} profile) with {CONFIG_NAME} {settings}"
            for p in ctx.profiles
        ]

    def run(self, ctx: Context, interrupted: bool) -> None:
        for profile in ctx.profiles:
            folder = install_plugin(profile, ctx.plugin_settings(), ctx.state)
            ctx.out(f"      {folder} ({profile.kind} profile)")
            if profile.kind == "flatpak":
                ctx.out(
                    "      Flatpak GIMP runs sandboxed and cannot start the backend itself: start it "
                    f"outside with `{ctx.python} -m backend serve` (e.g. at login)."
                )


# --------------------------------------------------------------------------- models
class DownloadModels(Step):
    name, title = "models", "Models"

    def fingerprint(self, ctx: Context) -> str:
        return ",".join(ctx.options.models)

    def pending(self, ctx: Context) -> str | None:
        needs = model_files.needs(ctx.options.models, ctx.models_dir)
        absent = [n.id for n in needs if not n.present]
        if absent:
            return f"{', '.join(absent)} to download into {ctx.models_dir}"
        if ctx.python.exists() and (
            damaged := model_files.verify(ctx.python, ctx.options.models, ctx.models_dir)
        ):
            return f"damaged or incomplete: {', '.join(damaged)}; repairing"
        return None

    def plan(self, ctx: Context) -> list[str]:
        return [
            "would download:",
            *model_files.describe(model_files.needs(ctx.options.models, ctx.models_dir)),
        ]

    def run(self, ctx: Context, interrupted: bool) -> None:
        needs = model_files.needs(ctx.options.models, ctx.models_dir)
        for line in model_files.describe(needs):
            ctx.out(f"      {line}")
        ctx.state.make_dirs(ctx.models_dir, MODELS)
        for need in needs:
            if not (ctx.models_dir / need.id).exists():
                ctx.state.record(ctx.models_dir / need.id, "tree", MODELS)
        for cache in model_files.hub_caches(ctx.python, needs):  # removed with the models, if new
            if not cache.exists():
                ctx.state.make_dirs(cache.parent, MODELS)
                ctx.state.record(cache, "tree", MODELS)
        model_files.download(ctx.python, ctx.options.models, ctx.models_dir, ctx.options.accept_licence)
        if damaged := model_files.verify(ctx.python, ctx.options.models, ctx.models_dir):
            raise InstallError(f"After the download these model files are missing or damaged: {damaged}")
        ctx.out(f"      verified: {', '.join(ctx.options.models)} in {ctx.models_dir}")


def build_steps(options: Options) -> list[Step]:
    steps: list[Step] = (
        [UseExistingEnvironment()]
        if options.backend_python
        else [CreateEnvironment(), InstallTorch(), InstallProject()]
    )
    if options.plugin:
        steps.append(InstallPlugin())
    if options.models:
        steps.append(DownloadModels())
    return steps


def run_steps(steps: list[Step], ctx: Context) -> bool:
    """Run what is pending; returns whether anything was (or, in a dry run, would be) changed."""
    changed = False
    for number, step in enumerate(steps, 1):
        head = f"[{number}/{len(steps)}] {step.title}"
        interrupted = ctx.state.interrupted(step.name)
        reason = step.pending(ctx)
        if interrupted:
            reason = f"the last run stopped during this step; resuming ({reason or 'checking it again'})"
        if reason is None:
            ctx.out(f"{head}: already installed / up to date")
            continue
        changed = True
        if ctx.options.dry_run:
            ctx.out(f"{head}: would change it: {reason}")
            for line in step.plan(ctx):
                ctx.out(f"      {line}")
            continue
        ctx.out(f"{head}: {reason}")
        fingerprint = step.fingerprint(ctx)
        ctx.state.start(step.name, fingerprint)
        step.run(ctx, interrupted)
        ctx.state.finish(step.name, fingerprint)
    return changed
