"""A real GIMP 3 for the end-to-end tests: ``gimp-console-3.0`` from the PATH, or one inside a
Debian 13 root built once with debootstrap and cached (GIMP 3 is not packaged for Debian 12).

The root is built in ``<cache>.partial`` and renamed when complete, so an interrupted build is
resumed, never used half-made. Tests run GIMP's batch Python (``python-fu-eval``) on a script that
writes its findings as JSON; the backend runs outside the root and 127.0.0.1 is shared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

from gimp_plugin import install_plugin_files

GIMP = "gimp-console-3.0"
PACKAGES = ("gimp", "python3-gi", "gir1.2-gimp-3.0")
ROOT_ENV = "GDU_GIMP_ROOT"


class GimpUnavailable(RuntimeError):
    pass


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or Path.home() / ".cache" / "gimp-diffusion-upscale" / "gimp3-root")


def _run(command: list[str], log: list[str], timeout: float = 1800) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    log.append(f"$ {' '.join(command)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    if done.returncode != 0:
        raise GimpUnavailable(f"`{' '.join(command)}` failed with exit code {done.returncode}:\n" + log[-1])


def build_root(root: Path) -> Path:
    """Debian 13 (trixie) minbase with GIMP 3 and its Python binding; cached at ``root``."""
    if (root / "usr" / "bin" / GIMP).exists():
        return root
    if os.geteuid() != 0:
        raise GimpUnavailable("building the GIMP 3 root needs root (debootstrap and chroot)")
    log: list[str] = []
    partial = root.with_name(root.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which("debootstrap") is None:
        _run(["apt-get", "install", "-y", "-q", "debootstrap"], log)
    if not (partial / "usr" / "bin" / "apt-get").exists():
        _run(["debootstrap", "--variant=minbase", "trixie", str(partial)], log)
    shutil.copyfile("/etc/resolv.conf", partial / "etc" / "resolv.conf")
    with mounted_proc(partial):
        env = ["env", "DEBIAN_FRONTEND=noninteractive"]
        _run(["chroot", str(partial), *env, "apt-get", "update", "-q"], log)
        _run(
            [
                "chroot",
                str(partial),
                *env,
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                *PACKAGES,
            ],
            log,
        )
        _run(["chroot", str(partial), "apt-get", "clean"], log)
    os.replace(partial, root)
    return root


class mounted_proc:
    """/proc inside the root for the duration (GIMP and apt need it); left as found."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.mounted = False

    def __enter__(self) -> mounted_proc:
        if not (self.proc / "self").exists():
            subprocess.run(["mount", "-t", "proc", "proc", str(self.proc)], check=True)
            self.mounted = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.proc)], check=False)


@dataclass
class Gimp:
    """Where GIMP runs: directly (``root`` None) or chrooted into ``root``."""

    root: Path | None

    @classmethod
    def find(cls) -> Gimp:
        if shutil.which(GIMP):
            return cls(None)
        return cls(build_root(default_root()))

    def workdir(self) -> Path:
        """A throw-away folder both sides see (inside the root when chrooted)."""
        base = (self.root / "tmp") if self.root else Path(tempfile.gettempdir())
        return Path(tempfile.mkdtemp(prefix="gdu-gimp-", dir=base))

    def inside(self, path: Path) -> str:
        """``path`` as GIMP sees it."""
        return "/" + str(path.relative_to(self.root)) if self.root else str(path)

    def run_script(
        self, script: str, work: Path, env: dict[str, str], timeout: float = 600, profile: Path | None = None
    ) -> dict:
        """Run ``script`` in GIMP's batch Python with our plug-in installed; returns what it saved
        with ``save(dict)``; raises with GIMP's output when it saved nothing. With ``profile`` (a
        folder inside ``work``), GIMP runs on that profile as it is: nothing is installed here."""
        if profile is None:
            plug_ins = work / "plug-ins"
            install_plugin_files(plug_ins)
            profile = work / "profile"
            profile.mkdir(exist_ok=True)
            (profile / "gimprc").write_text(
                f'(plug-in-path "{self.inside(plug_ins)}:${{gimp_plug_in_dir}}/plug-ins")\n'
            )
        out = work / "result.json"
        prelude = textwrap.dedent(
            f"""
            import json, gi
            gi.require_version('Gimp', '3.0'); gi.require_version('Gegl', '0.4')
            from gi.repository import Gimp, Gegl, GLib
            def save(data):
                with open({self.inside(out)!r}, 'w') as fh:
                    json.dump(data, fh)
            """
        )
        (work / "script.py").write_text(prelude + textwrap.dedent(script))
        variables = {"GIMP3_DIRECTORY": self.inside(profile), "HOME": self.inside(work), **env}
        secret = Path(os.environ.get("GDU_SECRET_FILE", ""))
        if "GDU_SECRET_FILE" not in env and secret.is_file():
            # The user's server secret, where the plug-in (chrooted: with its own HOME) finds it.
            copy = work / "server-secret"
            shutil.copy2(secret, copy)
            variables["GDU_SECRET_FILE"] = self.inside(copy)
        gimp = [GIMP, "-i", "--quit", "--batch-interpreter", "python-fu-eval", "-b",
                f"exec(open({self.inside(work / 'script.py')!r}).read())"]  # fmt: skip
        command = ["env", "-i", "PATH=/usr/bin:/bin", *(f"{k}={v}" for k, v in variables.items()), *gimp]
        if self.root is not None:
            with mounted_proc(self.root):
                done = subprocess.run(["chroot", str(self.root), *command], capture_output=True, text=True,
                                      timeout=timeout)  # fmt: skip
        else:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        output = done.stdout + done.stderr
        if not out.is_file():
            raise AssertionError(
                f"the GIMP script saved no result (exit code {done.returncode}):\n{output[-6000:]}"
            )
        data = json.loads(out.read_text())
        data["_output"] = output
        return data
