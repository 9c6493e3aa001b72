"""The PySide6 dialog, end to end: real widgets (offscreen) against a real backend serving the tiny models.

Nothing is mocked: the dialog talks to ``python -m backend serve`` through the one client module, the
way it does for the GIMP plug-in, and its files are read back with the plug-in's own readers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before any QApplication exists
pytest.importorskip("pytestqt", reason="the dialog's tests need pytest-qt (and PySide6)")

import numpy as np
from PySide6.QtCore import QPoint, Qt, QTimer
from PySide6.QtWidgets import QApplication, QComboBox, QDialog, QMessageBox

from backend.client import (
    DIALOG_EXIT_APPLIED,
    DIALOG_EXIT_CANCELED,
    Client,
    DialogAnswer,
    DialogJob,
    RawImage,
    read_npy,
    write_npy,
)
from backend.models.registry import FAMILIES
from backend.pipelines.params import RestoreParams
from gui.app import job_input, main
from gui.dialog import RestoreDialog
from gui.imaging import Rect
from gui.settings import PRESETS, DialogSettings, SettingsStore, merge_host
from tests.conftest import screenshot
from tests.service_server import ROOT, ServerProcess, wait_for

PASD = FAMILIES["pasd"].defaults["upscale"]
SDXL = FAMILIES["pasd-sdxl"].defaults["upscale"]
UPSCALE_NEGATIVE_PROMPT = PASD.negative_prompt

# The host's settings for most tests (the plug-in hands its last values over the same way): quick runs.
FAST = {"steps": 2, "process_size": 256}
CROP = 48  # preview crop side for the tests (the dialog's default is 256)


# --------------------------------------------------------------------------- helpers
def picture(h: int = 64, w: int = 80, channels: int = 3) -> np.ndarray:
    """A small scene (sky, sun, hills, a house, a tree), so the screenshot shows something."""
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    scene = np.stack([0.35 + 0.3 * y, 0.55 + 0.25 * y, 0.9 - 0.1 * y], axis=2)
    hill = y > 0.62 + 0.12 * np.sin(6 * x)
    scene[hill] = np.stack([0.2 + 0.2 * x, 0.5 - 0.1 * y, 0.15 + 0 * x], axis=2)[hill]
    scene[(x - 0.72) ** 2 + ((y - 0.25) * h / w) ** 2 < 0.008] = (1.0, 0.85, 0.4)  # sun
    wall = (abs(x - 0.3) < 0.1) & (y > 0.5) & (y < 0.75)
    scene[wall] = (0.85, 0.8, 0.7)
    scene[(y < 0.5) & (y > 0.35) & (abs(x - 0.3) < (y - 0.35) * 0.9)] = (0.6, 0.2, 0.15)  # roof
    scene[(abs(x - 0.27) < 0.025) & (y > 0.62) & (y < 0.75)] = (0.35, 0.2, 0.1)  # door
    scene[(abs(x - 0.85) < 0.012) & (y > 0.6) & (y < 0.8)] = (0.3, 0.2, 0.1)  # trunk
    scene[(x - 0.85) ** 2 + ((y - 0.55) * h / w) ** 2 < 0.004] = (0.1, 0.4, 0.12)  # crown
    image = (scene * 255).round().astype(np.uint8)
    return image[..., :channels]


def raw(array: np.ndarray) -> RawImage:
    if array.ndim == 2:
        array = array[..., None]
    h, w, c = array.shape
    return RawImage(w, h, c, str(array.dtype), array.tobytes())


def make_job(
    folder: Path,
    server: str,
    task: str = "upscale",
    mask: bool = True,
    settings: dict[str, Any] | None = None,
    size: tuple[int, int] = (64, 80),
    **extra: Any,
) -> Path:
    """Write what the plug-in writes: image.npy (+ mask.npy) and a DialogJob beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    image = picture(*size, channels=3 if task == "upscale" else 1)
    write_npy(folder / "image.npy", raw(image))
    if mask:  # a selection right of the middle, around the sun
        h, w = size
        selection = np.zeros(size, np.uint8)
        selection[h // 4 : h * 3 // 4, w // 2 : w * 9 // 10] = 255
        write_npy(folder / "mask.npy", raw(selection))
    job = DialogJob(
        task=task,
        image=str(folder / "image.npy"),
        mask=str(folder / "mask.npy") if mask else None,
        result=str(folder / "result.npy"),
        answer=str(folder / "answer.json"),
        server=server,
        title="hills.png",
        settings={"params": FAST} if settings is None else settings,
        **extra,
    )
    job.write(folder / "job.json")
    return folder / "job.json"


def open_dialog(qtbot: Any, job_file: Path, connected: bool = True, crop: int = CROP) -> RestoreDialog:
    dialog = RestoreDialog(job_input(str(job_file)), preview_side=crop, poll_interval=0.1)
    qtbot.addWidget(dialog)
    dialog.show()
    if connected:
        qtbot.waitUntil(lambda: dialog.models_loaded, timeout=30000)
    return dialog


def press_apply(qtbot: Any, dialog: RestoreDialog, url: str) -> tuple[Client, str]:
    """Click Apply and wait until the backend has the job: a client to watch it, and its id."""
    qtbot.mouseClick(dialog.apply_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.job_id is not None, timeout=30000)
    return Client(url), dialog.job_id or ""


def items(combo: QComboBox) -> list[Any]:
    return [combo.itemData(i) for i in range(combo.count())]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_models["full"].parent, tmp_path_factory.mktemp("gui-server")) as running:
        yield running


@pytest.fixture(autouse=True)
def user_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test has its own per-user folders: the real user's settings are never read or written."""
    for var, name in (("GDU_CONFIG_DIR", "config"), ("GDU_LOG_DIR", "logs"), ("GDU_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / name))
    return tmp_path / "config"


# --------------------------------------------------------------------------- building
def test_dialog_builds_from_a_job_file(qtbot: Any, server: ServerProcess, tmp_path: Path) -> None:
    job_file = make_job(tmp_path / "job", server.url, settings={"prompt": "hills", "scale": 4})
    dialog = open_dialog(qtbot, job_file)
    c = dialog.controls
    assert dialog.windowTitle() == "Diffusion Upscale — hills.png"
    assert dialog.status.state == "connected" and dialog.status.text.text().startswith("Connected: CPU")
    assert "free" in dialog.status.text.text()
    # The task is the job file's: shown, not changeable.
    assert c.task_combo.currentData() == "upscale" and not c.task_combo.isEnabled()
    # Models of the task from the backend; the server's default first.
    models = items(c.model_combo)
    assert models[0] is None and "tiny-full" in c.model_combo.itemText(0)
    assert set(models[1:]) == {"tiny-full", "tiny-light", "tiny-full-rrdb"}
    # The host's values are in the controls; the output size follows the scale.
    assert c.prompt.text() == "hills" and c.scale_combo.currentData() == 4
    assert c.size_label.text() == "320 × 256 px, 0.08 MP"
    c.scale_combo.setCurrentIndex(c.scale_combo.findData(2))
    assert c.size_label.text() == "160 × 128 px, 0.02 MP"
    # With a selection, both fidelities are live; the colour mode is a colorize choice only.
    assert c.fidelity_fg.isEnabled() and c.fidelity_bg.isEnabled()
    assert not c.color_mode.isVisibleTo(dialog) and c.output.isVisibleTo(dialog)
    # The quality words and negative prompt start as the task's defaults.
    assert c.negative_words.text() == UPSCALE_NEGATIVE_PROMPT
    # Enter applies, Esc cancels; every control says what it does.
    assert dialog.apply_button.isDefault() and dialog.apply_button.isEnabled()
    described = [c.preset, c.model_combo, c.install_button, c.scale_combo, c.prompt, c.auto_prompt,
                 c.fidelity_fg, c.fidelity_bg, c.steps, c.guidance, c.seed, c.dice, c.seed_new, c.output,
                 c.quality_words, c.negative_words, c.tile, c.process_size, c.noise, c.color_fix,
                 dialog.preview_button]  # fmt: skip
    for control in described:
        assert len(control.toolTip()) > 20, control


def test_colorize_job_without_a_selection(qtbot: Any, server: ServerProcess, tmp_path: Path) -> None:
    dialog = open_dialog(qtbot, make_job(tmp_path / "job", server.url, task="colorize", mask=False))
    c = dialog.controls
    assert dialog.windowTitle().startswith("Diffusion Colorize")
    assert c.scale_combo.currentData() == 1 and not c.scale_combo.isEnabled()
    assert c.size_label.text().startswith("80 × 64 px")
    assert not c.fidelity_fg.isEnabled() and "no selection" in c.fidelity_fg.toolTip()
    assert c.color_mode.isVisibleTo(dialog) and not c.color_fix.isVisibleTo(dialog)
    assert items(c.model_combo) == [None, "tiny-color"]
    c.color_mode.setCurrentIndex(c.color_mode.findData("normal"))
    request = dialog.request()
    assert request.params["task"] == "colorize" and request.params["scale"] == 1.0
    assert request.options == {"output": "layer", "color_mode": "normal", "model": None}


# --------------------------------------------------------------------------- the request
def test_request_carries_every_parameter(qtbot: Any, server: ServerProcess, tmp_path: Path) -> None:
    dialog = open_dialog(qtbot, make_job(tmp_path / "job", server.url))
    c = dialog.controls
    c.model_combo.setCurrentIndex(c.model_combo.findData("tiny-light"))
    c.scale_combo.setCurrentIndex(c.scale_combo.findData(4))
    c.prompt.setText("  rolling hills, summer  ")
    c.auto_prompt.setChecked(True)
    c.quality_words.setText("sharp")
    c.negative_words.setText("")
    c.steps.setValue(33)
    c.guidance.setValue(5.5)
    c.seed_new.setChecked(True)
    c.seed.setValue(1234)
    c.fidelity_fg.setValue(1.75)
    c.fidelity_bg.slider.setValue(30)  # the slider moves the number with it
    c.process_size.setValue(516)  # not a multiple of 8: the request rounds it down
    c.noise.setValue(750)
    c.tile.setValue(200)
    c.color_fix.setChecked(False)
    c.output.setCurrentIndex(c.output.findData("image"))
    c.words_source.setCurrentIndex(c.words_source.findData("classify"))
    qtbot.waitUntil(lambda: c.faces_panel.state == "none", timeout=30000)  # hills have no faces
    c.foreground.setCurrentIndex(c.foreground.findData("on"))

    request = dialog.request()
    assert request.params == {
        "task": "upscale",
        "scale": 4.0,
        "prompt": "rolling hills, summer",
        "auto_prompt": True,
        "quality_prompt": "sharp",
        "negative_prompt": "",
        "steps": 33,
        "guidance": 5.5,
        "seed": 1234,
        "fidelity_fg": 1.75,
        "fidelity_bg": 0.3,
        "process_size": 512,
        "added_noise_level": 750,
        "color_fix": False,
        "color_fix_method": "wavelet",
        "tile": 200,
        "tile_overlap": 0.25,
        "vae_tile": None,
        "prescaler": None,
        "frame": None,  # Apply: the whole image (previews send their frame)
        # SUPIR's sampler knobs: unset for a model without that sampler
        "guidance_start": None,
        "fidelity_start": None,
        "restoration": None,
        "restoration_fg": 1.0,
        "restoration_bg": 1.0,
        "churn": None,
        "churn_noise": None,
        # the newer knobs, sent when set (a backend from before them takes a run that leaves them)
        "auto_prompt_source": "classify",
        "faces": "on",
        "face_boxes": [],  # faces were looked for, and none is chosen
    }
    assert request.options == {"output": "image", "color_mode": "lch-color", "model": "tiny-light"}
    full = json.loads(json.dumps(RestoreParams.from_dict(request.params).to_dict()))
    assert {k: full[k] for k in request.params} == request.params  # the backend takes it as is
    # Auto tile and the default words.
    c.tile.setValue(c.tile.minimum())
    assert c.tile.text() == "Auto" and dialog.request().params["tile"] is None
    dialog.reset()
    params = dialog.request().params
    assert params["negative_prompt"] == UPSCALE_NEGATIVE_PROMPT and params["steps"] == 20
    assert dialog.request().model is None


def test_presets_set_the_knobs_and_custom_shows_when_changed(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    dialog = open_dialog(qtbot, make_job(tmp_path / "job", server.url, settings={}))
    c = dialog.controls
    assert c.preset.currentText() == "Balanced"
    for preset in PRESETS[:3]:  # Stylize and Fast: tests/test_gui_faces.py
        c.preset.setCurrentIndex(c.preset.findData(preset.name))
        c.preset.activated.emit(c.preset.currentIndex())
        values = dialog.values()
        knobs = (values.steps, values.guidance, values.fidelity_fg, values.fidelity_bg)
        assert knobs == preset.knobs(PASD)
    faithful, balanced, creative = (p.knobs(PASD) for p in PRESETS[:3])
    assert (
        faithful == (15, 4.0, 1.6, 1.4)
        and balanced == (20, 7.5, 1.0, 1.0)
        and creative == (30, 9.0, 0.6, 0.4)
    )
    c.steps.setValue(17)
    assert c.preset.currentText() == "Custom"


def test_choosing_a_model_shows_its_own_settings(
    qtbot: Any, tiny_models: dict[str, Path], tiny_sdxl: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """PASD-SDXL runs with 25 steps, guidance 7, fidelity 0.8 at 1280 px and its own words; picking it
    sets them (a preset stays that preset), picking PASD again brings PASD's back."""
    models = tmp_path_factory.mktemp("two-families")
    for folder in (tiny_models["full"], tiny_sdxl):
        (models / folder.name).symlink_to(folder, target_is_directory=True)
    tmp = tmp_path_factory.mktemp("sdxl-dialog")
    with ServerProcess(models, tmp / "server") as running:
        dialog = open_dialog(qtbot, make_job(tmp / "job", running.url, settings={}))
        c = dialog.controls
        qtbot.waitUntil(lambda: c.model_combo.findData("tiny-sdxl") >= 0, timeout=30000)
        assert c.model_info.text() == "PASD: its settings are 20 steps, guidance 7.5, fidelity 1, 768 px"
        c.model_combo.setCurrentIndex(c.model_combo.findData("tiny-sdxl"))
        c.model_combo.activated.emit(c.model_combo.currentIndex())
        v = dialog.values()
        assert (v.steps, v.guidance, v.fidelity_fg, v.fidelity_bg, v.process_size) == (
            25,
            7.0,
            0.8,
            0.8,
            1280,
        )
        assert c.preset.currentText() == "Balanced" and c.negative_words.text() == SDXL.negative_prompt
        assert c.model_info.text().startswith("PASD-SDXL: its settings are 25 steps, guidance 7")
        params = dialog.request().params
        assert params["quality_prompt"] == SDXL.quality_prompt and params["steps"] == 25
        assert params["added_noise_level"] is None and not c.noise.isEnabled()  # it starts from noise
        # Faithful on SDXL is Faithful of SDXL's settings; back on PASD it is PASD's Faithful.
        c.preset.setCurrentIndex(c.preset.findData("Faithful"))
        c.preset.activated.emit(c.preset.currentIndex())
        v = dialog.values()
        assert (
            (v.steps, v.guidance, v.fidelity_fg, v.fidelity_bg)
            == PRESETS[0].knobs(SDXL)
            == (19, 3.7, 1.3, 1.1)
        )
        c.model_combo.setCurrentIndex(c.model_combo.findData("tiny-full"))
        c.model_combo.activated.emit(c.model_combo.currentIndex())
        v = dialog.values()
        assert (v.steps, v.guidance, v.fidelity_fg, v.fidelity_bg) == (15, 4.0, 1.6, 1.4)
        assert v.process_size == 768 and c.preset.currentText() == "Faithful"
        assert c.model_info.text().startswith("PASD: its settings are 20 steps")
        assert c.negative_words.text() == PASD.negative_prompt
        # Edited words stay the user's when the model changes.
        c.negative_words.setText("fog")
        c.model_combo.setCurrentIndex(c.model_combo.findData("tiny-sdxl"))
        c.model_combo.activated.emit(c.model_combo.currentIndex())
        assert c.negative_words.text() == "fog" and dialog.values().process_size == 1280
        # The Install menu says what each model needs and which one fits this backend (a CPU here).
        qtbot.waitUntil(lambda: c.backend_gpu is not None, timeout=30000)
        offered = {a.data(): a for a in c.install_menu.actions()}
        assert offered["pasd"].text().endswith("— recommended") and "No GPU" in offered["pasd"].toolTip()
        assert "needs about 12 GB GPU" in offered["pasd-sdxl"].text()
        assert "needs about 4 GB GPU" in offered["pasd-light"].text()
        dialog.reject()


# --------------------------------------------------------------------------- settings
def test_settings_are_saved_and_come_back(
    qtbot: Any, server: ServerProcess, tmp_path: Path, user_folders: Path
) -> None:
    job_file = make_job(tmp_path / "job", server.url, settings={})
    first = open_dialog(qtbot, job_file)
    c = first.controls
    c.prompt.setText("a quiet valley")
    c.scale_combo.setCurrentIndex(c.scale_combo.findData(4))
    c.fidelity_fg.setValue(1.5)
    c.fidelity_bg.setValue(0.5)
    c.steps.setValue(12)
    c.guidance.setValue(3.0)
    c.seed.setValue(777)
    c.seed_new.setChecked(True)
    c.tile.setValue(128)
    c.noise.setValue(600)
    c.negative_words.setText("fog")
    c.output.setCurrentIndex(c.output.findData("image"))
    c.advanced.set_open(True)
    saved = first.values()
    qtbot.keyClick(first, Qt.Key.Key_Escape)  # Esc closes (and remembers)
    assert first.result() == QDialog.DialogCode.Rejected
    stored = json.loads((user_folders / "dialog.json").read_text())
    assert stored["upscale"]["prompt"] == "a quiet valley" and stored["upscale"]["negative_prompt"] == "fog"

    second = open_dialog(qtbot, job_file)
    assert second.values() == saved
    assert second.controls.advanced.is_open and second.controls.tile.value() == 128
    assert not Path(DialogJob.read(job_file).result).exists()

    # The host's last values win where it gives them; the new-seed choice stays the user's.
    host = {"prompt": "from GIMP", "seed": -1, "params": {"steps": 9, "negative_prompt": None, "seed": 42}}
    third = open_dialog(qtbot, make_job(tmp_path / "job2", server.url, settings=host))
    values = third.values()
    assert (values.prompt, values.steps, values.seed) == ("from GIMP", 9, 42) and values.new_seed_per_preview
    assert values.negative_prompt is None and values.fidelity_bg == 0.5  # not given: stored
    # A 3× from the plug-in (its argument allows 1 to 4) is offered rather than dropped.
    fourth = open_dialog(qtbot, make_job(tmp_path / "job3", server.url, settings={"scale": 3}))
    assert items(fourth.controls.scale_combo) == [1, 2, 3, 4] and fourth.request().params["scale"] == 3.0


def test_settings_file_survives_bad_content(user_folders: Path) -> None:
    user_folders.mkdir(parents=True)
    (user_folders / "dialog.json").write_text("{not json")
    assert SettingsStore.open().load("upscale").steps == 20
    bad = {"steps": "many", "scale": 5, "guidance": 4, "new_seed_per_preview": 1, "prompt": "ok"}
    (user_folders / "dialog.json").write_text(json.dumps({"version": 1, "upscale": bad}))
    loaded = SettingsStore.open().load("upscale")
    kept = {k: getattr(loaded, k) for k in bad}
    assert kept == {"steps": 20, "scale": 2, "guidance": 4.0, "new_seed_per_preview": False, "prompt": "ok"}
    # The plug-in's argument names are understood too.
    merged = merge_host(DialogSettings(), {"fidelity-fg": 1.2, "noise-level": 500, "tile": 0, "model": ""})
    assert (merged.fidelity_fg, merged.added_noise_level, merged.tile, merged.model) == (1.2, 500, None, None)
    # The plug-in's "the model's own" values (0 / -1) leave the dialog's own values in place.
    own = {"steps": 0, "guidance": -1.0, "fidelity-bg": -1.0, "process-size": 0, "noise-level": -1}
    kept_own = merge_host(DialogSettings(steps=25, guidance=7.0, process_size=1280), own)
    assert (kept_own.steps, kept_own.guidance, kept_own.fidelity_bg, kept_own.process_size) == (
        25,
        7.0,
        1.0,
        1280,
    )
    assert kept_own.added_noise_level == 900


# --------------------------------------------------------------------------- preview
def test_preview_runs_the_crop_and_shows_before_and_after(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    dialog = open_dialog(qtbot, make_job(tmp_path / "job", server.url, size=(144, 192)), crop=96)
    c = dialog.controls
    dialog.resize(1100, 760)
    c.advanced.set_open(True)
    # The frame is at most half of each side of a small image (a Preview costs a quarter of Apply),
    # starts on the selection (rows 36–107, columns 96–171) and follows a drag.
    assert dialog.crop_view.crop == Rect(86, 36, 96, 72)
    before = dialog.crop_view.crop_on_screen().center().toPoint()
    qtbot.mousePress(dialog.crop_view, Qt.MouseButton.LeftButton, pos=before)
    qtbot.mouseMove(dialog.crop_view, before - QPoint(400, 400))
    qtbot.mouseRelease(dialog.crop_view, Qt.MouseButton.LeftButton, pos=before - QPoint(400, 400))
    assert dialog.crop_view.crop == Rect(0, 0, 96, 72)  # dragged past the corner, kept inside
    qtbot.keyClick(dialog.crop_view, Qt.Key.Key_Right)
    for _ in range(5):
        qtbot.keyClick(dialog.crop_view, Qt.Key.Key_Down)
    assert dialog.crop_view.crop == Rect(8, 40, 96, 72)  # over the house
    assert dialog.crop_label.text() == "Frame: 96 × 72 px at 8, 40"
    assert dialog.split_view.before.width() == 192 and dialog.split_view.after.isNull()

    qtbot.mouseClick(dialog.preview_button, Qt.MouseButton.LeftButton)
    assert dialog.running and not dialog.apply_button.isEnabled() and not c.isEnabled()
    qtbot.waitUntil(lambda: not dialog.running, timeout=60000)
    assert dialog.banner.message == ""
    after = dialog.split_view.after
    assert (after.width(), after.height()) == (192, 144)
    assert dialog.progress_label.text().startswith("Preview done")
    job = server.client().job(dialog.job_id or "")
    assert job.state == "succeeded" and job.params["seed"] == c.seed.value()
    # The same request Apply sends, framed: processed as the whole image is, with its noise there.
    sent = {**dialog.request().params, "frame": [8, 40, 192, 144]}
    assert {k: job.params[k] for k in sent} == sent  # (the newer knobs left at their defaults go unsent)
    crop_key = "crop 8,40,96,72"  # previews send only the crop (the whole image went up for faces)
    assert crop_key in dialog.uploads and dialog.uploads["image"] != dialog.uploads[crop_key]
    assert dialog.apply_button.isEnabled() and c.isEnabled()
    dialog.split_view.set_split(0.45)
    # The times Preview and Apply will take, measured by this backend (the module's server has run).
    qtbot.waitUntil(lambda: dialog.estimate_label.text().startswith("Expected: Preview"), timeout=30000)
    assert "loading the model" not in dialog.estimate_label.text()  # the preview has loaded it
    assert " 0 s" not in dialog.estimate_label.text()  # "under 1 s", never "0 s"
    screenshot(dialog, "dialog.png")  # the README's picture
    # Changing a knob marks the after picture as older; moving the crop clears it.
    c.guidance.setValue(9.0)
    assert dialog.split_view.labels == ("Before", "After (earlier settings)")
    qtbot.keyClick(dialog.crop_view, Qt.Key.Key_Left)
    assert dialog.split_view.after.isNull()


def test_apply_keeps_the_previews_seed_and_repeats_its_details(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    """By default Apply runs with the seed the preview showed, and the framed preview had the whole
    run's scale and noise: the applied crop is far closer to the approved preview than another seed's."""
    job_file = make_job(tmp_path / "job", server.url, mask=False, size=(96, 128))
    dialog = open_dialog(qtbot, job_file, crop=64)
    c = dialog.controls
    assert not c.seed_new.isChecked()  # the default: the seed stays
    seed = c.seed.value()
    frame = dialog.crop_view.crop
    assert (frame.width, frame.height) == (64, 48)  # half of each side of this small image
    qtbot.mouseClick(dialog.preview_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.running, timeout=60000)
    assert c.seed.value() == seed
    client = server.client()
    preview_id = dialog.job_id or ""
    preview = np.frombuffer(client.result_image(preview_id).data, np.uint8).reshape(96, 128, 3)
    crop_id = dialog.uploads[f"crop {frame.x},{frame.y},{frame.width},{frame.height}"]
    qtbot.waitUntil(lambda: dialog.estimate_label.text().startswith("Expected: Preview"), timeout=30000)
    assert dialog.estimates is not None
    assert dialog.estimates[1].seconds > dialog.estimates[0].seconds > 0  # Apply: the whole image
    with qtbot.waitSignal(dialog.finished, timeout=120000):
        qtbot.mouseClick(dialog.apply_button, Qt.MouseButton.LeftButton)
    job = DialogJob.read(job_file)
    applied = np.frombuffer(read_npy(job.result).data, np.uint8).reshape(192, 256, 3)
    assert DialogAnswer.read(job.answer).job["seed"] == seed
    part = applied[2 * frame.y : 2 * (frame.y + frame.height), 2 * frame.x : 2 * (frame.x + frame.width)]
    other_job = client.submit(crop_id, {**client.job(preview_id).params, "seed": seed + 1})
    other = np.frombuffer(client.result_image(client.wait(other_job.id).id).data, np.uint8).reshape(
        96, 128, 3
    )
    near = np.abs(preview.astype(float) - part).mean()
    assert near < 0.75 * np.abs(other.astype(float) - part).mean()


# --------------------------------------------------------------------------- the run
def test_full_run_shows_progress_and_writes_result_and_answer(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    job_file = make_job(tmp_path / "job", server.url, settings={"params": {**FAST, "steps": 6}})
    dialog = open_dialog(qtbot, job_file)
    c = dialog.controls
    seen: list[Any] = []
    labels: list[str] = []
    dialog.progressed.connect(lambda job: (seen.append(job), labels.append(dialog.progress_label.text())))
    c.prompt.setFocus()
    with qtbot.waitSignal(dialog.finished, timeout=90000) as finished:
        qtbot.keyClick(c.prompt, Qt.Key.Key_Return)  # Enter = Apply
        assert dialog.running and not c.isEnabled()
    assert finished.args == [QDialog.DialogCode.Accepted]

    fractions = [job.progress.fraction for job in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(", step " in text and " of 6" in text for text in labels), labels
    assert dialog.live_previews >= 1
    job = DialogJob.read(job_file)
    result = read_npy(job.result)
    assert (result.width, result.height, result.channels, result.dtype) == (160, 128, 3, "uint8")
    answer = DialogAnswer.read(job.answer)
    # Every parameter, the newer ones left unsent at their defaults too (the host's last values follow).
    assert answer.params == dialog.request().recorded | {"seed": answer.params["seed"]}
    assert (answer.params["fast"], answer.params["faces"], answer.params["auto_prompt_source"]) == (
        False,
        "auto",
        "caption",
    )
    assert answer.params["steps"] == 6 and answer.job["seed"] == answer.params["seed"]
    assert answer.options == {"output": "layer", "color_mode": "lch-color", "model": None}
    assert answer.job["id"] == dialog.job_id and answer.job["model"] == "tiny-full"
    # Upload once: the whole image and its mask went up once.
    assert set(dialog.uploads) == {"image", "mask"}
    assert server.client().job(answer.job["id"]).state == "succeeded"


def test_cancel_stops_the_backend_job_and_leaves_nothing(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    job_file = make_job(tmp_path / "job", server.url, mask=False)
    dialog = open_dialog(qtbot, job_file)
    c = dialog.controls
    c.steps.setValue(200)  # long enough to be caught running
    c.process_size.setValue(512)
    watcher, job_id = press_apply(qtbot, dialog, server.url)
    qtbot.waitUntil(lambda: watcher.job(job_id).progress.stage == "denoise", timeout=60000)
    assert dialog.cancel_button.text() == "&Stop"
    qtbot.mouseClick(dialog.cancel_button, Qt.MouseButton.LeftButton)  # stops the run, keeps the dialog
    wait_for(lambda: watcher.job(job_id).state == "canceled", timeout=30)
    qtbot.waitUntil(lambda: not dialog.running, timeout=30000)
    assert dialog.isVisible() and c.isEnabled() and dialog.apply_button.isEnabled()
    assert dialog.cancel_button.text() == "&Cancel"
    assert watcher.job(job_id).progress.step < 200
    job = DialogJob.read(job_file)
    with qtbot.waitSignal(dialog.finished) as finished:
        qtbot.keyClick(dialog, Qt.Key.Key_Escape)  # now Esc closes
    assert finished.args == [QDialog.DialogCode.Rejected]
    assert not Path(job.result).exists() and not Path(job.answer).exists()
    assert sorted(p.name for p in Path(job.result).parent.iterdir()) == ["image.npy", "job.json"]


def test_when_the_plugin_ends_the_dialog_stops_its_job_and_closes(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    """GIMP's Cancel kills the plug-in outright: the dialog notices, cancels its job, delivers nothing."""
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        job_file = make_job(
            tmp_path / "job",
            server.url,
            settings={"params": {"steps": 200, "process_size": 512}},
            host_pid=host.pid,
            stop=str(tmp_path / "job" / "stop"),
        )
        dialog = open_dialog(qtbot, job_file)
        watcher, job_id = press_apply(qtbot, dialog, server.url)
        started = time.monotonic()
        with qtbot.waitSignal(dialog.finished, timeout=30000) as finished:
            host.kill()
            host.wait()  # reaped, as GIMP reaps its plug-ins; a zombie counts as ended too
        assert time.monotonic() - started < 10
        assert finished.args == [QDialog.DialogCode.Rejected] and dialog.host_gone
        wait_for(lambda: watcher.job(job_id).state == "canceled", timeout=30)
        assert not job_file.parent.exists()  # the dead host's run folder: nobody else would remove it
    finally:
        host.kill()
        host.wait()


def test_a_stopped_preview_is_labelled_stopped_not_live(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    dialog = open_dialog(qtbot, make_job(tmp_path / "job", server.url, mask=False))
    dialog.controls.steps.setValue(200)
    dialog.controls.process_size.setValue(512)
    qtbot.mouseClick(dialog.preview_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.live_previews > 0, timeout=60000)
    assert dialog.split_view.after_label == "Live"
    qtbot.mouseClick(dialog.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.running, timeout=30000)
    assert dialog.split_view.after_label == "Stopped"


def test_closing_the_window_during_a_run_cancels_it(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    job_file = make_job(
        tmp_path / "job", server.url, settings={"params": {"steps": 200, "process_size": 512}}
    )
    dialog = open_dialog(qtbot, job_file)
    watcher, job_id = press_apply(qtbot, dialog, server.url)
    with qtbot.waitSignal(dialog.finished, timeout=30000) as finished:
        dialog.close()  # the window's close button: stop the job first, then close
    assert finished.args == [QDialog.DialogCode.Rejected]
    assert watcher.job(job_id).state == "canceled"
    job = DialogJob.read(job_file)
    assert not Path(job.result).exists() and not Path(job.answer).exists()


def test_install_downloads_a_model_and_shows_its_progress(qtbot: Any, tmp_path: Path) -> None:
    """Install… starts the backend's download (from a fake hub) and offers the model once it is in."""
    from .fake_hub import FakeHub
    from .test_download import make_repos

    models = tmp_path / "models"
    models.mkdir()
    env = {"HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home")}
    with (
        FakeHub(make_repos(tmp_path)) as hub,
        ServerProcess(models, tmp_path, env={**env, "HF_ENDPOINT": hub.url}) as running,
    ):
        dialog = open_dialog(qtbot, make_job(tmp_path / "job", running.url, mask=False))
        c = dialog.controls
        assert c.model_combo.itemText(0).startswith("No model installed")
        assert "Install" in dialog.banner.message
        offered = {action.data(): action for action in c.install_menu.actions()}
        assert {"pasd", "pasd-light"} <= set(offered) and "pasd-color" not in offered  # this task's only
        assert "GB" in offered["pasd"].text()
        # Gigabytes are not fetched on one click: first No (nothing starts), then Yes.
        answers: list[str] = []

        def answer(button: QMessageBox.StandardButton) -> None:
            box = QApplication.activeModalWidget()
            assert isinstance(box, QMessageBox), box
            answers.append(box.text())
            box.button(button).click()

        QTimer.singleShot(200, lambda: answer(QMessageBox.StandardButton.No))
        offered["pasd"].trigger()
        assert answers and "GB" in answers[0] and "licence" in answers[0]
        assert not c.download_bar.isVisibleTo(dialog) and dialog._download is None
        QTimer.singleShot(200, lambda: answer(QMessageBox.StandardButton.Yes))
        offered["pasd"].trigger()
        assert c.download_bar.isVisibleTo(dialog) and not c.install_button.isEnabled()
        qtbot.waitUntil(lambda: c.model_combo.findData("pasd") >= 0, timeout=120000)
        assert c.model_combo.currentData() == "pasd"
        assert not c.download_bar.isVisibleTo(dialog)
        assert dialog.banner.message == "Installed the model pasd."
        assert "pasd" not in {action.data() for action in c.install_menu.actions()}


def test_supir_shows_its_sampler_its_presets_and_its_terms_before_download(
    qtbot: Any, tiny_models: dict[str, Path], tiny_supir: Path, tmp_path: Path
) -> None:
    """With a SUPIR model chosen, Advanced shows SUPIR's sampler knobs and its README presets, and
    the request carries them; Install… shows SUPIR's non-commercial terms first: declining fetches
    nothing, accepting downloads it (from a fake hub) and offers it."""
    from .fake_hub import FakeHub
    from .test_supir import _supir_repos

    models = tmp_path / "models"
    models.mkdir()
    for folder in (tiny_models["full"], tiny_supir):
        (models / folder.name).symlink_to(folder, target_is_directory=True)
    env = {"HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home")}
    with (
        FakeHub(_supir_repos(tmp_path, tiny_supir)) as hub,
        ServerProcess(models, tmp_path, env={**env, "HF_ENDPOINT": hub.url}) as running,
    ):
        dialog = open_dialog(qtbot, make_job(tmp_path / "job", running.url, settings={}))
        c = dialog.controls
        qtbot.waitUntil(lambda: c.model_combo.findData("tiny-supir") >= 0, timeout=30000)
        assert not c.advanced_form.isRowVisible(c.churn)  # PASD: no such sampler
        assert c.advanced_form.isRowVisible(c.restoration)  # restoration guidance: every model
        c.model_combo.setCurrentIndex(c.model_combo.findData("tiny-supir"))
        c.model_combo.activated.emit(c.model_combo.currentIndex())
        assert c.advanced_form.isRowVisible(c.restoration) and c.advanced_form.isRowVisible(c.churn)
        assert c.model_info.text().startswith("SUPIR: its settings are 50 steps, guidance 4")
        v = dialog.values()
        assert (v.steps, v.guidance, v.guidance_start, v.churn, v.churn_noise, v.restoration) == (
            50, 4.0, 1.0, 5.0, 1.01, 0.0,
        )  # fmt: skip
        c.supir_presets["Quality"].click()
        v = dialog.values()
        assert (v.guidance, v.guidance_start, v.churn_noise, v.fidelity_bg) == (6.0, 3.0, 1.02, 0.93)
        c.restoration.setValue(4.0)
        c.restoration_bg.setValue(0.5)
        c.fidelity_start.setValue(0.3)
        params = dialog.request().params
        assert (params["guidance"], params["guidance_start"], params["restoration"]) == (6.0, 3.0, 4.0)
        assert (params["restoration_bg"], params["fidelity_start"], params["churn_noise"]) == (0.5, 0.3, 1.02)
        c.advanced.set_open(True)
        qtbot.wait(200)
        from PySide6.QtWidgets import QScrollArea

        area = dialog.findChild(QScrollArea)
        if area is not None:  # scrolled to SUPIR's rows at the end of Advanced
            area.verticalScrollBar().setValue(area.verticalScrollBar().maximum())
        qtbot.wait(100)
        screenshot(dialog, "dialog-supir.png")  # README shows it
        c.restoration.setValue(0.0)
        assert dialog.request().params["restoration"] is None and c.restoration.text() == "Off"

        offered = {action.data(): action for action in c.install_menu.actions()}
        assert {"supir-v0q", "supir-v0f"} <= set(offered)
        assert "accepted" in offered["supir-v0q"].toolTip()
        shown: list[str] = []

        def answer(accept: bool) -> None:
            box = QApplication.activeModalWidget()
            assert isinstance(box, QMessageBox), box
            shown.append(box.text() + "\n" + box.informativeText())
            button = next(b for b in box.buttons() if "accept" in b.text().lower()) if accept else None
            (button or box.button(QMessageBox.StandardButton.Cancel)).click()

        QTimer.singleShot(200, lambda: answer(False))
        offered["supir-v0q"].trigger()
        assert shown and "NON-COMMERCIAL" in shown[0] and dialog._download is None
        assert not hub.fetched()
        QTimer.singleShot(200, lambda: answer(True))
        offered["supir-v0q"].trigger()
        qtbot.waitUntil(lambda: c.model_combo.findData("supir-v0q") >= 0, timeout=120000)
        assert dialog.banner.message == "Installed the model supir-v0q."
        assert any(f.endswith("SUPIR-v0Q_fp16.safetensors") for f in hub.fetched())


def test_an_offline_install_fails_in_one_sentence_with_the_manual_way(qtbot: Any, tmp_path: Path) -> None:
    from PySide6.QtCore import QObject, Slot
    from PySide6.QtGui import QDesktopServices

    class Opened(QObject):
        def __init__(self) -> None:
            super().__init__()
            self.urls: list[str] = []

        @Slot("QUrl")
        def open(self, url: Any) -> None:
            self.urls.append(url.toLocalFile())

    models = tmp_path / "models"
    models.mkdir()
    offline = {"HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home"),
               "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}  # fmt: skip
    with ServerProcess(models, tmp_path, env=offline) as running:
        dialog = open_dialog(qtbot, make_job(tmp_path / "job", running.url, mask=False))
        c = dialog.controls
        offered = {action.data(): action for action in c.install_menu.actions()}

        def yes() -> None:
            box = QApplication.activeModalWidget()
            assert isinstance(box, QMessageBox), box
            box.button(QMessageBox.StandardButton.Yes).click()

        QTimer.singleShot(200, yes)
        offered["pasd-light"].trigger()
        qtbot.waitUntil(lambda: dialog._download is None, timeout=120000)
        text = dialog.banner.text.text()
        assert "cannot be reached" in text and "Errno" not in text
        assert text.startswith("The download of pasd-light failed (") and "\n" not in text and len(text) < 260
        assert dialog.banner.details.text() == "" and "Traceback" not in dialog.banner.message
        manual = next(b for b in dialog.banner.buttons if "Manual" in b.text())
        opened = Opened()
        QDesktopServices.setUrlHandler("file", opened, "open")
        try:
            qtbot.mouseClick(manual, Qt.MouseButton.LeftButton)
        finally:
            QDesktopServices.unsetUrlHandler("file")
        assert opened.urls == [str(ROOT / "README.md")]
        assert "## Models" in (ROOT / "README.md").read_text()


def test_backend_errors_show_in_plain_words(qtbot: Any, server: ServerProcess, tmp_path: Path) -> None:
    dialog = open_dialog(qtbot, make_job(tmp_path / "job", server.url, mask=False))
    c = dialog.controls
    c.model_combo.addItem("gone", "no-such-model")  # e.g. a model removed since the list was made
    c.model_combo.setCurrentIndex(c.model_combo.count() - 1)
    qtbot.mouseClick(dialog.preview_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.running, timeout=30000)
    message = dialog.banner.message
    assert "chosen model is not installed" in message and "Install…" in message and "Traceback" not in message
    assert not any(words in message for words in ("HTTP", "python -m", "POST", "--"))
    assert dialog.isVisible() and dialog.apply_button.isEnabled()


# --------------------------------------------------------------------------- backend down
def test_a_local_backend_that_is_down_starts_by_itself(
    qtbot: Any, tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    url = f"http://127.0.0.1:{free_port()}"
    job_file = make_job(
        tmp_path / "job", url, python=sys.executable, models=str(tiny_models["full"].parent), mask=False
    )
    dialog = open_dialog(qtbot, job_file, connected=False)
    try:
        qtbot.waitUntil(lambda: dialog.status.state == "starting", timeout=15000)
        assert "Starting the backend" in dialog.status.text.text()
        assert not dialog.apply_button.isEnabled() and not dialog.preview_button.isEnabled()
        qtbot.waitUntil(lambda: dialog.status.state == "connected", timeout=120000)
        assert dialog.spawned is not None and not dialog.banner.isVisible()
        assert dialog.status.text.text().startswith("Connected: CPU")
        qtbot.waitUntil(lambda: dialog.models_loaded, timeout=30000)
        assert dialog.apply_button.isEnabled()
        # A fresh backend has no measured speed yet: the relative cost, and no invented seconds.
        qtbot.waitUntil(lambda: "the work of a Preview" in dialog.estimate_label.text(), timeout=30000)
        assert " s," not in dialog.estimate_label.text()
        assert Client(url).health().log_file == str(tmp_path / "logs" / f"server-{url.rsplit(':', 1)[1]}.log")
    finally:
        if dialog.spawned is not None:
            dialog.spawned.terminate()
            dialog.spawned.wait(30)


def test_a_missing_model_folder_is_named_not_offered_for_download(
    qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unplugged drive is not "no model installed": the dialog names the folder that is gone."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    gone = tmp_path / "unplugged-drive" / "models"
    with ServerProcess(gone, tmp_path / "server") as running:
        dialog = open_dialog(qtbot, make_job(tmp_path / "job", running.url, mask=False))
        message = dialog.banner.message
        assert f"The model folder {gone} does not exist" in message and "connect the drive" in message
        assert "Install" not in message


def test_another_program_on_the_port_is_named_without_its_html(qtbot: Any, tmp_path: Path) -> None:
    from .service_server import Squatter

    squatter = Squatter(b"<html><body><h1>Another web app</h1></body></html>")
    try:
        dialog = open_dialog(qtbot, make_job(tmp_path / "job", squatter.url, mask=False), connected=False)
        qtbot.waitUntil(lambda: dialog.status.state == "unreachable", timeout=15000)
        text = dialog.status.text.text()
        assert "is not your GIMP Diffusion Upscale backend" in text and "another port" in text
        assert "<html" not in text and "<html" not in dialog.banner.message
        assert not dialog.status.start.isVisibleTo(dialog)  # starting one could not help
        assert dialog.spawned is None and b"Authorization" not in bytes(squatter.received)
    finally:
        squatter.close()


def test_restart_backend_stops_it_and_starts_it_again(
    qtbot: Any, tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running backend with stale settings: Restart stops it and starts one with the current ones."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    models = str(tiny_models["full"].parent)
    with ServerProcess(Path(tmp_path / "old-models"), tmp_path / "old") as running:
        job_file = make_job(tmp_path / "job", running.url, python=sys.executable, models=models, mask=False)
        dialog = open_dialog(qtbot, job_file)  # connected, but to a server without our models
        assert not items(dialog.controls.model_combo) or None in items(dialog.controls.model_combo)
        assert dialog.status.restart.isVisibleTo(dialog)
        try:
            qtbot.mouseClick(dialog.status.restart, Qt.MouseButton.LeftButton)
            qtbot.waitUntil(lambda: running.process.poll() is not None, timeout=60000)  # type: ignore[union-attr]
            qtbot.waitUntil(
                lambda: dialog.status.state == "connected" and dialog.spawned is not None, timeout=120000
            )
            qtbot.waitUntil(
                lambda: dialog.models_loaded and "tiny-full" in items(dialog.controls.model_combo),
                timeout=60000,
            )
            assert dialog.apply_button.isEnabled()
        finally:
            if dialog.spawned is not None:
                dialog.spawned.terminate()
                dialog.spawned.wait(30)


def test_a_backend_that_cannot_start_says_so_and_start_stays_available(qtbot: Any, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    job_file = make_job(tmp_path / "job", url, python=str(tmp_path / "no-python"), mask=False)
    dialog = open_dialog(qtbot, job_file, connected=False)
    qtbot.waitUntil(lambda: dialog.status.state == "unreachable", timeout=30000)
    assert f"Backend unreachable at {url}" in dialog.status.text.text()
    assert "could not start" in dialog.banner.message and "does not exist" in dialog.banner.message
    assert "installer" in dialog.banner.message and "Errno" not in dialog.banner.message
    assert dialog.status.start.isVisibleTo(dialog) and dialog.status.start.isEnabled()
    assert str(tmp_path / "logs") in dialog.status.log.text()
    assert not dialog.apply_button.isEnabled() and not dialog.preview_button.isEnabled()


def test_a_backend_that_fails_to_start_shows_its_own_last_lines_and_the_next_step(
    qtbot: Any, tmp_path: Path
) -> None:
    """Not "see the log": the starting process's own output, laid out, and the doctor's exact command."""
    broken = tmp_path / "env" / "bin" / "python"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        "#!/bin/sh\necho 'Traceback (most recent call last):' >&2\n"
        "echo 'ImportError: libtorch_cpu.so: cannot open shared object file' >&2\nexit 1\n"
    )
    broken.chmod(0o755)
    url = f"http://127.0.0.1:{free_port()}"
    dialog = open_dialog(
        qtbot, make_job(tmp_path / "job", url, python=str(broken), mask=False), connected=False
    )
    qtbot.waitUntil(lambda: dialog.status.state == "unreachable", timeout=30000)
    banner = dialog.banner
    assert banner.text.text() == "The backend stopped while starting (exit code 1). Its last words:"
    assert banner.details.text().splitlines() == [
        "Traceback (most recent call last):",
        "ImportError: libtorch_cpu.so: cannot open shared object file",
    ]
    assert f'"{broken}" -m backend doctor' in banner.after.text() and "installer" in banner.after.text()
    assert banner.message.count("ImportError") == 1 and "ImportError" not in dialog.status.text.text()
    assert dialog.status.start.isEnabled()


def test_the_dialog_says_which_image_it_works_on_and_stays_above_its_host(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    about = "“hills.xcf”, layer “Background”: the whole layer, 80 × 64 px"
    job_file = make_job(
        tmp_path / "job", server.url, mask=False, about=about, host_pid=os.getpid(),
        window={"system": "x11", "id": 4242},
    )  # fmt: skip
    dialog = open_dialog(qtbot, job_file)
    assert dialog.about.text() == about and dialog.about.isVisible()
    assert "hills.png" in dialog.windowTitle()
    # No foreign windows on this platform (offscreen): kept on top instead.
    assert dialog.kept_with == "on top"
    assert dialog.windowFlags() & Qt.WindowType.WindowStaysOnTopHint
    plain = open_dialog(qtbot, make_job(tmp_path / "file", server.url, mask=False))
    assert plain.kept_with == "" and not plain.windowFlags() & Qt.WindowType.WindowStaysOnTopHint


def test_a_stop_from_the_host_cancels_the_run_and_closes(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    """The plug-in writes its stop file (the image was closed in GIMP): job canceled, nothing written."""
    job_file = make_job(
        tmp_path / "job", server.url, mask=False, settings={"params": {"steps": 200, "process_size": 512}},
        host_pid=os.getpid(), stop=str(tmp_path / "job" / "stop"),
    )  # fmt: skip
    dialog = open_dialog(qtbot, job_file)
    watcher, job_id = press_apply(qtbot, dialog, server.url)
    with qtbot.waitSignal(dialog.finished, timeout=30000) as finished:
        (tmp_path / "job" / "stop").write_text("the image was closed in GIMP")
    assert (
        finished.args == [QDialog.DialogCode.Rejected]
        and dialog.stop_reason == "the image was closed in GIMP"
    )
    wait_for(lambda: watcher.job(job_id).state == "canceled", timeout=30)
    assert not (tmp_path / "job" / "answer.json").exists() and not (tmp_path / "job" / "result.npy").exists()


def kept_result(tmp_path: Path, key: str, pixels: np.ndarray) -> Any:
    """A finished run whose host never received it, filed the way the plug-in's sweep files it."""
    from backend.client import Handoff

    handoff = Handoff(tmp_path / "handoff")
    run = handoff.new_run()
    write_npy(run / "result.npy", raw(pixels))
    DialogAnswer(
        {"task": "upscale", "scale": 2.0, "seed": 77}, {"output": "layer"}, {"id": "j1", "seed": 77}
    ).write(run / "answer.json")
    (run / "job.json").write_text(json.dumps({"host_pid": 0, "key": key, "title": "hills.png"}))
    assert handoff.sweep() == [handoff.kept / key] and not run.exists()
    return handoff


def test_an_undelivered_result_is_offered_again_and_added(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    key = "ab" * 16
    pixels = picture(128, 160)
    handoff = kept_result(tmp_path, key, pixels)
    job_file = make_job(
        tmp_path / "job", server.url, mask=False, key=key, undelivered=str(handoff.kept / key)
    )
    dialog = open_dialog(qtbot, job_file)
    assert "was never added" in dialog.banner.message and "seed 77" in dialog.banner.message
    add = next(b for b in dialog.banner.buttons if "Add" in b.text())
    with qtbot.waitSignal(dialog.finished) as finished:
        qtbot.mouseClick(add, Qt.MouseButton.LeftButton)
    assert finished.args == [QDialog.DialogCode.Accepted]
    job = DialogJob.read(job_file)
    assert np.array_equal(np.frombuffer(read_npy(job.result).data, np.uint8).reshape(128, 160, 3), pixels)
    answer = DialogAnswer.read(job.answer)
    assert answer.job["seed"] == 77 and answer.job["undelivered"] == key


def test_an_undelivered_result_can_be_discarded(qtbot: Any, server: ServerProcess, tmp_path: Path) -> None:
    key = "cd" * 16
    handoff = kept_result(tmp_path, key, picture(128, 160))
    job_file = make_job(
        tmp_path / "job", server.url, mask=False, key=key, undelivered=str(handoff.kept / key)
    )
    dialog = open_dialog(qtbot, job_file)
    discard = next(b for b in dialog.banner.buttons if "Discard" in b.text())
    qtbot.mouseClick(discard, Qt.MouseButton.LeftButton)
    assert not (handoff.kept / key).exists() and not dialog.banner.isVisible() and dialog.isVisible()


# --------------------------------------------------------------------------- the entry point
def test_entry_point_applies_in_a_subprocess(server: ServerProcess, tmp_path: Path) -> None:
    job_file = make_job(tmp_path / "job", server.url)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "GDU_CONFIG_DIR": str(tmp_path / "config")}
    done = subprocess.run(
        [sys.executable, "-m", "gui", "--job", str(job_file), "--press", "apply"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == DIALOG_EXIT_APPLIED, done.stderr
    job = DialogJob.read(job_file)
    result = read_npy(job.result)
    assert (result.width, result.height) == (160, 128)
    answer = DialogAnswer.read(job.answer)
    assert answer.params["steps"] == 2 and answer.params["process_size"] == 256
    assert (tmp_path / "config" / "dialog.json").exists()


def test_entry_point_cancel_and_bad_usage(
    qtbot: Any, server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_file = make_job(tmp_path / "job", server.url)
    assert main(["--job", str(job_file), "--press", "cancel"]) == DIALOG_EXIT_CANCELED
    assert sorted(p.name for p in job_file.parent.iterdir()) == ["image.npy", "job.json", "mask.npy"]
    assert main([]) == 2
    assert main(["--job", str(job_file), "picture.png"]) == 2
    assert main(["--job", str(tmp_path / "missing.json")]) == 1
    assert "Cannot read the job file" in capsys.readouterr().err
    (job_file.parent / "image.npy").write_bytes(b"not an image")
    assert main(["--job", str(job_file)]) == 1
    assert "Cannot read the image" in capsys.readouterr().err


def test_file_mode_writes_beside_the_input(
    qtbot: Any, server: ServerProcess, tmp_path: Path, user_folders: Path
) -> None:
    from backend.image_io import read_image, write_image

    source = tmp_path / "hills.png"
    write_image(source, picture())
    mask = np.zeros((64, 80), np.uint8)
    mask[10:30, 10:30] = 255
    write_image(tmp_path / "selection.png", mask)
    store = SettingsStore.open()
    store.put("upscale", DialogSettings(steps=2, process_size=256, scale=4))  # last time's settings
    store.save()
    code = main(
        [str(source), "--mask", str(tmp_path / "selection.png"), "--server", server.url, "--press", "apply"]
    )
    assert code == DIALOG_EXIT_APPLIED
    written = read_image(tmp_path / "hills-upscaled-4x.png")
    assert written.shape == (256, 320, 3) and written.dtype == np.uint8
    # -o refuses to overwrite unless told to.
    assert main([str(source), "-o", str(tmp_path / "hills-upscaled-4x.png")]) == 2


def test_the_dialog_does_not_import_torch() -> None:
    """The dialog starts fast: its import path (client, params, settings, Qt) stays clear of torch."""
    code = "import sys, gui.app; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    helped = subprocess.run([sys.executable, "-m", "gui", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert helped.returncode == 0 and "--job FILE" in helped.stdout
