"""Faces as the foreground: the detector on real photographs, the soft mask, the engine, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from backend import image_ops
from backend.engine import Engine, InputError
from backend.faces import Face, detect_faces, faces_mask, merge_faces
from backend.image_io import read_image
from backend.pipelines.params import ParamsError, RestoreParams
from tests.conftest import run_backend

RUN = RestoreParams(steps=2, seed=3, scale=1.0, process_size=256, fidelity_fg=1.5, fidelity_bg=0.2)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()  # a real portrait that ships inside scikit-image


@pytest.fixture(scope="module")
def astronaut_faces(astronaut: np.ndarray) -> list[Face]:
    return detect_faces(astronaut)


def test_the_astronauts_face_is_found_and_masked_softly(
    astronaut: np.ndarray, astronaut_faces: list[Face]
) -> None:
    assert len(astronaut_faces) == 1
    face = astronaut_faces[0]
    # her face: eyes at about y 120, mouth at about y 145, between x 190 and 260
    assert 160 <= face.x <= 200 and 50 <= face.y <= 90 and 80 <= face.width <= 120
    mask = faces_mask(astronaut.shape[:2], astronaut_faces)
    assert mask.shape == (512, 512) and mask.dtype == np.float32
    for y, x in ((120, 205), (120, 245), (145, 225), (100, 225)):  # eyes, mouth, forehead
        assert mask[y, x] == pytest.approx(1.0)
    # not the background: the flag, the shuttle, the suit, the helmet, the corners
    for y, x in ((60, 40), (150, 420), (330, 120), (420, 380), (0, 0), (511, 511)):
        assert mask[y, x] == 0.0
    assert (mask > 0.5).mean() < 0.06  # the face only
    soft = (mask > 0.01) & (mask < 0.99)
    assert soft.sum() > 1000  # feathered, not a hard box
    box = mask[face.y : face.y + face.height, face.x : face.x + face.width]
    assert box.mean() > 0.85


def test_the_cameramans_face_in_a_grey_photo(astronaut: np.ndarray) -> None:
    camera = data.camera()  # real, grey, the face turned sideways
    faces = detect_faces(camera)
    assert len(faces) == 1 and faces[0].kind == "profile"
    mask = faces_mask(camera.shape, faces)
    assert mask[150, 230] > 0.5  # his eye and cheek
    for y, x in ((30, 400), (60, 60), (450, 450), (350, 100), (480, 250)):  # sky, ground, coat, tripod
        assert mask[y, x] == 0.0
    assert (mask > 0.5).mean() < 0.06


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket", "hubble_deep_field"])
def test_no_faces_in_pictures_without_people(name: str) -> None:
    assert detect_faces(getattr(data, name)()) == []


def test_bit_depth_grey_alpha_and_size_do_not_change_what_is_found(
    astronaut: np.ndarray, astronaut_faces: list[Face]
) -> None:
    wide = astronaut.astype(np.uint16) * 257
    assert [f.box() for f in detect_faces(wide)] == [f.box() for f in astronaut_faces]
    rgba = np.concatenate([astronaut, np.full((512, 512, 1), 255, np.uint8)], axis=2)
    assert [f.box() for f in detect_faces(rgba)] == [f.box() for f in astronaut_faces]
    floats = astronaut.astype(np.float32) / 255
    assert len(detect_faces(floats)) == 1
    # a large scan is looked at downscaled; boxes come back in its own pixels
    big = np.asarray(Image.fromarray(astronaut).resize((1536, 1536), Image.BICUBIC))
    (found,) = detect_faces(big)
    want = astronaut_faces[0]
    assert abs(found.x - 3 * want.x) < 15 and abs(found.width - 3 * want.width) < 20
    assert detect_faces(np.zeros((8, 8, 3), np.uint8)) == []
    with pytest.raises(ValueError, match="H×W"):
        detect_faces(np.zeros((4,), np.uint8))


def test_mask_of_several_faces_edges_and_outside_boxes() -> None:
    faces = [Face(0, 0, 40, 40), Face(100, 20, 30, 30), Face(500, 500, 10, 10)]  # one off the picture
    mask = faces_mask((80, 160), faces)
    assert mask.max() == 1.0 and mask.min() == 0.0
    assert mask[20, 20] == 1.0 and mask[35, 115] == 1.0
    assert mask[70, 70] == 0.0
    # symmetric left-right about a face's centre line
    one = faces_mask((100, 100), [Face(30, 30, 40, 40)])
    assert np.allclose(one, one[:, ::-1], atol=1e-6)
    assert merge_faces([Face(10, 10, 50, 50, 0.9, "profile"), Face(12, 12, 48, 48, 0.6, "frontal")]) == [
        Face(12, 12, 48, 48, 0.6, "frontal")
    ]


def test_face_boxes_are_checked() -> None:
    RestoreParams.from_dict({"face_boxes": [[1, 2, 3, 4]]})
    for bad in ([[1, 2, 0, 4]], [[1, 2, 3]], [["a", 2, 3, 4]], [[1, 2, 3, 4]] * 65):
        with pytest.raises(ParamsError, match="face"):
            RestoreParams.from_dict({"face_boxes": bad})
    with pytest.raises(ParamsError, match="faces must be one of auto, on, off"):
        RestoreParams.from_dict({"faces": "maybe"})


@pytest.fixture(scope="module")
def engine(tiny_models: dict[str, Path], one_thread: None) -> Engine:
    return Engine(tiny_models["full"].parent, device="cpu")


@pytest.fixture(scope="module")
def portrait(astronaut: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.LANCZOS))


def test_engine_uses_faces_when_there_is_no_mask_and_fidelities_differ(
    engine: Engine, portrait: np.ndarray
) -> None:
    stages: dict[str, np.ndarray] = {}
    auto = engine.restore(
        portrait, RUN, model="tiny-full", trace=lambda name, t: stages.setdefault(name, t.numpy())
    )
    assert len(auto.faces) == 1 and auto.foreground is not None
    assert "1 face found" in auto.notes[0]
    off = engine.restore(portrait, RUN.with_(faces="off"), model="tiny-full")
    assert off.faces == () and off.foreground is None
    # the face mask as a selection gives exactly the run with faces
    given = engine.restore(portrait, RUN.with_(faces="off"), mask=auto.foreground, model="tiny-full")
    assert np.array_equal(given.image, auto.image)
    assert not np.array_equal(auto.image, off.image)
    # the ControlNet scale: fidelity_fg on the face, fidelity_bg on the background
    scale = stages["scale_map"][0, 0]
    assert scale.shape == (256, 256)
    assert scale[60, 112] == pytest.approx(1.5) and scale[230, 20] == pytest.approx(0.2)
    assert ((scale > 0.3) & (scale < 1.4)).any()  # a soft edge
    # equal fidelities: nothing to tell apart, no detection
    same = engine.restore(portrait, RUN.with_(fidelity_fg=0.5, fidelity_bg=0.5), model="tiny-full")
    assert same.faces == () and same.foreground is None


def test_engine_faces_on_join_the_mask_and_chosen_boxes_follow_the_frame(
    engine: Engine, portrait: np.ndarray
) -> None:
    corner = np.zeros((256, 256), np.uint8)
    corner[200:, 200:] = 255
    both = engine.restore(portrait, RUN.with_(faces="on"), mask=corner, model="tiny-full")
    assert len(both.faces) == 1
    assert both.foreground[230, 230] == 1.0 and both.foreground[60, 112] == 1.0
    auto = engine.restore(portrait, RUN, mask=corner, model="tiny-full")  # a mask wins in auto mode
    assert auto.faces == () and auto.foreground is None
    # boxes chosen in the whole picture; a crop of it sees them at its own place
    chosen = RUN.with_(face_boxes=((90, 35, 50, 50),))
    whole = engine.restore(portrait, chosen, model="tiny-full")
    assert whole.faces == (Face(90, 35, 50, 50, 1.0, "given"),)
    crop = portrait[16:144, 64:192]
    framed = engine.restore(crop, chosen.with_(frame=(64, 16, 256, 256)), model="tiny-full")
    assert framed.faces == (Face(26, 19, 50, 50, 1.0, "given"),)
    assert np.array_equal(framed.foreground, whole.foreground[16:144, 64:192])
    outside = engine.restore(crop, RUN.with_(face_boxes=((0, 200, 20, 20),), frame=(64, 16, 256, 256)),
                             model="tiny-full")  # fmt: skip
    assert outside.faces == () and outside.foreground is None


def test_colorize_with_faces_keeps_colour_everywhere(engine: Engine, portrait: np.ndarray) -> None:
    grey = image_ops.from_float(
        image_ops.to_grey(image_ops_tensor(portrait))[0, 0].numpy(), np.uint8
    )  # a black-and-white photograph
    params = RUN.with_(task="colorize", faces="on")
    res = engine.restore(grey, params, model="tiny-color")
    assert len(res.faces) == 1 and res.image.shape == (256, 256, 3)


def image_ops_tensor(pixels: np.ndarray):  # type: ignore[no-untyped-def]
    import torch

    return torch.from_numpy(image_ops.to_float(pixels)).permute(2, 0, 1)[None]


def test_faces_on_in_a_picture_without_faces_says_so(engine: Engine) -> None:
    coffee = np.asarray(Image.fromarray(data.coffee()).resize((192, 128)))
    res = engine.restore(coffee, RUN.with_(faces="on"), model="tiny-full")
    assert res.faces == () and res.foreground is None
    assert res.notes[0].startswith("no faces found; the background fidelity applies everywhere")
    with pytest.raises(InputError, match="face width"):
        engine.restore(coffee, RUN.with_(face_boxes=((0, 0, 0, 5),)), model="tiny-full")


def test_cli_faces_writes_the_mask_and_upscale_uses_faces(
    tmp_path: Path, astronaut: np.ndarray, tiny_models: dict[str, Path]
) -> None:
    src = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(src)
    out = tmp_path / "faces.png"
    done = run_backend("faces", str(src), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "1 face found" in done.stdout
    mask = read_image(out)
    assert mask.shape == (512, 512, 1) and mask.dtype == np.uint8  # one grey channel
    mask = mask[..., 0]
    assert np.array_equal(
        mask, (faces_mask((512, 512), detect_faces(astronaut)) * 255 + 0.5).astype(np.uint8)
    )
    again = run_backend("faces", str(src), "-o", str(out))
    assert again.returncode == 1 and "--force" in again.stderr
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    bad = run_backend("faces", str(broken), "-o", str(tmp_path / "m.png"))
    assert bad.returncode == 1 and "error:" in bad.stderr and "Traceback" not in bad.stderr

    small = tmp_path / "small.png"
    Image.fromarray(astronaut).resize((256, 256), Image.LANCZOS).save(small)
    up = run_backend(
        "upscale", str(small), "-o", str(tmp_path / "up.png"), "--models", str(tiny_models["full"].parent),
        "--model", "tiny-full", "--scale", "1", "--steps", "1", "--process-size", "256", "--faces",
        "--fidelity-fg", "1.2", "--fidelity-bg", "0.3", "--seed", "1", "--quiet",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert "face: " in up.stdout and "1 face found" in up.stdout


def test_service_finds_faces_runs_with_them_and_hands_back_the_mask(
    tiny_models: dict[str, Path], tmp_path: Path, portrait: np.ndarray
) -> None:
    from backend.client import ApiError, RawImage

    from .service_server import ServerProcess

    def raw(a: np.ndarray) -> RawImage:
        a = a if a.ndim == 3 else a[..., None]
        return RawImage(a.shape[1], a.shape[0], a.shape[2], str(a.dtype), a.tobytes())

    with ServerProcess(tiny_models["full"].parent, tmp_path / "home") as server:
        client = server.client()
        image_id = client.upload(raw(portrait)).id
        faces = client.faces(image_id)
        assert len(faces) == 1 and faces[0]["kind"] == "frontal"
        assert faces[0]["x"] == detect_faces(portrait)[0].x
        # the dialog's choice: the found face's box (as face_boxes), upscaled ×2
        box = [faces[0][k] for k in ("x", "y", "width", "height")]
        params = {**RUN.to_dict(), "scale": 2.0, "face_boxes": [box]}
        job = client.submit(image_id, params, model="tiny-full")
        done = client.wait(job.id)
        assert done.result["faces"][0]["kind"] == "given" and done.result["faces"][0]["x"] == box[0]
        mask = client.foreground(job.id)
        assert (mask.width, mask.height, mask.channels, mask.dtype) == (512, 512, 1, "uint8")
        values = np.frombuffer(mask.data, np.uint8).reshape(512, 512)
        cx, cy = 2 * box[0] + box[2], 2 * box[1] + box[3]  # the face's centre at output size
        assert values[cy, cx] == 255 and values[500, 10] == 0
        # a run without faces has no mask to hand back
        plain = client.wait(client.submit(image_id, {**RUN.to_dict(), "faces": "off"}, model="tiny-full").id)
        assert plain.result["faces"] == []
        with pytest.raises(ApiError) as info:
            client.foreground(plain.id)
        assert info.value.status == 409 and "no faces" in str(info.value)
        # styles are named, never paths on the server
        with pytest.raises(ApiError) as info:
            client.submit(image_id, {**RUN.to_dict(), "style": "/etc/passwd"}, model="tiny-full")
        assert info.value.status == 422 and "Unknown style" in str(info.value)
        with pytest.raises(ApiError) as info:
            client.faces("no-such-image")
        assert info.value.status == 404
