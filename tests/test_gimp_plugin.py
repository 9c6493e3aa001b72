"""The GIMP plug-in: its GIMP-free core as unit tests, and end to end in a real GIMP 3 against a
real backend serving the tiny models."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.pipelines.params import RestoreParams
from gimp_plugin import plugin_source

from .gimp_harness import Gimp, GimpUnavailable
from .service_server import ServerProcess

sys.path.insert(0, str(plugin_source()))
import diffusion_upscale_core as core

R = core.Rect


# --------------------------------------------------------------------------- core, without GIMP
def test_region_is_the_layer_without_a_selection() -> None:
    assert core.plan_region(R(5, 6, 40, 30), None) == R(5, 6, 40, 30)


def test_region_grows_the_selection_by_the_margin_and_clamps_to_the_layer() -> None:
    layer = R(10, 10, 100, 80)
    assert core.plan_region(layer, R(40, 30, 20, 10), margin=5) == R(35, 25, 30, 20)
    assert core.plan_region(layer, R(12, 70, 30, 40), margin=8) == R(10, 62, 40, 28)  # clamped, part outside
    # automatic margin: an eighth of the long side, at least 32 px
    assert core.auto_margin(R(0, 0, 400, 100)) == 50 and core.auto_margin(R(0, 0, 10, 10)) == 32
    assert core.plan_region(layer, R(50, 50, 10, 10)) == R(18, 18, 74, 72)
    with pytest.raises(core.PluginError, match="does not overlap"):
        core.plan_region(layer, R(200, 200, 10, 10))


def test_pixel_formats() -> None:
    assert core.pixel_format(False, True, False) == core.PixelFormat("R'G'B'A u8", 4, "uint8", 8)
    assert core.pixel_format(True, False, True) == core.PixelFormat("Y' u16", 1, "uint16", 16)
    assert core.result_format(2, "uint16").babl == "Y'A u16"
    assert core.mask_format(False).babl == "Y u8"


def test_settings_map_to_backend_parameters() -> None:
    settings = core.RunSettings.from_values(
        "upscale",
        {"scale": 4, "prompt": "a face", "fidelity-fg": 1.5, "seed": -1, "tile": 300, "negative-prompt": ""},
    )
    params = settings.backend_params()
    assert params["scale"] == 4.0 and params["prompt"] == "a face" and params["fidelity_fg"] == 1.5
    assert params["seed"] is None and params["tile"] == 296 and "negative_prompt" not in params
    assert params["color_fix"] is True
    # Left at 0 / -1, the model knobs are not sent: the backend runs the chosen model's own settings.
    assert not {"steps", "guidance", "fidelity_bg", "process_size", "added_noise_level"} & set(params)
    chosen = core.RunSettings.from_values(
        "upscale", {"steps": 30, "guidance": 0.0, "process-size": 1003, "noise-level": 0, "fidelity-bg": 0.0}
    ).backend_params()
    assert (chosen["steps"], chosen["guidance"], chosen["process_size"]) == (30, 0.0, 1000)
    assert chosen["added_noise_level"] == 0 and chosen["fidelity_bg"] == 0.0
    assert RestoreParams.from_dict(chosen).steps == 30 and RestoreParams.from_dict(params).steps is None
    with pytest.raises(core.PluginError, match="process-size must be 0"):
        core.RunSettings.from_values("upscale", {"process-size": 100}).backend_params()
    colorize = core.RunSettings.from_values("colorize", {"seed": 9, "color-mode": "normal"})
    assert colorize.scale == 1 and colorize.backend_params()["seed"] == 9
    assert "color_fix" not in colorize.backend_params()
    with pytest.raises(core.PluginError, match="fidelity-bg must be between -1 and 2"):
        core.RunSettings.from_values("upscale", {"fidelity-bg": 3.0})
    with pytest.raises(core.PluginError, match="output must be one of"):
        core.RunSettings.from_values("upscale", {"output": "clipboard"})
    # every argument has a default inside its range
    for arg in core.ARGUMENTS:
        if arg.kind in ("int", "double"):
            assert arg.low <= arg.default <= arg.high, arg.name


def test_backend_settings_from_the_installer_json_and_the_environment(tmp_path: Path) -> None:
    assert core.load_backend_settings(tmp_path, {}).url == core.DEFAULT_URL
    (tmp_path / core.CONFIG_NAME).write_text(
        json.dumps({"url": "http://10.0.0.2:7000", "python": "/venv/bin/python"})
    )
    settings = core.load_backend_settings(tmp_path, {})
    assert settings.url == "http://10.0.0.2:7000" and settings.python == "/venv/bin/python"
    env = {core.URL_VARIABLE: "http://127.0.0.1:9999", core.TOKEN_VARIABLE: "secret"}
    overridden = core.load_backend_settings(tmp_path, env)
    assert overridden.url == "http://127.0.0.1:9999" and overridden.token == "secret"
    (tmp_path / core.CONFIG_NAME).write_text("{not json")
    with pytest.raises(core.PluginError, match=r"[Rr]un the installer again"):
        core.load_backend_settings(tmp_path, {})


def test_names_and_progress_text() -> None:
    assert core.layer_name("upscale", 2, 42) == "Diffusion upscale ×2 (seed 42)"
    assert core.layer_name("colorize", 1, None) == "Diffusion colorize"
    job = core.client.JobInfo(
        id="x", state="running", task="upscale", model=None,
        progress=core.client.Progress(stage="denoise", step=5, total=20, fraction=0.4, eta_seconds=12.0),
    )  # fmt: skip
    assert core.progress_text("upscale", job) == "Diffusion upscale: denoising, step 5 of 20, about 12 s left"


def test_durations_never_read_zero_and_round_half_up() -> None:
    # The backend rounds estimates to 0.1 s; Python's round(0.5) is 0, which once printed "Preview 0 s".
    fmt = core.client.format_duration
    assert [fmt(s) for s in (0.0, 0.4, 0.5, 1.5, 2.5, 59.5)] == [
        "under 1 s", "under 1 s", "1 s", "2 s", "3 s", "1 min 0 s",
    ]  # fmt: skip
    assert fmt(3599.6) == "1 h 0 min" and fmt(125) == "2 min 5 s"


# --------------------------------------------------------------------------- in a real GIMP 3
@pytest.fixture(scope="module")
def gimp() -> Gimp:
    try:
        return Gimp.find()
    except GimpUnavailable as exc:  # CI must have GIMP 3: a missing GIMP fails, it never skips
        pytest.fail(f"GIMP 3 is not available: {exc}")


@pytest.fixture(scope="module")
def backend(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_models["full"].parent, tmp_path_factory.mktemp("gimp-backend")) as running:
        yield running


HELPERS = """
import struct
P = Gimp.Precision
def fill_bytes(w, h, channels, bits, alpha_split=False):
    top = (1 << bits) - 1
    pack = 'B' if bits == 8 else 'H'
    values = []
    for y in range(h):
        for x in range(w):
            px = [x * top // max(w - 1, 1), y * top // max(h - 1, 1), (x + y) * top // max(w + h - 2, 1)]
            px = px[:1] if channels <= 2 else px
            if channels in (2, 4):
                px.append(0 if (alpha_split and x < w // 2) else top)
            values.extend(px)
    return struct.pack('<%d%s' % (len(values), pack), *values)

def make_image(w, h, precision, grey=False, alpha=False, layer_size=None, offsets=(0, 0), alpha_split=False):
    base = Gimp.ImageBaseType.GRAY if grey else Gimp.ImageBaseType.RGB
    img = Gimp.Image.new_with_precision(w, h, base, precision)
    lw, lh = layer_size or (w, h)
    kind = {(True, False): Gimp.ImageType.GRAY_IMAGE, (True, True): Gimp.ImageType.GRAYA_IMAGE,
            (False, False): Gimp.ImageType.RGB_IMAGE, (False, True): Gimp.ImageType.RGBA_IMAGE}[(grey, alpha)]
    layer = Gimp.Layer.new(img, 'source', lw, lh, kind, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(layer, None, 0)
    layer.set_offsets(*offsets)
    bits = 8 if precision in (P.U8_NON_LINEAR, P.U8_LINEAR, P.U8_PERCEPTUAL) else 16
    channels = (1 if grey else 3) + int(alpha)
    fmt = ("Y'" if grey else "R'G'B'") + ('A' if alpha else '') + ' u%d' % bits
    data = fill_bytes(lw, lh, channels, bits, alpha_split)
    layer.get_buffer().set(Gegl.Rectangle.new(0, 0, lw, lh), fmt, data)
    layer.get_buffer().flush()
    return img, layer, fmt

def pixels(drawable, fmt):
    w, h = drawable.get_width(), drawable.get_height()
    return bytes(drawable.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, fmt, Gegl.AbyssPolicy.NONE))

def call(name, img, layer, **args):
    proc = Gimp.get_pdb().lookup_procedure(name)
    config = proc.create_config()
    config.set_property('run-mode', Gimp.RunMode.NONINTERACTIVE)
    config.set_property('image', img)
    config.set_core_object_array('drawables', [layer])
    for key, value in args.items():
        config.set_property(key.replace('_', '-'), value)
    result = proc.run(config)
    return result.index(0).value_nick, Gimp.get_pdb().get_last_error()

def describe(img):
    layers = []
    for layer in img.get_layers():
        _, x, y = layer.get_offsets()
        mask = layer.get_mask()
        info = {'name': layer.get_name(), 'size': [layer.get_width(), layer.get_height()],
                'offsets': [x, y], 'mode': layer.get_mode().value_nick, 'alpha': layer.has_alpha(),
                'mask': None, 'parasite': None}
        if mask is not None:
            w, h = mask.get_width(), mask.get_height()
            values = pixels(mask, 'Y u8')
            info['mask'] = {'centre': values[(h // 2) * w + w // 2], 'corner': values[0], 'size': [w, h],
                            'levels': len(set(values))}
        parasite = layer.get_parasite('diffusion-upscale-run')
        if parasite is not None:
            info['parasite'] = json.loads(bytes(parasite.get_data()).decode())
        layers.append(info)
    return {'size': [img.get_width(), img.get_height()], 'base': img.get_base_type().value_nick,
            'precision': img.get_precision().value_nick, 'layers': layers}
"""

FAST = "steps=2, process_size=256, seed=5"


def run_in_gimp(gimp: Gimp, body: str, url: str) -> dict:
    work = gimp.workdir()
    try:
        return gimp.run_script(HELPERS + textwrap.dedent(body), work, {core.URL_VARIABLE: url})
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def test_gimp_lists_both_procedures(gimp: Gimp, backend: ServerProcess) -> None:
    data = run_in_gimp(
        gimp,
        """
        pdb = Gimp.get_pdb()
        found = {}
        for name in ('plug-in-diffusion-upscale', 'plug-in-diffusion-colorize'):
            proc = pdb.lookup_procedure(name)
            found[name] = None if proc is None else {
                'menu': proc.get_menu_paths(), 'label': proc.get_menu_label(),
                'types': proc.get_image_types(), 'args': [a.name for a in proc.get_arguments()]}
        save(found)
        """,
        backend.url,
    )
    upscale, colorize = data["plug-in-diffusion-upscale"], data["plug-in-diffusion-colorize"]
    assert upscale is not None and colorize is not None, data["_output"][-3000:]
    assert upscale["menu"] == ["<Image>/Filters/Enhance"] and upscale["label"] == "Diffusion _Upscale..."
    assert colorize["label"] == "Diffusion _Colorize..." and upscale["types"] == "RGB*, GRAY*"
    assert {"scale", "prompt", "fidelity-fg", "fidelity-bg", "steps", "seed", "output"} <= set(
        upscale["args"]
    )
    assert "color-mode" in colorize["args"] and "scale" not in colorize["args"]


@pytest.mark.parametrize("scale", [1, 2, 4])
@pytest.mark.parametrize("selected", [True, False], ids=["selection", "whole-layer"])
def test_upscale_keeps_the_document_aligned(
    gimp: Gimp, backend: ServerProcess, scale: int, selected: bool
) -> None:
    """Two layers, one offset; the result and every layer at the new scale, the patch over its source."""
    data = run_in_gimp(
        gimp,
        f"""
        img, layer, fmt = make_image(80, 56, P.U8_NON_LINEAR, layer_size=(60, 40), offsets=(8, 4))
        other = Gimp.Layer.new(img, 'other', 20, 10, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
        img.insert_layer(other, None, 1)  # below the source
        other.set_offsets(30, 20)
        if {selected}:
            img.select_ellipse(Gimp.ChannelOps.REPLACE, 24, 12, 30, 22)
            Gimp.Selection.feather(img, 6.0)
        bounds = list(Gimp.Selection.bounds(img))[1:]
        before = pixels(layer, fmt)
        status, error = call('plug-in-diffusion-upscale', img, layer, scale={scale}, context_margin=8, {FAST})
        save({{'status': status, 'error': error, 'bounds': bounds, 'image': describe(img),
              'source_unchanged': pixels(layer, fmt) == before}})
        """,
        backend.url,
    )
    assert data["status"] == "success", data["error"] + data["_output"][-3000:]
    non_empty, x1, y1, x2, y2 = data["bounds"]
    selection = R(x1, y1, x2 - x1, y2 - y1) if non_empty else None
    region = core.plan_region(R(8, 4, 60, 40), selection, margin=8)
    s = scale
    image = data["image"]
    assert image["size"] == [80 * s, 56 * s]  # the canvas and every layer scaled by the factor
    new, source, other = image["layers"]  # the new layer sits directly above the source
    assert new["name"] == f"Diffusion upscale ×{s} (seed 5)"
    assert new["size"] == [region.width * s, region.height * s]
    assert new["offsets"] == [region.x * s, region.y * s]  # exactly over its source area
    assert source["name"] == "source" and source["size"] == [60 * s, 40 * s]
    assert source["offsets"] == [8 * s, 4 * s]
    assert other["size"] == [20 * s, 10 * s] and other["offsets"] == [30 * s, 20 * s]
    if s == 1:  # "restore this face" in place: the source is untouched
        assert data["source_unchanged"]
    mask = new["mask"]
    if selected:
        assert mask is not None and mask["size"] == new["size"]
        assert mask["centre"] == 255 and mask["corner"] == 0 and mask["levels"] > 4  # feathered
    else:
        assert mask is None and region == R(8, 4, 60, 40)
    record = new["parasite"]
    assert record["task"] == "upscale" and record["seed"] == 5 and record["model"] == "tiny-full"
    assert record["region"] == [region.x, region.y, region.width, region.height]


def test_colorize_a_16_bit_grey_image_as_an_lch_colour_layer(gimp: Gimp, backend: ServerProcess) -> None:
    data = run_in_gimp(
        gimp,
        f"""
        img, layer, fmt = make_image(40, 32, P.U16_NON_LINEAR, grey=True)
        before = pixels(layer, fmt)
        status, error = call('plug-in-diffusion-colorize', img, layer, {FAST})
        save({{'status': status, 'error': error, 'image': describe(img),
              'source_unchanged': pixels(layer, fmt) == before}})
        """,
        backend.url,
    )
    assert data["status"] == "success", data["error"] + data["_output"][-3000:]
    image = data["image"]
    assert image["base"] == "rgb" and image["precision"] == "u16-non-linear" and image["size"] == [40, 32]
    new, _ = image["layers"]
    assert new["name"] == "Diffusion colorize (seed 5)" and new["mode"] == "lch-color"
    assert new["size"] == [40, 32] and new["mask"] is None
    assert data["source_unchanged"]
    assert new["parasite"]["model"] == "tiny-color"


def test_upscale_16_bit_with_alpha_into_a_new_image(gimp: Gimp, backend: ServerProcess) -> None:
    data = run_in_gimp(
        gimp,
        f"""
        img, layer, fmt = make_image(32, 24, P.U16_NON_LINEAR, alpha=True, alpha_split=True)
        before = pixels(layer, fmt)
        count = len(Gimp.get_images())
        status, error = call('plug-in-diffusion-upscale', img, layer, scale=2, output='image', {FAST})
        images = Gimp.get_images()
        made = [i for i in images if i.get_id() != img.get_id()]
        out = made[0].get_layers()[0]
        raw = pixels(out, "R'G'B'A u16")
        w = out.get_width()
        alpha = struct.unpack('<%dH' % (len(raw) // 2), raw)[3::4][:w]  # first row
        save({{'status': status, 'error': error, 'original': describe(img),
              'made': [describe(i) for i in made], 'count': [count, len(images)],
              'alpha_left': max(alpha[: w // 2 - 4]), 'alpha_right': alpha[-1],
              'source_unchanged': pixels(layer, fmt) == before}})
        """,
        backend.url,
    )
    assert data["status"] == "success", data["error"] + data["_output"][-3000:]
    assert data["count"] == [1, 2]
    original = data["original"]
    assert original["size"] == [32, 24] and len(original["layers"]) == 1  # the source image is untouched
    assert data["source_unchanged"]
    made = data["made"][0]
    assert made["size"] == [64, 48] and made["precision"] == "u16-non-linear"
    layer = made["layers"][0]
    assert layer["alpha"] and layer["size"] == [64, 48]
    assert data["alpha_left"] == 0 and data["alpha_right"] == 65535


def test_backend_down_gives_a_clean_error_and_leaves_the_image_unchanged(gimp: Gimp) -> None:
    data = run_in_gimp(
        gimp,
        f"""
        img, layer, fmt = make_image(40, 30, P.U8_NON_LINEAR)
        img.select_rectangle(Gimp.ChannelOps.REPLACE, 5, 5, 20, 10)
        before = describe(img)
        status, error = call('plug-in-diffusion-upscale', img, layer, scale=2, {FAST})
        save({{'status': status, 'error': error, 'before': before, 'after': describe(img),
              'undo': img.undo_is_enabled()}})
        """,
        "http://127.0.0.1:9",
    )
    assert data["status"] == "execution-error"
    assert "does not answer" in data["error"] and "Traceback" not in data["_output"]
    assert data["after"] == data["before"]


def test_dialog_job_and_answer_map_to_the_procedure(tmp_path: Path) -> None:
    start = core.RunSettings.from_values("upscale", {"scale": 2, "prompt": "old"})
    backend = core.BackendSettings(url="http://127.0.0.1:7999", python="/venv/bin/python", token="t")
    job = core.dialog_job("upscale", tmp_path, backend, start, "scan.tif", has_mask=True)
    job.write(tmp_path / "job.json")
    back = core.client.DialogJob.read(tmp_path / "job.json")
    assert back.mask == str(tmp_path / "mask.npy") and back.server == backend.url and back.token == "t"
    assert back.settings["params"]["prompt"] == "old" and back.title == "scan.tif"
    answer = core.client.DialogAnswer(
        params={"task": "upscale", "scale": 4.0, "prompt": "a face", "steps": 12, "seed": None},
        options={"output": "image", "color_mode": "normal", "model": "tiny-full"},
        job={"id": "abc", "seed": 77, "model": "tiny-full"},
    )
    settings = core.settings_from_answer("upscale", answer, start)
    assert settings.scale == 4 and settings.get("prompt") == "a face" and settings.get("steps") == 12
    assert settings.get("seed") == 77 and settings.get("output") == "image" and settings.model == "tiny-full"
    outcome = core.Outcome.from_answer(answer)
    record = json.loads(core.run_record(settings, outcome, R(1, 2, 3, 4)))
    assert record["seed"] == 77 and record["job"] == "abc" and record["region"] == [1, 2, 3, 4]


def test_a_broken_backend_environment_is_one_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong Python in diffusion_upscale.json, or one without the backend: one message that says
    what to do (no fallback dialog that cannot work either, no "[Errno 2]")."""
    from .service_server import ROOT

    monkeypatch.chdir(ROOT)
    config = tmp_path / core.CONFIG_NAME
    config.write_text(json.dumps({"url": "http://127.0.0.1:9", "python": str(tmp_path / "gone" / "python")}))
    settings = core.load_backend_settings(tmp_path, {})
    start = core.RunSettings.from_values("upscale", {"scale": 2})
    job = core.dialog_job("upscale", tmp_path, settings, start, "test.png", has_mask=False)
    with pytest.raises(core.EnvironmentBroken) as gone:
        core.run_dialog(settings, job, tmp_path / "job.json")
    message = str(gone.value)
    assert "does not exist" in message and str(config) in message and "installer" in message
    assert "Errno" not in message
    with pytest.raises(core.EnvironmentBroken, match="does not exist"):
        core.connect(settings)  # Repeat (non-interactive) says the same, not "[Errno 2]"

    base = getattr(sys, "_base_executable", sys.executable)
    if Path(base).resolve() == Path(sys.executable).resolve():
        return  # not in a virtual environment: no Python without the backend at hand
    bare = core.BackendSettings(url="http://127.0.0.1:9", python=base)
    with pytest.raises(core.EnvironmentBroken, match="has no GIMP Diffusion Upscale backend"):
        core.run_dialog(bare, job, tmp_path / "job.json")


def test_the_plugin_runs_the_real_dialog_and_reads_its_answer(
    backend: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plug-in's side of the dialog contract with the real ``python -m gui`` (Apply pressed for us)."""
    from .service_server import ROOT

    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    monkeypatch.setenv("GDU_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.chdir(ROOT)
    start = core.RunSettings.from_values("upscale", {"scale": 2, "steps": 2, "process-size": 256, "seed": 3})
    settings = core.BackendSettings(url=backend.url, python=sys.executable)
    job = core.dialog_job("upscale", tmp_path, settings, start, "test.png", has_mask=False)
    pixels = bytes(range(256)) * (24 * 32 * 3 // 256)
    core.client.write_npy(job.image, core.client.RawImage(32, 24, 3, "uint8", pixels))
    answer = core.run_dialog(settings, job, tmp_path / "job.json", extra_args=("--press", "apply"))
    assert answer is not None
    result = core.client.read_npy(job.result)
    assert (result.width, result.height, result.channels) == (64, 48, 3)
    applied = core.settings_from_answer("upscale", answer, start)
    assert applied.scale == 2 and applied.get("steps") == 2 and answer.options["output"] in ("layer", "image")
    assert core.Outcome.from_answer(answer).seed is not None


def test_gimp_window_handles_become_references_the_dialog_can_use() -> None:
    xid = (0x3A00007).to_bytes(8, sys.byteorder)
    assert core.window_ref(xid, "linux") == {"system": "x11", "id": 0x3A00007}
    assert core.window_ref(xid, "win32") == {"system": "windows", "id": 0x3A00007}
    assert core.window_ref(b"wayland-exported:abc123\0", "linux") == {
        "system": "wayland",
        "id": "wayland-exported:abc123",
    }
    for nothing in (None, b"", bytes(8), b"\x01\x02\x03"):
        assert core.window_ref(nothing, "linux") is None
    about = core.describe_input("scan.xcf", "Background", R(10, 20, 184, 144), R(42, 52, 120, 80))
    assert "“scan.xcf”" in about and "“Background”" in about and "120 × 80" in about and "184 × 144" in about


def test_runs_of_ended_plugins_are_swept_and_finished_results_kept(tmp_path: Path) -> None:
    """No temporary folder outlives its run; a finished result is never dropped with it."""
    import subprocess
    import time

    handoff = core.client.Handoff(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:

        def run(pid: int, key: str, finished: bool) -> Path:
            folder = handoff.new_run()
            (folder / "image.npy").write_bytes(b"pixels")
            (folder / "job.json").write_text(json.dumps({"host_pid": pid, "key": key, "title": "scan.xcf"}))
            if finished:
                core.client.write_npy(
                    folder / "result.npy", core.client.RawImage(2, 1, 1, "uint8", b"\x01\x02")
                )
                core.client.DialogAnswer({"task": "upscale", "scale": 2.0}, {}, {"seed": 5}).write(
                    folder / "answer.json"
                )
            return folder

        finished = run(dead.pid, "aa" * 16, True)
        unfinished = run(dead.pid, "bb" * 16, False)
        running = run(alive.pid, "cc" * 16, True)
        junk = handoff.runs / "not-a-run"
        junk.mkdir()
        stray = handoff.runs / "a-stray-file"
        stray.write_text("x")
        corrupt = run(dead.pid, "dd" * 16, True)  # a finished run whose answer was cut short
        (corrupt / "answer.json").write_text('{"params": {"ta')
        kept = handoff.sweep()
        assert kept == [handoff.kept / ("aa" * 16)]
        assert not finished.exists() and not unfinished.exists() and not junk.exists() and running.exists()
        assert not stray.exists() and not corrupt.exists() and handoff.undelivered("dd" * 16) is None
        found = handoff.undelivered("aa" * 16)
        assert found is not None and found.seed == 5 and found.what == "Diffusion upscale ×2"
        assert found.title == "scan.xcf" and core.client.read_npy(found.result).data == b"\x01\x02"
        assert handoff.undelivered("bb" * 16) is None
        handoff.sweep(now=time.time() + 15 * 86400)  # offered for two weeks, then removed
        assert handoff.undelivered("aa" * 16) is None and not (handoff.kept / ("aa" * 16)).exists()
    finally:
        alive.kill()
        alive.wait()
    handoff.sweep()
    assert not running.exists() and list(handoff.runs.iterdir()) == []


def test_closing_the_image_stops_the_real_dialog_and_its_backend_job(
    backend: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plug-in's watch on its image (GIMP's ``image.is_valid()``) with the real ``python -m gui``:
    once the image is gone the dialog cancels its job and closes, and nothing is delivered."""
    import time

    from .service_server import ROOT

    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    monkeypatch.setenv("GDU_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.chdir(ROOT)
    start = core.RunSettings.from_values(
        "upscale", {"scale": 2, "steps": 200, "process-size": 512, "seed": 3}
    )
    settings = core.BackendSettings(url=backend.url, python=sys.executable)
    folder = core.client.Handoff(tmp_path / "handoff").new_run()
    job = core.dialog_job("upscale", folder, settings, start, "test.png", has_mask=False)
    core.client.write_npy(job.image, core.client.RawImage(32, 24, 3, "uint8", bytes(24 * 32 * 3)))
    watcher = core.client.Client(backend.url)
    closed_at: list[float] = []
    seen: list[str] = []

    def image_gone() -> str | None:
        running = [j for j in watcher.jobs() if j.state == "running"]
        if running and running[0].progress.stage == "denoise":
            closed_at.append(time.monotonic())
            seen.append(running[0].id)
            return "the image was closed in GIMP"
        return None

    with pytest.raises(core.DialogStopped, match="the image was closed in GIMP"):
        core.run_dialog(settings, job, folder / "job.json", extra_args=("--press", "apply"), watch=image_gone)
    assert closed_at and time.monotonic() - closed_at[0] < 15
    assert watcher.job(seen[0]).state == "canceled"
    assert not Path(job.answer).exists() and not Path(job.result).exists()


# A stand-in for `python -m gui --job FILE` inside GIMP's root (no Qt there): it keeps the dialog's
# side of the contract (run the job on the backend, write result.npy then answer.json, exit 0) and
# records what the plug-in handed it. With the mode "die", GIMP loses the plug-in right after the
# result is written, as when its Cancel comes a moment too late; with "adopt", it takes the
# undelivered result offered, as the dialog's "Add that result" does.
STAND_IN = """
import json, os, shutil, signal, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gdu_client as client
job = client.DialogJob.read(sys.argv[sys.argv.index('--job') + 1])
here = os.path.dirname(os.path.abspath(__file__))
mode = open(os.path.join(here, 'mode')).read().strip()
with open(os.path.join(here, 'seen-' + mode + '.json'), 'w') as fh:
    json.dump({'about': job.about, 'key': job.key, 'undelivered': job.undelivered, 'stop': job.stop,
               'folder': os.path.dirname(job.image), 'title': job.title}, fh)
if mode == 'adopt':
    kept = client.Undelivered.read(job.undelivered)
    client.write_npy(job.result, client.read_npy(kept.result))
    answer = client.DialogAnswer.read(kept.answer)
    answer.job = dict(answer.job, undelivered=job.key)
    answer.write(job.answer)
    sys.exit(client.DIALOG_EXIT_APPLIED)
c = client.Client(job.server, token=job.token)
params = dict(job.settings['params'])
info, result = c.run(client.read_npy(job.image), params)
client.write_npy(job.result, result)
client.DialogAnswer(params, {'output': 'layer', 'color_mode': 'lch-color', 'model': None},
                    dict(info.result, id=info.id)).write(job.answer)
if mode == 'die':
    os.kill(job.host_pid, signal.SIGKILL)
sys.exit(client.DIALOG_EXIT_APPLIED)
"""


def test_an_interactive_run_in_gimp_keeps_a_result_the_plugin_lost_and_offers_it_again(
    gimp: Gimp, backend: ServerProcess
) -> None:
    """Real GIMP, the plug-in's interactive path: its run folder, the sweep of a killed run, the
    undelivered result found again for the same pixels, and added as a layer once accepted."""
    import shutil

    work = gimp.workdir()
    try:
        stand_in = work / "stand-in"
        stand_in.mkdir()
        (stand_in / "stand_in.py").write_text(STAND_IN)
        shutil.copyfile(core.client.__file__, stand_in / "gdu_client.py")
        launcher = stand_in / "python"  # what the installer's JSON names as the backend's Python
        launcher.write_text(
            f'#!/bin/sh\nexec /usr/bin/python3 {gimp.inside(stand_in / "stand_in.py")} "$@"\n'
        )
        launcher.chmod(0o755)
        config = {"url": backend.url, "python": gimp.inside(launcher)}
        body = f"""
        import os
        plugin_dir = os.path.join(os.environ['HOME'], 'plug-ins', 'diffusion_upscale')
        with open(os.path.join(plugin_dir, 'diffusion_upscale.json'), 'w') as fh:
            fh.write({json.dumps(json.dumps(config))})
        img, layer, fmt = make_image(48, 32, P.U8_NON_LINEAR)
        layer.set_name('Background')
        def interactive(mode):
            with open({gimp.inside(stand_in / "mode")!r}, 'w') as fh:
                fh.write(mode)
            proc = Gimp.get_pdb().lookup_procedure('plug-in-diffusion-upscale')
            config = proc.create_config()
            config.set_property('run-mode', Gimp.RunMode.INTERACTIVE)
            config.set_property('image', img)
            config.set_core_object_array('drawables', [layer])
            for key, value in dict(scale=2, steps=2, process_size=256, seed=5).items():
                config.set_property(key.replace('_', '-'), value)
            return proc.run(config).index(0).value_nick
        died = interactive('die')
        after_death = describe(img)
        adopted = interactive('adopt')
        save({{'died': died, 'after_death': after_death, 'adopted': adopted, 'image': describe(img)}})
        """
        data = gimp.run_script(HELPERS + textwrap.dedent(body), work, {core.URL_VARIABLE: backend.url})
        output = data["_output"][-3000:]
        assert data["died"] != "success" and len(data["after_death"]["layers"]) == 1, output
        died = json.loads((stand_in / "seen-die.json").read_text())
        adopt = json.loads((stand_in / "seen-adopt.json").read_text())
        assert died["about"] == "“[Untitled]”, layer “Background”: the whole layer, 48 × 32 px", died
        assert died["undelivered"] is None and died["key"] == adopt["key"]  # the same pixels: the same key
        assert adopt["undelivered"] is not None and adopt["undelivered"].endswith(adopt["key"])
        assert data["adopted"] == "success", output
        layers = data["image"]["layers"]
        assert data["image"]["size"] == [96, 64] and [layer["name"] for layer in layers] == [
            "Diffusion upscale ×2 (seed 5)",
            "Background",
        ]
        handoff = work / ".local" / "share" / "gimp-diffusion-upscale" / "dialog"
        assert (
            list((handoff / "runs").iterdir()) == []
        )  # the killed run's folder was swept, the new one removed
        assert list((handoff / "undelivered").iterdir()) == []  # applied: the kept copy is gone
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_new_arguments_map_to_faces_style_fast_and_prompt_words() -> None:
    params = core.RunSettings.from_values(
        "upscale",
        {
            "foreground": "faces",
            "style": " toon ",
            "style-strength": 0.7,
            "fast": True,
            "prompt-words": "classify",
        },
    ).backend_params()
    assert params["faces"] == "on" and params["style"] == "toon" and params["style_strength"] == 0.7
    assert params["fast"] is True and params["auto_prompt_source"] == "classify"
    checked = RestoreParams.from_dict(params)
    assert checked.faces == "on" and checked.fast and checked.style == "toon"
    plain = core.RunSettings.from_values("colorize", {"foreground": "selection"}).backend_params()
    assert plain["faces"] == "off" and "style" not in plain and "fast" not in plain
    own = core.RunSettings.from_values("upscale", {"style": "toon"}).backend_params()
    assert "style_strength" not in own  # -1: the style's own strength
    with pytest.raises(core.PluginError, match="foreground must be one of auto, selection, faces"):
        core.RunSettings.from_values("upscale", {"foreground": "eyes"})
    from backend.client import DialogAnswer

    answer = DialogAnswer(
        {"scale": 2.0, "faces": "on", "style": "toon", "style_strength": None, "fast": True,
         "auto_prompt_source": "classify"},
        {"output": "layer"}, {"seed": 3},
    )  # fmt: skip
    back = core.settings_from_answer("upscale", answer, core.RunSettings.from_values("upscale", {}))
    assert back.get("foreground") == "faces" and back.get("style") == "toon"
    assert back.get("style-strength") == -1.0 and back.get("fast") is True
    assert back.get("prompt-words") == "classify"


@pytest.mark.parametrize("output", ["layer", "image"])
def test_faces_found_in_gimp_become_a_channel_to_refine(
    gimp: Gimp, backend: ServerProcess, output: str
) -> None:
    """A real portrait with no selection: faces are the foreground, and the mask used comes back as a
    hidden channel at the result's scale."""
    import numpy as np
    from PIL import Image
    from skimage import data as photos

    from backend.faces import detect_faces

    portrait = np.asarray(Image.fromarray(photos.astronaut()).resize((192, 192), Image.LANCZOS))
    (face,) = detect_faces(portrait)
    work = gimp.workdir()
    try:
        (work / "portrait.raw").write_bytes(portrait.tobytes())
        body = f"""
        img = Gimp.Image.new_with_precision(192, 192, Gimp.ImageBaseType.RGB, P.U8_NON_LINEAR)
        layer = Gimp.Layer.new(img, 'portrait', 192, 192, Gimp.ImageType.RGB_IMAGE, 100.0,
                               Gimp.LayerMode.NORMAL)
        img.insert_layer(layer, None, 0)
        layer.get_buffer().set(Gegl.Rectangle.new(0, 0, 192, 192), "R'G'B' u8",
                               open({gimp.inside(work / "portrait.raw")!r}, 'rb').read())
        layer.get_buffer().flush()
        status, error = call('plug-in-diffusion-upscale', img, layer, scale=2, output={output!r},
                             foreground='faces', fidelity_fg=1.5, fidelity_bg=0.3, {FAST})
        others = [i for i in Gimp.get_images() if i.get_id() != img.get_id()]
        target = img if {output!r} == 'layer' else others[0]
        channels = []
        for channel in target.get_channels():
            values = pixels(channel, 'Y u8')
            w = channel.get_width()
            channels.append({{'name': channel.get_name(), 'size': [w, channel.get_height()],
                             'visible': channel.get_visible(), 'values': list(values)}})
        save({{'status': status, 'error': error, 'channels': channels,
              'source_channels': len(img.get_channels())}})
        """
        result = gimp.run_script(HELPERS + textwrap.dedent(body), work, {core.URL_VARIABLE: backend.url})
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    assert result["status"] == "success", result["error"] + result["_output"][-3000:]
    (channel,) = result["channels"]
    assert channel["name"] == core.FACES_CHANNEL_NAME and channel["size"] == [384, 384]
    assert channel["visible"] is False
    values = np.array(channel["values"], np.uint8).reshape(384, 384)
    cx, cy = 2 * face.x + face.width, 2 * face.y + face.height  # the face's centre at ×2
    assert values[cy, cx] == 255 and values[370, 10] == 0 and values[10, 370] == 0
    assert 0.01 < (values > 127).mean() < 0.15
    if output == "image":
        assert result["source_channels"] == 0  # the source image is untouched
