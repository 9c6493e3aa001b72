"""Record the reference PASD's personalized-model loading as test fixtures (run by a developer, not CI).

``tests/test_styles_parity.py`` compares ``backend.models.pasd.styles.apply_style`` with the reference's
``load_dreambooth_lora`` (``pasd/myutils/misc.py`` and ``convert_lora_safetensor_to_diffusers.py`` of
github.com/yangxy/PASD). The reference needs diffusers 0.29.2 and transformers 4.44, so it runs in its
own environment, in two steps:

1. In the project's environment, write the tiny inputs (a tiny PASD model and style files, from
   ``backend/models/tiny.py`` and ``backend/models/pasd/tiny_style.py`` with fixed seeds) and their
   digests into a work folder::

       python tools/make_style_fixtures.py write /tmp/style-work

2. In the reference environment (``torch diffusers==0.29.2 transformers==4.44.2 accelerate safetensors``)
   with a checkout of yangxy/PASD, apply the reference to them and record the results::

       python tools/make_style_fixtures.py record /tmp/style-work tests/fixtures/styles \\
           --pasd-repo ~/src/PASD [--pasd-commit SHA]

or both at once from the project's environment, naming the reference environment's Python::

    python tools/make_style_fixtures.py all tests/fixtures/styles \\
        --reference-python /tmp/refvenv/bin/python --pasd-repo /tmp/PASD

Cases: the single-file ``.safetensors`` checkpoint at ``blending_alpha`` 1.0 and 0.5, and the kohya LoRA
(with ``.alpha`` keys, which the reference ignores) at ``multiplier`` 0.6, each on a freshly loaded tiny
PASD UNet (the reference class), VAE and text encoder. The inputs are not stored: the test writes them
again with the same seeds and checks their digests against ``reference.json`` before comparing. For
each case and module, the tensors the reference changed are stored in ``reference.safetensors`` (under
``case/module/key``; a module whose result equals an earlier case's is stored once, see ``same_as``) and
the number of tensors it changed and left alone is noted (a test reads the others as unchanged).

Shims, none touching the reference's files: those of ``tools/make_reference_fixtures.py`` for importing
its UNet without basicsr (``_rrdb_free_shims``); and, because 0.29.2's ``convert_ldm_clip_checkpoint``
builds its CLIPTextModel from the hub config of ``openai/clip-vit-large-patch14`` (a download), the
``CLIPTextConfig`` name in ``diffusers.pipelines.stable_diffusion.convert_from_ckpt`` is replaced by one
whose ``from_pretrained`` returns the tiny text encoder's config. The reference's ``.ckpt`` branch
fails with a NameError (``is_lora`` is unset there), so ``.ckpt`` files are not recorded; the tests check
that a ``.ckpt`` gives what its ``.safetensors`` gives.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BASE_SEED = 11  # the tiny PASD model (full variant) the styles are applied to
STYLE_SEED = 7  # the style files (tiny_style.TINY_STYLE_SEED)
MULTIPLIER = 0.6
CASES: dict[str, dict[str, Any]] = {
    "checkpoint_alpha1": {"file": "checkpoint", "blending_alpha": 1.0},
    "checkpoint_alpha05": {"file": "checkpoint", "blending_alpha": 0.5},
    "lora_m06": {"file": "lora", "multiplier": MULTIPLIER},
}
MODULES = ("unet", "vae", "text_encoder")
OUTPUTS = "reference.safetensors"
META = "reference.json"
INPUTS = "inputs.json"
ROOT = Path(__file__).resolve().parents[1]


def write_inputs(work: Path) -> dict[str, Any]:
    """The tiny model and style files (project environment) and the digests of their tensors."""
    sys.path.insert(0, str(ROOT))
    from safetensors.torch import load_file

    from backend.models.pasd.tiny_style import state_digest, write_style_files
    from backend.models.tiny import write_tiny_model

    base = write_tiny_model(work / "base", "full", seed=BASE_SEED)
    files = write_style_files(work / "styles", base, seed=STYLE_SEED)
    paths = {
        "checkpoint": files.checkpoint,
        "lora": files.lora,
        "base_unet": base / "unet" / "diffusion_pytorch_model.safetensors",
        "base_vae": base / "vae" / "diffusion_pytorch_model.safetensors",
        "base_text_encoder": base / "text_encoder" / "model.safetensors",
    }
    inputs = {
        "base_seed": BASE_SEED,
        "style_seed": STYLE_SEED,
        "files": {name: str(path.relative_to(work)) for name, path in paths.items()},
        "digests": {name: state_digest(load_file(str(path))) for name, path in paths.items()},
    }
    (work / INPUTS).write_text(json.dumps(inputs, indent=2, sort_keys=True))
    print("wrote", work)
    return inputs


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _import_reference(pasd_repo: Path) -> tuple[Any, Any, Any, Any]:
    """The reference's UNet class and ``load_dreambooth_lora``, and the loaders of the other parts."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_reference_fixtures import _rrdb_free_shims, _strict_load, _strict_text_encoder

    _rrdb_free_shims(pasd_repo)
    from pasd.models.pasd.unet_2d_condition import UNet2DConditionModel
    from pasd.myutils.misc import load_dreambooth_lora

    def load_unet(base: Path) -> Any:
        return _strict_load(UNet2DConditionModel, base / "unet")

    def load_text_encoder(base: Path) -> Any:
        from transformers import CLIPTextModel

        return _strict_text_encoder(CLIPTextModel, base, "text_encoder")

    return load_dreambooth_lora, load_unet, load_text_encoder, UNet2DConditionModel


def _tiny_clip_config(config: Any) -> None:
    """0.29.2's convert_ldm_clip_checkpoint reads openai/clip-vit-large-patch14's config from the hub:
    give it the tiny text encoder's instead."""
    import diffusers.pipelines.stable_diffusion.convert_from_ckpt as convert_from_ckpt

    class TinyCLIPTextConfig:
        @staticmethod
        def from_pretrained(name: str, **_: Any) -> Any:
            assert name == "openai/clip-vit-large-patch14", name
            return config

    convert_from_ckpt.CLIPTextConfig = TinyCLIPTextConfig


def record(work: Path, out: Path, pasd_repo: Path, commit: str | None) -> None:
    """Apply the reference to fresh copies of the tiny modules per case and store what it changed."""
    import diffusers
    import torch
    import transformers
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    load_dreambooth_lora, load_unet, load_text_encoder, _ = _import_reference(pasd_repo)
    inputs = json.loads((work / INPUTS).read_text())
    base = work / "base"
    tensors: dict[str, torch.Tensor] = {}
    cases: dict[str, Any] = {}
    stored: dict[str, dict[str, torch.Tensor]] = {}  # "case/module" → its result, for same_as
    for name, case in CASES.items():
        unet = load_unet(base)
        vae = AutoencoderKL.from_pretrained(str(base / "vae")).eval()
        text_encoder = load_text_encoder(base)
        _tiny_clip_config(text_encoder.config)
        before = {
            "unet": _cloned(unet),
            "vae": _cloned(vae),
            "text_encoder": _cloned(text_encoder),
        }
        path = str(work / inputs["files"][case["file"]])
        with torch.no_grad():
            result = load_dreambooth_lora(
                unet,
                vae,
                text_encoder,
                path,
                blending_alpha=case.get("blending_alpha", 1.0),
                multiplier=case.get("multiplier", MULTIPLIER),
            )
        after = dict(zip(MODULES, (_cloned(m) for m in result), strict=True))
        cases[name] = {"settings": case, "modules": {}}
        for module in MODULES:
            old, new = before[module], after[module]
            if set(old) != set(new):
                raise SystemExit(f"{name}/{module}: the reference changed the keys: {set(old) ^ set(new)}")
            if any(t.is_meta for t in new.values()):
                raise SystemExit(f"{name}/{module}: the reference left tensors on the meta device")
            changed = {k: v for k, v in new.items() if not torch.equal(v, old[k])}
            entry: dict[str, Any] = {"changed": len(changed), "unchanged": len(new) - len(changed)}
            same = next(
                (
                    s
                    for s, got in stored.items()
                    if s.endswith(f"/{module}")
                    and got.keys() == changed.keys()
                    and all(torch.equal(got[k], v) for k, v in changed.items())
                ),
                None,
            )
            if same is not None:
                entry["same_as"] = same.split("/")[0]
            elif changed:
                stored[f"{name}/{module}"] = changed
                tensors.update({f"{name}/{module}/{k}": v.contiguous() for k, v in changed.items()})
            cases[name]["modules"][module] = entry
            print(f"{name}/{module}: {len(changed)} changed, {len(new) - len(changed)} unchanged")
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / OUTPUTS))
    reference_files = ("pasd/myutils/misc.py", "pasd/myutils/convert_lora_safetensor_to_diffusers.py")
    meta = {
        "note": (
            "Recorded by tools/make_style_fixtures.py from the reference load_dreambooth_lora; "
            "tensors it changed are in reference.safetensors as case/module/key."
        ),
        "reference": {
            "repository": "github.com/yangxy/PASD",
            "commit": commit or "unknown (a checkout without .git)",
            "files_sha256": {f: _sha256(pasd_repo / f) for f in reference_files},
        },
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "inputs": inputs,
        "cases": cases,
    }
    (out / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print("recorded", out)


def _cloned(module: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write the tiny inputs (project environment)")
    w.add_argument("work", type=Path)
    r = sub.add_parser("record", help="apply the reference and record (reference environment)")
    r.add_argument("work", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--pasd-repo", type=Path, required=True)
    r.add_argument("--pasd-commit", help="the checkout's commit, when it is not a git work tree")
    a = sub.add_parser("all", help="write, then record with the reference environment's Python")
    a.add_argument("out", type=Path)
    a.add_argument("--reference-python", type=Path, required=True)
    a.add_argument("--pasd-repo", type=Path, required=True)
    a.add_argument("--pasd-commit")
    a.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    if args.command == "write":
        write_inputs(args.work)
    elif args.command == "record":
        commit = args.pasd_commit or _git_commit(args.pasd_repo)
        record(args.work, args.out, args.pasd_repo, commit)
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            work = args.work or Path(tmp)
            write_inputs(work)
            command = [
                str(args.reference_python),
                str(Path(__file__).resolve()),
                "record",
                str(work),
                str(args.out),
            ]
            command += ["--pasd-repo", str(args.pasd_repo)]
            if args.pasd_commit:
                command += ["--pasd-commit", args.pasd_commit]
            subprocess.run(command, check=True)


def _git_commit(repo: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


if __name__ == "__main__":
    main()
