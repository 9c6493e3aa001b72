"""The dialog's faces, styles, fast mode and prompt-word source, against a real backend (tiny models).

Faces are found by the backend in a real portrait (scikit-image's astronaut), drawn over the image and
chosen in the dialog; what is chosen is what previews and Apply send. Styles are tiny SD1.5 files in
the server's ``models/styles`` folder; the fast mode's LCM-LoRA is a tiny one written into its model
folder while a test runs. An "old backend" is the real one without its ``/v1/faces`` route.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before any QApplication exists
pytest.importorskip("pytestqt", reason="the dialog's tests need pytest-qt (and PySide6)")

import numpy as np
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import QDialog

from backend import image_ops
from backend.client import DialogAnswer, DialogJob, write_npy
from backend.face_box import Face
from backend.models.registry import FAMILIES
from backend.pipelines.params import FAST_GUIDANCE, FAST_STEPS
from gui.faces import NONE_FOUND, UNAVAILABLE
from gui.imaging import Rect
from gui.settings import PRESETS, DialogSettings, light_model, merge_host, preset_named

from . import test_gui
from .conftest import screenshot
from .service_server import ServerProcess
from .test_gui import items, open_dialog, raw

PASD = FAMILIES["pasd"].defaults["upscale"]
QUICK = {"params": {"steps": 2, "process_size": 256}}
FACE = [88, 32, 50, 50]  # where the backend's detector finds the astronaut's face at 256 × 256
user_folders = test_gui.user_folders  # autouse: the real user's settings are never read or written


def portrait() -> np.ndarray:
    """scikit-image's astronaut (a real photograph with one frontal face), 256 × 256."""
    from skimage.data import astronaut
    from skimage.transform import resize

    return (resize(astronaut(), (256, 256), anti_aliasing=True) * 255).round().astype(np.uint8)


def portrait_job(
    folder: Path, server: str, mask: bool = False, settings: dict[str, Any] | None = None, **extra: Any
) -> Path:
    """What the plug-in writes for the portrait: image.npy (+ a selection over the rocket, lower left)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_npy(folder / "image.npy", raw(portrait()))
    if mask:
        selection = np.zeros((256, 256), np.uint8)
        selection[150:250, 10:110] = 255
        write_npy(folder / "mask.npy", raw(selection))
    job = DialogJob(
        task="upscale",
        image=str(folder / "image.npy"),
        mask=str(folder / "mask.npy") if mask else None,
        result=str(folder / "result.npy"),
        answer=str(folder / "answer.json"),
        server=server,
        title="astronaut.png",
        settings=QUICK if settings is None else settings,
        **extra,
    )
    job.write(folder / "job.json")
    return folder / "job.json"


def choose(combo: Any, data: Any) -> None:
    """Pick an entry as a user does (the combo's activated signal follows the change)."""
    combo.setCurrentIndex(combo.findData(data))
    combo.activated.emit(combo.currentIndex())


def found(qtbot: Any, dialog: Any) -> Any:
    panel = dialog.controls.faces_panel
    qtbot.waitUntil(lambda: panel.state not in ("waiting", "searching"), timeout=30000)
    return panel


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path], tiny_sdxl: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PASD full and light, a PASD-SDXL, and two styles (a checkpoint and a LoRA) in models/styles."""
    from backend.models.pasd.tiny_style import write_style_files

    root = tmp_path_factory.mktemp("faces-models")
    for folder in (tiny_models["full"], tiny_models["light"], tiny_sdxl):
        (root / folder.name).symlink_to(folder, target_is_directory=True)
    files = write_style_files(tmp_path_factory.mktemp("style-files"), tiny_models["full"])
    (root / "styles").mkdir()
    shutil.copy(files.checkpoint, root / "styles" / "Portrait.safetensors")
    shutil.copy(files.lora, root / "styles" / "film-grain.safetensors")
    return root


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(models, tmp_path_factory.mktemp("faces-server")) as running:
        yield running


# --------------------------------------------------------------------------- faces
def test_faces_are_found_drawn_chosen_and_sent_by_preview_and_apply(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    job_file = portrait_job(tmp_path / "job", server.url)
    dialog = open_dialog(qtbot, job_file, crop=96)
    dialog.resize(1100, 860)
    c = dialog.controls
    panel = found(qtbot, dialog)
    # The backend's detector finds the face; the list names it, the picture outlines it.
    assert panel.state == "found" and [f.box() for f in panel.faces] == [tuple(FACE)]
    assert panel.list.count() == 1 and panel.list.item(0).text() == "Face 1 (50×50)"
    assert dialog.crop_view.faces == panel.faces and panel.on == (True,)
    # The outline is the ellipse the backend gives the fidelity, where the image is drawn.
    ellipse = dialog.crop_view.face_on_screen(0)
    target = dialog.crop_view.image_on_screen()
    factor = target.width() / 256
    cx, cy = 88 + 25, 32 + 25 - 0.08 * 50
    assert ellipse.center().x() == pytest.approx(target.x() + cx * factor)
    assert ellipse.center().y() == pytest.approx(target.y() + cy * factor)
    assert (ellipse.width(), ellipse.height()) == pytest.approx(
        (2 * 0.62 * 50 * factor, 2 * 0.8 * 50 * factor)
    )
    view = dialog.crop_view
    drawn = view.grab().toImage()
    rim = QPoint(round(ellipse.center().x()), round(ellipse.top()))
    shown = (view.faces, view.faces_on, view.faces_used)
    view.set_faces((), (), False)
    bare = view.grab().toImage()
    view.set_faces(*shown)
    assert drawn.pixelColor(rim) != bare.pixelColor(rim)  # the rim is drawn over the picture

    # Automatically (the default), without a selection, faces become the foreground once the two
    # fidelities differ: then the chosen face is sent, in the whole image's pixels.
    assert c.foreground.currentData() == "auto" and c.fidelity_fg.isEnabled()  # a face to give it to
    assert "face_boxes" not in dialog.request().params and "once it differs" in panel.status
    c.fidelity_fg.setValue(1.5)
    assert (
        dialog.request().params["face_boxes"] == [FACE]
        and panel.status == "1 of 1 face gets the foreground fidelity."
    )
    choose(c.foreground, "on")
    params = dialog.request().params
    assert params["faces"] == "on" and params["face_boxes"] == [FACE]
    # A click on the ellipse switches the face off (and the list follows); the request sends none.
    qtbot.mouseClick(dialog.crop_view, Qt.MouseButton.LeftButton, pos=ellipse.center().toPoint())
    assert panel.on == (False,) and panel.list.item(0).checkState() == Qt.CheckState.Unchecked
    assert dialog.request().params["face_boxes"] == [] and dialog.crop_view.faces_on == (False,)
    assert dialog.crop_view.crop == Rect(80, 80, 96, 96)  # a click on a face does not move the frame
    panel.list.item(0).setCheckState(Qt.CheckState.Checked)  # the list switches it back on
    assert dialog.request().params["face_boxes"] == [FACE] and dialog.crop_view.faces_on == (True,)
    choose(c.foreground, "off")  # Selection: no faces, whatever is ticked
    assert dialog.request().params["faces"] == "off" and "face_boxes" not in dialog.request().params
    choose(c.foreground, "on")
    dialog.crop_view.set_crop(Rect(64, 8, 96, 96))  # the frame over the face
    c.foreground.setFocus()
    screenshot(dialog, "dialog-faces.png")  # for the README

    # A preview of the frame sends the same face, in the whole image's pixels.
    image_id = dialog.uploads["image"]  # sent once, to look for faces
    qtbot.mouseClick(dialog.preview_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.running, timeout=60000)
    assert dialog.banner.message == ""
    job = server.client().job(dialog.job_id or "")
    assert job.state == "succeeded" and job.params["frame"] == [64, 8, 256, 256]
    assert job.params["faces"] == "on" and job.params["face_boxes"] == [FACE]
    assert [f["width"] for f in (job.result or {})["faces"]] == [50]  # the face was the foreground
    # Apply sends it too, reuses the upload, and the answer records what ran.
    with qtbot.waitSignal(dialog.finished, timeout=120000) as finished:
        qtbot.mouseClick(dialog.apply_button, Qt.MouseButton.LeftButton)
    assert finished.args == [QDialog.DialogCode.Accepted]
    assert dialog.uploads["image"] == image_id
    answer = DialogAnswer.read(DialogJob.read(job_file).answer)
    assert answer.params["faces"] == "on" and answer.params["face_boxes"] == [FACE]
    assert answer.params["fidelity_fg"] == 1.5 and answer.job["faces"][0]["x"] == FACE[0]


def test_faces_switched_off_stay_off_and_a_selection_keeps_them_out(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    dialog = open_dialog(qtbot, portrait_job(tmp_path / "job", server.url, mask=True))
    c = dialog.controls
    panel = found(qtbot, dialog)
    assert panel.state == "found" and c.fidelity_fg.isEnabled()
    # Automatically, with a selection: the selection is the foreground; the faces are not sent.
    c.fidelity_fg.setValue(1.5)
    assert "face_boxes" not in dialog.request().params and "selection is the foreground" in panel.status
    assert dialog.crop_view.faces_used is False  # drawn dashed: not used
    choose(c.foreground, "off")  # "Selection"
    assert dialog.request().params["faces"] == "off" and "face_boxes" not in dialog.request().params
    choose(c.foreground, "on")  # the faces join the selection
    assert dialog.request().params["face_boxes"] == [FACE] and dialog.crop_view.faces_used
    panel.toggle(0)
    assert dialog.request().params["face_boxes"] == []
    # Switched-off faces stay off while the dialog is open: a Reset or another choice keeps them.
    dialog.reset()
    choose(c.foreground, "on")
    assert panel.on == (False,) and dialog.request().params["face_boxes"] == []


def test_no_faces_found_is_said_in_the_list_area(qtbot: Any, server: ServerProcess, tmp_path: Path) -> None:
    folder = tmp_path / "job"
    job_file = portrait_job(folder, server.url)
    flat = np.full((96, 128, 3), 128, np.uint8)
    write_npy(folder / "image.npy", raw(flat))
    dialog = open_dialog(qtbot, job_file)
    panel = found(qtbot, dialog)
    c = dialog.controls
    assert panel.state == "none" and panel.status == NONE_FOUND and not panel.list.isVisibleTo(dialog)
    assert not c.fidelity_fg.isEnabled() and "no selection" in c.fidelity_fg.toolTip()
    choose(c.foreground, "on")  # faces looked for and none chosen: the backend looks for none either
    assert dialog.request().params["face_boxes"] == []


def test_an_old_backend_without_face_detection_leaves_the_dialog_usable(
    qtbot: Any, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """The backend of before /v1/faces: detection is said to be missing, and previews still run."""
    old = ServerProcess(tiny_models["full"].parent, tmp_path / "old")
    without_faces = (
        "import sys, backend.service.app as app\n"
        "made = app.create_app\n"
        "def create_app(*args, **kwargs):\n"
        "    made_app = made(*args, **kwargs)\n"
        "    routes = made_app.router.routes\n"
        "    made_app.router.routes = [r for r in routes if getattr(r, 'path', '') != '/v1/faces']\n"
        "    return made_app\n"
        "app.create_app = create_app\n"
        "from backend.cli import main\n"
        "sys.exit(main())\n"
    )
    old.command = [sys.executable, "-c", without_faces, *old.command[3:]]
    with old:
        dialog = open_dialog(qtbot, portrait_job(tmp_path / "job", old.url))
        panel = found(qtbot, dialog)
        assert panel.state == "unavailable" and panel.status == UNAVAILABLE
        assert dialog.banner.message == "" and dialog.apply_button.isEnabled()
        choose(dialog.controls.foreground, "on")
        assert "face_boxes" not in dialog.request().params  # the backend decides (it finds none)
        qtbot.mouseClick(dialog.preview_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: not dialog.running, timeout=60000)
        assert dialog.banner.message == "" and dialog.progress_label.text().startswith("Preview done")


def test_the_overlay_is_the_backends_ellipse() -> None:
    """The dialog outlines the region the backend's mask gives the foreground fidelity."""
    mask = image_ops.face_mask((256, 256), [tuple(FACE)])  # type: ignore[list-item]
    face = Face(*FACE)
    inside = [(x, y) for y in range(256) for x in range(0, 256, 3) if face.contains(x + 0.5, y + 0.5)]
    outside = [(x, y) for y in range(256) for x in range(0, 256, 3) if not face.contains(x + 0.5, y + 0.5)]
    assert min(mask[y, x] for x, y in inside) > 0.5  # inside the outline: mostly foreground
    assert max(mask[y, x] for x, y in outside) < 0.5  # outside: mostly background


# --------------------------------------------------------------------------- styles
def test_styles_are_listed_and_sent_for_pasd_models_only(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    job_file = portrait_job(tmp_path / "job", server.url)
    dialog = open_dialog(qtbot, job_file)
    c = dialog.controls
    assert items(c.style_combo) == [None, "film-grain", "Portrait"]
    described = (c.foreground, c.faces_panel.list, c.words_source, c.style_combo, c.style_strength, c.fast)
    for control in (*described, c.lora_scaling, dialog.crop_view):
        assert len(control.toolTip()) > 20, control  # each says what it does to the picture
    tip = c.style_combo.itemData(1, Qt.ItemDataRole.ToolTipRole)
    assert "LoRA" in tip and "licence" in tip and "0.6" in tip
    assert "checkpoint" in c.style_combo.itemData(2, Qt.ItemDataRole.ToolTipRole)
    assert "style" not in dialog.request().params and not c.form.isRowVisible(c.style_strength)
    # A LoRA: its own strength (the reference's multiplier 0.6), and the LoRA scaling choice.
    choose(c.style_combo, "film-grain")
    assert c.style_strength.value() == 0.6 and c.form.isRowVisible(c.lora_scaling)
    c.lora_scaling.setCurrentIndex(c.lora_scaling.findData("reference"))
    params = dialog.request().params
    assert (params["style"], params["style_strength"], params["style_lora_scaling"]) == (
        "film-grain",
        0.6,
        "reference",
    )
    # A checkpoint: blended at 1 unless set; the LoRA choice is not shown for it.
    choose(c.style_combo, "Portrait")
    assert c.style_strength.value() == 1.0 and not c.form.isRowVisible(c.lora_scaling)
    c.style_strength.setValue(0.8)
    params = dialog.request().params
    assert (params["style"], params["style_strength"]) == ("Portrait", 0.8)
    # The backend paints with it (a preview), as asked.
    qtbot.mouseClick(dialog.preview_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.running, timeout=120000)
    assert dialog.banner.message == ""
    job = server.client().job(dialog.job_id or "")
    assert job.state == "succeeded" and (job.params["style"], job.params["style_strength"]) == (
        "Portrait",
        0.8,
    )
    # PASD-SDXL takes no style: disabled, says why, and nothing is sent (the choice is kept).
    choose(c.model_combo, "tiny-sdxl")
    assert not c.style_combo.isEnabled() and "PASD SD1.5" in c.style_combo.toolTip()
    assert "style" not in dialog.request().params
    choose(c.model_combo, "tiny-full")
    assert c.style_combo.isEnabled() and dialog.request().params["style"] == "Portrait"
    # Kept for the next time, with the other new knobs.
    c.auto_prompt.setChecked(True)
    choose(c.words_source, "classify")
    assert dialog.request().params["auto_prompt_source"] == "classify"
    knobs = ("style", "style_strength", "style_lora_scaling", "auto_prompt", "auto_prompt_source", "faces")
    saved = {k: getattr(dialog.values(), k) for k in knobs}
    dialog.reject()
    again = open_dialog(qtbot, job_file)
    assert {k: getattr(again.values(), k) for k in knobs} == saved
    assert saved["style"] == "Portrait" and again.controls.style_strength.value() == 0.8


def test_a_style_from_the_host_at_its_own_strength(qtbot: Any, server: ServerProcess, tmp_path: Path) -> None:
    """The plug-in's style (strength -1: the style's own) is shown at the strength the backend lists."""
    host = {
        "style": "film-grain",
        "style-strength": -1.0,
        "params": {**QUICK["params"], "style": "film-grain"},
    }
    dialog = open_dialog(qtbot, portrait_job(tmp_path / "job", server.url, settings=host))
    c = dialog.controls
    assert c.style_combo.currentData() == "film-grain" and c.style_strength.value() == 0.6
    assert dialog.request().params["style_strength"] == 0.6 and c.form.isRowVisible(c.lora_scaling)


def test_the_words_source_is_a_choice_of_the_automatic_words(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    dialog = open_dialog(qtbot, portrait_job(tmp_path / "job", server.url))
    c = dialog.controls
    assert items(c.words_source) == ["caption", "classify"] and not c.words_source.isEnabled()
    c.auto_prompt.setChecked(True)
    assert c.words_source.isEnabled() and "auto_prompt_source" not in dialog.request().params
    choose(c.words_source, "classify")
    params = dialog.request().params
    assert params["auto_prompt"] and params["auto_prompt_source"] == "classify"


# --------------------------------------------------------------------------- fast mode
def test_fast_mode_needs_the_lcm_lora_and_a_pasd_sd15_model(
    qtbot: Any, server: ServerProcess, models: Path, tmp_path: Path
) -> None:
    from backend.models.pasd.tiny_lcm import write_tiny_lcm_lora

    dialog = open_dialog(qtbot, portrait_job(tmp_path / "job", server.url, settings={}))
    c = dialog.controls
    fast_item = c.preset.model().item(c.preset.findData("Fast"))  # type: ignore[attr-defined]
    assert isinstance(c.preset.model(), QStandardItemModel)
    # Not installed: greyed out, saying how to install it; Install… offers it among the add-ons.
    assert not c.fast.isEnabled() and "lcm-lora-sdv1-5" in c.fast.toolTip() and not fast_item.isEnabled()
    offered = {a.data(): a for a in c.install_menu.actions()}
    assert {"lcm-lora-sdv1-5", "resnet50-classifier", "style-majicmix-realistic", "blip", "pasd"} <= set(
        offered
    )
    assert not {"sd15", "sdxl", "pasd-color"} & set(offered)  # components come with their models
    assert "fast mode" in offered["lcm-lora-sdv1-5"].toolTip()
    assert "class words" in offered["resnet50-classifier"].toolTip()
    assert "Style" in offered["style-majicmix-realistic"].toolTip()
    sections = [a for a in c.install_menu.actions() if a.isSeparator()]
    assert [a.text() for a in sections] == ["Add-ons"]
    assert [a.data() for a in c.install_menu.actions()].index(
        "lcm-lora-sdv1-5"
    ) > c.install_menu.actions().index(sections[0])
    lcm = models / "lcm-lora-sdv1-5"
    try:
        write_tiny_lcm_lora(lcm, seed=5)  # installed, as Install… would
        dialog.load_models()
        qtbot.waitUntil(lambda: c.fast.isEnabled(), timeout=30000)
        assert fast_item.isEnabled() and "4 steps" in c.fast.toolTip()
        # Ticking it: the fast mode's 4 steps at guidance 1.5, shown as the Fast preset.
        c.fast.setChecked(True)
        v = dialog.values()
        assert (v.fast, v.steps, v.guidance) == (
            True,
            FAST_STEPS,
            FAST_GUIDANCE,
        ) and c.preset.currentText() == "Fast"
        params = dialog.request().params
        assert (params["fast"], params["steps"], params["guidance"]) == (True, 4, 1.5)
        c.guidance.setValue(9.0)  # as the reference: a stronger prompt, still fast
        assert dialog.request().params["fast"] and c.preset.currentText() == "Custom"
        c.fast.setChecked(False)  # back to the steps and guidance from before
        assert (dialog.values().steps, dialog.values().guidance) == (PASD.steps, PASD.guidance)
        assert "fast" not in dialog.request().params and c.preset.currentText() == "Balanced"
        # The Fast preset does the same; a fast preview runs on the backend in 4 steps.
        choose(c.preset, "Fast")
        assert c.fast.isChecked() and (dialog.values().steps, dialog.values().guidance) == (4, 1.5)
        c.process_size.setValue(256)
        qtbot.mouseClick(dialog.preview_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: not dialog.running, timeout=120000)
        assert dialog.banner.message == ""
        job = server.client().job(dialog.job_id or "")
        assert job.state == "succeeded" and job.params["fast"] and job.params["steps"] == 4
        # PASD-SDXL has no fast mode: turned off (with the model's own steps) and greyed out.
        choose(c.model_combo, "tiny-sdxl")
        assert not c.fast.isChecked() and not c.fast.isEnabled() and "PASD SD1.5" in c.fast.toolTip()
        sdxl = FAMILIES["pasd-sdxl"].defaults["upscale"]
        assert (dialog.values().steps, dialog.values().guidance) == (sdxl.steps, sdxl.guidance)
        assert "fast" not in dialog.request().params and c.preset.currentText() == "Balanced"
    finally:
        shutil.rmtree(lcm, ignore_errors=True)


# --------------------------------------------------------------------------- presets and the host
def test_stylize_takes_the_light_model_fidelity_0_7_and_no_enlargement(
    qtbot: Any, server: ServerProcess, tmp_path: Path
) -> None:
    dialog = open_dialog(qtbot, portrait_job(tmp_path / "job", server.url, settings={}))
    c = dialog.controls
    assert c.model_combo.currentData() is None and c.scale_combo.currentData() == 2
    choose(c.preset, "Stylize")
    v = dialog.values()
    assert (v.model, v.scale, v.fidelity_fg, v.fidelity_bg) == ("tiny-light", 1, 0.7, 0.7)
    assert (v.steps, v.guidance, v.fast) == (PASD.steps, PASD.guidance, False)
    assert c.preset.currentText() == "Stylize" and c.size_label.text().startswith("256 × 256")
    c.scale_combo.setCurrentIndex(c.scale_combo.findData(2))
    assert c.preset.currentText() == "Custom"
    # Without a light model installed, the model stays.
    installed = [m for m in dialog.models["installed"] if m.get("variant") != "light"]
    assert light_model(dialog.models["installed"], "upscale", None) == "tiny-light"
    assert light_model(installed, "upscale", "tiny-full") is None


def test_presets_and_the_hosts_values_for_the_new_knobs() -> None:
    stylize, fast = preset_named("Stylize"), preset_named("Fast")
    assert stylize is not None and fast is not None and [p.name for p in PRESETS][-2:] == ["Stylize", "Fast"]
    assert stylize.knobs(PASD) == (20, 7.5, 0.7, 0.7) and fast.knobs(PASD) == (4, 1.5, 1.0, 1.0)
    # The plug-in's arguments (and its backend parameters, which win) come into the dialog.
    plugin = {
        "foreground": "selection",
        "style": "",
        "style-strength": -1.0,
        "fast": False,
        "prompt-words": "classify",
        "params": {"faces": "on", "auto_prompt_source": "classify", "style": "film-grain"},
    }
    merged = merge_host(DialogSettings(), plugin)
    assert (merged.faces, merged.auto_prompt_source, merged.style, merged.style_strength) == (
        "on",
        "classify",
        "film-grain",
        None,
    )
    only_arguments = merge_host(DialogSettings(), {"foreground": "selection", "style-strength": 0.4})
    assert (only_arguments.faces, only_arguments.style_strength) == ("off", 0.4)
    quick = merge_host(DialogSettings(steps=20, guidance=7.5), {"params": {"fast": True}})
    assert (quick.fast, quick.steps, quick.guidance) == (True, 4, 1.5)  # the fast mode's own
    bad = DialogSettings.from_json(
        {"faces": "sometimes", "style_lora_scaling": "x", "auto_prompt_source": 3, "style_strength": 7},
        DialogSettings(),
    )
    assert (bad.faces, bad.style_lora_scaling, bad.auto_prompt_source, bad.style_strength) == (
        "auto",
        "alpha",
        "caption",
        2.0,
    )
    stored = json.loads(json.dumps(DialogSettings(style=None, fast=True, faces="off").to_json()))
    assert DialogSettings.from_json(stored, DialogSettings()) == DialogSettings(**stored)  # as saved


def test_installing_an_add_on_enables_it_and_keeps_the_chosen_model(
    qtbot: Any, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Install… → the LCM-LoRA (from a fake hub): downloaded by the backend, the fast mode becomes
    available, and the model the user chose stays chosen (an add-on is no model for the task)."""
    from backend.models.pasd.tiny_lcm import write_tiny_lcm_lora
    from backend.models.registry import LCM_REPO

    from .fake_hub import FakeHub

    models = tmp_path / "models"
    models.mkdir()
    for folder in (tiny_models["full"], tiny_models["light"]):
        (models / folder.name).symlink_to(folder, target_is_directory=True)
    repo = tmp_path / "hub" / "lcm"
    write_tiny_lcm_lora(repo, seed=5)
    env = {"HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home")}
    with (
        FakeHub({LCM_REPO: repo}) as hub,
        ServerProcess(models, tmp_path, env={**env, "HF_ENDPOINT": hub.url}) as running,
    ):
        dialog = open_dialog(qtbot, portrait_job(tmp_path / "job", running.url))
        c = dialog.controls
        choose(c.model_combo, "tiny-light")
        assert not c.fast.isEnabled()
        offered = {a.data(): a for a in c.install_menu.actions()}
        offered["lcm-lora-sdv1-5"].trigger()  # 130 MB, no terms: no question asked
        qtbot.waitUntil(lambda: c.fast.isEnabled(), timeout=120000)
        assert dialog.banner.message == "Installed the model lcm-lora-sdv1-5."
        assert c.model_combo.currentData() == "tiny-light"
        assert "lcm-lora-sdv1-5" not in {a.data() for a in c.install_menu.actions()}
        assert (models / "lcm-lora-sdv1-5" / "pytorch_lora_weights.safetensors").is_file()
