"""The dialog on a real X server (Xvfb): transient for the host's window, as GIMP's own dialogs are.

Qt's offscreen platform has no foreign windows, so this runs the dialog as its own process on the
xcb platform against an X window made by another process (standing in for GIMP's image window),
and reads the window manager hint the dialog set with ``xprop``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .service_server import ROOT
from .test_gui import make_job

HOST_WINDOW = """
import sys
from PySide6.QtWidgets import QApplication, QWidget
app = QApplication(sys.argv)
window = QWidget()
window.setWindowTitle("GIMP stand-in")
window.show()
app.processEvents()
print(int(window.winId()), flush=True)
app.exec()
"""


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    missing = [tool for tool in ("Xvfb", "xprop", "xwininfo") if shutil.which(tool) is None]
    if missing:  # CI installs them (.ci/run); elsewhere they are optional
        message = f"needs {', '.join(missing)} (apt-get install xvfb x11-utils)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    number = next(n for n in range(90, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    server = subprocess.Popen(
        ["Xvfb", f":{number}", "-nolisten", "tcp", "-screen", "0", "1280x800x24"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Xvfb :{number} did not start")
            time.sleep(0.1)
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _window_named(env: dict[str, str], title: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tree = subprocess.run(["xwininfo", "-root", "-tree"], capture_output=True, text=True, env=env).stdout
        found = re.search(r"^\s*(0x[0-9a-f]+) \"" + re.escape(title), tree, re.MULTILINE)
        if found:
            return found.group(1)
        time.sleep(0.2)
    raise AssertionError(f"no window titled {title!r} appeared")


def test_the_dialog_is_transient_for_the_host_window(display: str, tmp_path: Path) -> None:
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb", "GDU_CONFIG_DIR": str(tmp_path / "c")}
    host = subprocess.Popen(
        [sys.executable, "-c", HOST_WINDOW], env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    dialog = None
    try:
        assert host.stdout is not None
        xid = int(host.stdout.readline())
        job_file = make_job(
            tmp_path / "job",
            f"http://127.0.0.1:{_free_port()}",  # no backend: the window matters here, not the run
            mask=False,
            python=str(tmp_path / "no-python"),
            host_pid=host.pid,
            window={"system": "x11", "id": xid},
        )
        dialog = subprocess.Popen(
            [sys.executable, "-m", "gui", "--job", str(job_file)], env=env, cwd=ROOT, stderr=subprocess.PIPE
        )
        window = _window_named(env, "Diffusion Upscale — hills.png")
        hint = subprocess.run(
            ["xprop", "-id", window, "WM_TRANSIENT_FOR"], capture_output=True, text=True, env=env
        )
        assert hint.stdout.strip() == f"WM_TRANSIENT_FOR(WINDOW): window id # {hex(xid)}", hint.stdout
        host.kill()  # the host goes: the dialog follows within a second or two
        host.wait()
        assert dialog.wait(15) == 3  # canceled: nothing delivered
    finally:
        for process in (host, dialog):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
