"""Pre-scaling: strip-wise bicubic equals the one-call resize; tiled GAN equals the whole-image run."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backend.models.pasd.rrdb import RRDB
from backend.pipelines.prescale import (
    BicubicPrescaler,
    GanPrescaler,
    PrescalerError,
    load_gan_prescaler,
    make_prescaler,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyRRDBNet(nn.Module):
    """ESRGAN's shape, narrow: conv, one RRDB, conv, then ×4 by two pixel-shuffle steps."""

    def __init__(self, channels: int = 3, feat: int = 8, grow: int = 4) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(channels, feat, 3, 1, 1)
        self.body = RRDB(feat, grow)
        self.up = nn.Sequential(
            nn.Conv2d(feat, feat * 4, 3, 1, 1),
            nn.PixelShuffle(2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(feat, feat * 4, 3, 1, 1),
            nn.PixelShuffle(2),
            nn.LeakyReLU(0.2),
        )
        self.conv_last = nn.Conv2d(feat, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv_last(self.up(self.conv_first(x) + self.body(self.conv_first(x)))))


# Receptive-field radius in input pixels: conv_first 1 + RRDB 3×5 + up-convs 1 + 1/2 + conv_last 1/4.
RRDB_RADIUS = 18


def gan(channels: int = 3, **kwargs: int) -> tuple[nn.Module, GanPrescaler]:
    torch.manual_seed(0)
    net = TinyRRDBNet(channels).eval()
    return net, GanPrescaler(net, 4, in_channels=channels, **kwargs)


def one_shot(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((37, 53), (150, 211)),
        ((120, 90), (31, 47)),
        ((40, 60), (17, 233)),
        ((64, 64), (64, 200)),
        ((30, 41), (30, 41)),
        ((300, 100), (100, 500)),  # height first: the smaller intermediate
        ((50, 40), (130, 40)),
        ((100, 1), (300, 5)),
        ((1, 100), (5, 300)),
    ],
)
def test_bicubic_equals_one_call(shape: tuple[int, int], size: tuple[int, int]) -> None:
    x = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1
    out = BicubicPrescaler()(x, size)
    assert out.shape == (1, 3, *size) and out.dtype == torch.float32
    torch.testing.assert_close(out, one_shot(x, size), atol=1e-5, rtol=0)
    assert out.min() >= 0 and out.max() <= 1


def test_bicubic_one_column() -> None:
    """A one-column picture resizes like each column of a wider one (PyTorch's own call gets it wrong)."""
    column = torch.rand(1, 3, 40, 1)
    wide = one_shot(column.expand(-1, -1, -1, 3), (90, 3))
    torch.testing.assert_close(BicubicPrescaler()(column, (90, 1)), wide[..., :1], atol=1e-6, rtol=0)
    torch.testing.assert_close(BicubicPrescaler()(column, (90, 3)), wide, atol=1e-6, rtol=0)


def test_bicubic_cancel_and_input_untouched() -> None:
    x = torch.rand(1, 3, 40, 50)
    before = x.clone()
    same = BicubicPrescaler()(x, (40, 50))
    assert same is not x and torch.equal(x, before)
    calls = []

    def cancel() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # checked before each of the two passes
        BicubicPrescaler()(x, (160, 200), cancel)
    assert len(calls) == 2
    with pytest.raises(PrescalerError, match="positive"):
        BicubicPrescaler()(x, (0, 10))


def test_gan_tiles_equal_whole_image() -> None:
    net, whole = gan(tile=10_000)
    _, tiled = gan(tile=28, halo=RRDB_RADIUS)  # 2 × 2 tiles
    x = torch.rand(1, 3, 44, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = net(x).clamp(0, 1)
    torch.testing.assert_close(whole.upscale(x), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(tiled.upscale(x), reference, atol=1e-5, rtol=0)
    _, no_halo = gan(tile=28, halo=0)  # the halo is what makes it exact
    assert (no_halo.upscale(x) - reference).abs().max() > 1e-3


@pytest.mark.parametrize("size", [(80, 96), (60, 75), (71, 101), (180, 200), (10, 13)])
def test_gan_gives_the_exact_size(size: tuple[int, int]) -> None:
    _, pre = gan(tile=16, halo=8)
    x = torch.rand(1, 3, 20, 24)
    out = pre(x, size)
    assert out.shape == (1, 3, *size) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    if size == (80, 96):  # exactly the network's scale: its output, untouched by the resize
        torch.testing.assert_close(out, pre.upscale(x), atol=1e-6, rtol=0)


def test_gan_second_pass_beyond_its_scale() -> None:
    passes = []
    net, pre = gan(tile=64, halo=4)

    def counted(t: torch.Tensor) -> torch.Tensor:
        passes.append(t.shape[-2:])
        return net(t)

    pre.module = counted
    out = pre(torch.rand(1, 3, 12, 16), (150, 200))  # 12.5×: 4× then shrink to 38×50 and 4× again
    assert out.shape == (1, 3, 150, 200)
    assert [tuple(s) for s in passes] == [(12, 16), (38, 50)]


def test_gan_channels() -> None:
    _, pre = gan(tile=16, halo=8)
    rgba = torch.rand(1, 4, 20, 24)
    out = pre(rgba, (80, 96))  # colour through the network, alpha by bicubic
    assert out.shape == (1, 4, 80, 96)
    torch.testing.assert_close(out[:, :3], pre.upscale(rgba[:, :3]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 3:], one_shot(rgba[:, 3:], (80, 96)), atol=1e-5, rtol=0)
    grey = torch.rand(1, 1, 20, 24)
    expected = pre.upscale(grey.expand(-1, 3, -1, -1)).mean(dim=1, keepdim=True)
    torch.testing.assert_close(pre(grey, (80, 96)), expected, atol=1e-6, rtol=0)
    _, grey_net = gan(channels=1, tile=16, halo=8)
    rgb = torch.rand(1, 3, 20, 24)
    planes = torch.cat([grey_net.upscale(rgb[:, i : i + 1]) for i in range(3)], dim=1)
    torch.testing.assert_close(grey_net(rgb, (80, 96)), planes, atol=1e-6, rtol=0)
    _, four = gan(channels=4, tile=32)
    with pytest.raises(PrescalerError, match="4-channel"):
        four(rgb, (80, 96))


def test_gan_cancel_before_every_tile() -> None:
    _, pre = gan(tile=16, halo=4)
    calls = []

    def cancel() -> None:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pre(torch.rand(1, 3, 40, 40), (160, 160), cancel)  # 9 tiles; stops before the 4th
    assert len(calls) == 4


def test_gan_wrong_scale_is_named() -> None:
    torch.manual_seed(0)
    pre = GanPrescaler(TinyRRDBNet(), 2)
    with pytest.raises(PrescalerError, match="scale really 2"):
        pre(torch.rand(1, 3, 20, 20), (40, 40))


def test_make_prescaler(tmp_path: Path) -> None:
    assert isinstance(make_prescaler(None), BicubicPrescaler)
    assert isinstance(make_prescaler("Bicubic"), BicubicPrescaler)
    with pytest.raises(PrescalerError, match="Unknown pre-scaler 'lanczos'"):
        make_prescaler("lanczos")
    with pytest.raises(PrescalerError, match="not found"):
        make_prescaler(tmp_path / "missing.pth")


def test_missing_spandrel_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "4x_esrgan.pth"
    torch.save(TinyRRDBNet().state_dict(), weights)
    monkeypatch.setitem(sys.modules, "spandrel", None)  # what an absent package looks like to `import`
    with pytest.raises(PrescalerError, match="needs the optional package spandrel: pip install spandrel"):
        make_prescaler(weights)


@pytest.mark.skipif(importlib.util.find_spec("spandrel") is not None, reason="spandrel is installed")
def test_spandrel_really_absent(tmp_path: Path) -> None:
    weights = tmp_path / "4x_esrgan.safetensors"
    weights.write_bytes(b"not read: the import fails first")
    with pytest.raises(PrescalerError, match="pip install spandrel"):
        load_gan_prescaler(weights)


class _BrokenImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import spandrel`` fail the way a torchvision built for another torch does."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        return importlib.machinery.ModuleSpec(name, self) if name == "spandrel" else None

    def create_module(self, spec: object) -> None:
        return None

    def exec_module(self, module: object) -> None:
        raise RuntimeError("operator torchvision::nms does not exist")


def test_broken_spandrel_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "4x.pth"
    weights.write_bytes(b"x")
    monkeypatch.delitem(sys.modules, "spandrel", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenImport(), *sys.meta_path])
    with pytest.raises(PrescalerError, match=r"installed but does not import .*torchvision::nms"):
        load_gan_prescaler(weights)


def fake_spandrel(purpose: str = "SR", in_channels: int = 3, out_channels: int = 3) -> types.ModuleType:
    """Just the part of spandrel's API that the loader uses (ModelLoader, ImageModelDescriptor)."""

    class ImageModelDescriptor:
        def __init__(self, model: nn.Module) -> None:
            self.model, self.purpose, self.scale = model, purpose, 4
            self.input_channels, self.output_channels = in_channels, out_channels
            self.supports_half, self.supports_bfloat16 = False, True
            self.architecture = types.SimpleNamespace(name="ESRGAN")

        def to(self, device: object, dtype: torch.dtype) -> ImageModelDescriptor:
            self.model.to(device=device, dtype=dtype)
            return self

        def eval(self) -> ImageModelDescriptor:
            self.model.eval()
            return self

        def __call__(self, image: torch.Tensor) -> torch.Tensor:
            return self.model(image).clamp_(0, 1)

    class ModelLoader:
        def load_from_file(self, path: Path) -> ImageModelDescriptor:
            if Path(path).read_bytes() == b"garbage":
                raise ValueError("Unsupported model file")
            torch.manual_seed(0)
            return ImageModelDescriptor(TinyRRDBNet())

    return types.SimpleNamespace(ModelLoader=ModelLoader, ImageModelDescriptor=ImageModelDescriptor)


def test_load_gan_prescaler_with_spandrels_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "4x.pth"
    weights.write_bytes(b"weights")
    monkeypatch.setitem(sys.modules, "spandrel", fake_spandrel())
    pre = make_prescaler(weights, "cpu", torch.float16)
    assert isinstance(pre, GanPrescaler) and pre.scale == 4 and pre.in_channels == 3
    assert pre.dtype == torch.float32  # this architecture does not support half precision
    assert pre(torch.rand(1, 3, 10, 12), (40, 48)).shape == (1, 3, 40, 48)

    monkeypatch.setitem(sys.modules, "spandrel", fake_spandrel(purpose="FaceSR"))
    with pytest.raises(PrescalerError, match="not an image super-resolution model"):
        load_gan_prescaler(weights)
    monkeypatch.setitem(sys.modules, "spandrel", fake_spandrel(in_channels=3, out_channels=1))
    with pytest.raises(PrescalerError, match="3 to 1 channels"):
        load_gan_prescaler(weights)
    weights.write_bytes(b"garbage")
    with pytest.raises(PrescalerError, match="not a GAN upscaler that spandrel can read"):
        load_gan_prescaler(weights)
