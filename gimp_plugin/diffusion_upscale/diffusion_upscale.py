#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters → Enhance → Diffusion Upscale… / Diffusion Colorize….

The thin GIMP side: read the layer (or the selection's region and its soft values) with GEGL, send
it to the backend through the one client, and land the result as a new layer in one undo group.
Everything that does not need GIMP is in ``diffusion_upscale_core`` (tested without GIMP).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, GLib, GObject  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import diffusion_upscale_core as core  # noqa: E402

client = core.client
PLUGIN_DIR = Path(__file__).resolve().parent
EIGHT_BIT = (Gimp.Precision.U8_LINEAR, Gimp.Precision.U8_NON_LINEAR, Gimp.Precision.U8_PERCEPTUAL)


class DiffusionUpscale(Gimp.PlugIn):
    def do_query_procedures(self) -> list[str]:
        return [core.PROC_UPSCALE, core.PROC_COLORIZE]

    def do_set_i18n(self, name: str) -> bool:
        return False

    def do_create_procedure(self, name: str) -> Gimp.Procedure:
        task = core.TASK_OF[name]
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run, task)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        if task == "upscale":
            procedure.set_menu_label("Diffusion _Upscale...")
            procedure.set_documentation(
                "Upscale and restore with a diffusion model",
                "Sends the active layer, or the selection with some context around it, to the "
                "GIMP Diffusion Upscale backend (PASD) and adds the restored, upscaled result as a new "
                "layer. The selection gets its own fidelity.",
                name,
            )
        else:
            procedure.set_menu_label("Diffusion _Colorize...")
            procedure.set_documentation(
                "Colorize with a diffusion model",
                "Sends the active layer, or the selection with some context around it, to the "
                "GIMP Diffusion Upscale backend (PASD colorization) and adds the colours as a new layer "
                "that keeps the original's luminance.",
                name,
            )
        procedure.set_attribution("GIMP Diffusion Upscale", "GIMP Diffusion Upscale contributors", "2026")
        procedure.add_menu_path("<Image>/Filters/Enhance")
        flags = GObject.ParamFlags.READWRITE
        for arg in core.arguments_for(task):
            if arg.kind == "int":
                procedure.add_int_argument(
                    arg.name, arg.nick, arg.blurb, int(arg.low), int(arg.high), arg.default, flags
                )
            elif arg.kind == "double":
                procedure.add_double_argument(
                    arg.name, arg.nick, arg.blurb, arg.low, arg.high, arg.default, flags
                )
            elif arg.kind == "string":
                procedure.add_string_argument(arg.name, arg.nick, arg.blurb, arg.default, flags)
            elif arg.kind == "boolean":
                procedure.add_boolean_argument(arg.name, arg.nick, arg.blurb, arg.default, flags)
            else:
                choice = Gimp.Choice.new()
                for index, (ident, label) in enumerate(arg.choices):
                    choice.add(ident, index, label, "")
                procedure.add_choice_argument(arg.name, arg.nick, arg.blurb, choice, arg.default, flags)
        return procedure


def run(procedure, run_mode, image, drawables, config, task):  # type: ignore[no-untyped-def]
    """The procedure: never a traceback, never a half-made layer; plain-words errors.

    Interactive runs open the PySide6 dialog (previews, progress) through the backend
    environment's Python; without one configured, or when it cannot start, GIMP's own dialog.
    """
    interactive = run_mode == Gimp.RunMode.INTERACTIVE
    try:
        values = {arg.name: config.get_property(arg.name) for arg in core.arguments_for(task)}
        settings = core.RunSettings.from_values(task, values)
        runner = Runner(image, drawables, settings, interactive)
        if interactive:
            done = runner.run_with_dialog(procedure, config)
            if done is None:
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
            for name, value in done.values.items():  # GIMP remembers them as the last values
                config.set_property(name, value)
        else:
            runner.run()
    except core.PluginError as exc:
        return _fail(procedure, str(exc))
    except Exception as exc:  # a bug of ours: still a message, not a traceback dialog
        return _fail(procedure, f"Diffusion {task} failed unexpectedly ({type(exc).__name__}: {exc}).")
    finally:
        Gimp.progress_end()
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


def _ask(procedure, config) -> bool:  # type: ignore[no-untyped-def]
    """GIMP's own dialog for the arguments (the PySide6 dialog with previews replaces it when present)."""
    gi.require_version("GimpUi", "3.0")
    from gi.repository import GimpUi

    GimpUi.init(procedure.get_name())
    dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config)
    dialog.fill(None)
    accepted = dialog.run()
    dialog.destroy()
    return bool(accepted)


def _fail(procedure, message: str):  # type: ignore[no-untyped-def]
    Gimp.message(message)
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error.new_literal(
        GLib.quark_from_string("diffusion-upscale"), message, 0))  # fmt: skip


@dataclass
class Input:
    """What the run reads from GIMP: the layer, the region, the selection, the pixels."""

    layer: object
    region: core.Rect
    selection: core.Rect | None
    image: client.RawImage
    mask: client.RawImage | None


class Runner:
    def __init__(self, image, drawables, settings: core.RunSettings, interactive: bool) -> None:  # type: ignore[no-untyped-def]
        self.image = image
        self.drawables = drawables
        self.settings = settings
        self.interactive = interactive
        self.task = settings.task

    def read_input(self) -> Input:
        layer = self._source_layer()
        _, ox, oy = layer.get_offsets()
        layer_rect = core.Rect(ox, oy, layer.get_width(), layer.get_height())
        _, non_empty, x1, y1, x2, y2 = Gimp.Selection.bounds(self.image)
        selection = core.Rect(x1, y1, x2 - x1, y2 - y1) if non_empty else None
        region = core.plan_region(layer_rect, selection, int(self.settings.get("context-margin")))
        high = self.image.get_precision() not in EIGHT_BIT  # deeper images travel as 16-bit
        fmt = core.pixel_format(layer.is_gray(), layer.has_alpha(), high)

        Gimp.progress_init(f"Diffusion {self.task}: reading the layer")
        local = region.relative_to(layer_rect)
        pixels = layer.get_buffer().get(_rect(local), 1.0, fmt.babl, Gegl.AbyssPolicy.CLAMP)
        image = client.RawImage(region.width, region.height, fmt.channels, fmt.dtype, pixels)
        mask = None
        if selection is not None:
            mfmt = core.mask_format(high)
            values = (
                self.image.get_selection()
                .get_buffer()
                .get(_rect(region), 1.0, mfmt.babl, Gegl.AbyssPolicy.NONE)
            )
            mask = client.RawImage(region.width, region.height, 1, mfmt.dtype, values)
        return Input(layer, region, selection, image, mask)

    def run(self) -> None:
        """Non-interactive: the procedure's arguments straight to the backend."""
        source = self.read_input()
        Gimp.progress_set_text(f"Diffusion {self.task}: connecting to the backend")
        backend = core.load_backend_settings(PLUGIN_DIR)
        connection = core.connect(backend, on_wait=lambda seconds: Gimp.progress_pulse())
        job, result = self._process(connection, source.image, source.mask)
        self.apply(source, core.Outcome.from_job(job), result, connection)

    def run_with_dialog(self, procedure, config) -> core.RunSettings | None:  # type: ignore[no-untyped-def]
        """Interactive: the PySide6 dialog runs the job; None when the user canceled.

        The pixels travel through a private run folder (``client.Handoff``), removed when the run
        ends. A result the dialog finished but this run could not add (the image was closed) is kept
        and offered the next time the same input is opened; leftovers of killed runs are swept first.
        """
        source = self.read_input()
        backend = core.load_backend_settings(PLUGIN_DIR)
        if not backend.python:
            return self._run_with_gimp_dialog(procedure, config, source)
        handoff = client.Handoff()
        handoff.sweep()
        folder = handoff.new_run()
        try:
            return self._dialog_run(procedure, config, source, backend, handoff, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _dialog_run(self, procedure, config, source: Input, backend, handoff, folder: Path):  # type: ignore[no-untyped-def]
        title = self.image.get_name() or "Untitled"
        region = source.region
        key = client.input_key(
            self.task, f"{region.x},{region.y},{region.width},{region.height}",
            f"{self.image.get_width()}x{self.image.get_height()}", source.image.npy_header(),
            bytes(source.image.data), bytes(source.mask.data) if source.mask is not None else b"",
        )  # fmt: skip
        kept = handoff.undelivered(key)
        handle = Gimp.progress_get_window_handle()
        job = core.dialog_job(
            self.task, folder, backend, self.settings, title, source.mask is not None,
            about=core.describe_input(title, source.layer.get_name(), region, source.selection),
            window=core.window_ref(bytes(handle.get_data()) if handle is not None else None),
            key=key, undelivered=kept.folder if kept is not None else None,
        )  # fmt: skip
        client.write_npy(job.image, source.image)
        if source.mask is not None and job.mask:
            client.write_npy(job.mask, source.mask)
        Gimp.progress_init(f"Diffusion {self.task}: the dialog is open")

        def image_gone() -> str | None:
            if self.image.is_valid() and source.layer.is_valid():
                return None
            return "the image (or its layer) was closed in GIMP"

        try:
            answer = core.run_dialog(backend, job, folder / "job.json", watch=image_gone)
        except core.DialogStopped as exc:
            if (
                Path(job.answer).is_file()
                and Path(job.result).is_file()
                and _keep(handoff, folder, key, title)
            ):
                raise core.PluginError(core.KEPT_MESSAGE.format(task=self.task)) from exc
            Gimp.message(f"Diffusion {self.task} stopped: {exc}. Nothing was changed.")
            return None
        except core.EnvironmentBroken:
            raise  # GIMP's own dialog would need the same environment: one message, not two
        except core.PluginError as exc:
            Gimp.message(f"{exc}\nUsing GIMP's own dialog instead.")
            return self._run_with_gimp_dialog(procedure, config, source)
        if answer is None:
            return None
        try:
            if image_gone() is not None:
                raise core.PluginError("the image was closed")
            result = client.read_npy(job.result)
            self.settings = core.settings_from_answer(self.task, answer, self.settings)
            self.apply(source, core.Outcome.from_answer(answer), result)
        except Exception as exc:
            if not _keep(handoff, folder, key, title):  # finished work is never dropped if it can be kept
                raise
            raise core.PluginError(f"{exc}. {core.KEPT_MESSAGE.format(task=self.task)}") from exc
        handoff.discard(key)  # applied: an older undelivered result for this input is done with
        return self.settings

    def _run_with_gimp_dialog(self, procedure, config, source: Input) -> core.RunSettings | None:  # type: ignore[no-untyped-def]
        if not _ask(procedure, config):
            return None
        values = {arg.name: config.get_property(arg.name) for arg in core.arguments_for(self.task)}
        self.settings = core.RunSettings.from_values(self.task, values)
        backend = core.load_backend_settings(PLUGIN_DIR)
        connection = core.connect(backend, on_wait=lambda seconds: Gimp.progress_pulse())
        job, result = self._process(connection, source.image, source.mask)
        self.apply(source, core.Outcome.from_job(job), result, connection)
        return self.settings

    def apply(self, source: Input, outcome: core.Outcome, result, connection=None) -> None:  # type: ignore[no-untyped-def]
        scale = self.settings.scale
        region = source.region
        if (result.width, result.height) != (region.width * scale, region.height * scale):
            raise core.PluginError(
                f"The backend returned {result.width}×{result.height} pixels, expected "
                f"{region.width * scale}×{region.height * scale}; nothing was changed."
            )
        Gimp.progress_set_text(f"Diffusion {self.task}: adding the result")
        foreground = self._foreground(outcome, connection)
        if self.settings.get("output") == "image":
            self._new_image(source.layer, region, source.selection, outcome, result, foreground)
        else:
            self._new_layer(source.layer, region, source.selection, outcome, result, foreground)
        Gimp.displays_flush()

    def _foreground(self, outcome: core.Outcome, connection=None):  # type: ignore[no-untyped-def]
        """The soft foreground the backend used, when faces were part of it and the user wants it as
        a channel; a problem fetching it is reported and never costs the result."""
        if not (self.settings.get("faces-channel") and outcome.result.get("faces") and outcome.job_id):
            return None
        try:
            if connection is None:
                connection = core.connect(core.load_backend_settings(PLUGIN_DIR))
            return connection.foreground(outcome.job_id)
        except (client.ClientError, OSError) as exc:
            Gimp.message(
                f"The faces' mask could not be fetched from the backend ({exc}); the result is added."
            )
            return None

    def _add_foreground_channel(self, image, foreground, rect: core.Rect) -> None:  # type: ignore[no-untyped-def]
        """The foreground as a hidden channel over ``rect`` (output pixels), to refine and reuse."""
        if foreground is None:
            return
        colour = Gegl.Color.new("red")
        channel = Gimp.Channel.new(
            image, core.FACES_CHANNEL_NAME, image.get_width(), image.get_height(), 50.0, colour
        )
        image.insert_channel(channel, None, 0)
        channel.set_visible(False)
        buffer = channel.get_buffer()
        buffer.set(_rect(rect), "Y u8", bytes(foreground.data))
        buffer.flush()

    def _source_layer(self):  # type: ignore[no-untyped-def]
        if len(self.drawables) != 1:
            raise core.PluginError("Select exactly one layer to process.")
        drawable = self.drawables[0]
        if not isinstance(drawable, Gimp.Layer) or isinstance(drawable, Gimp.LayerMask):
            raise core.PluginError("Select a layer (not a channel or a layer mask) to process.")
        return drawable

    def _process(self, connection, image, mask):  # type: ignore[no-untyped-def]
        try:
            Gimp.progress_set_text(f"Diffusion {self.task}: sending the image")
            image_id = connection.upload(image).id
            mask_id = connection.upload(mask).id if mask is not None else None
            job = connection.submit(image_id, self.settings.backend_params(), mask_id, self.settings.model)

            def show(info) -> None:  # type: ignore[no-untyped-def]
                Gimp.progress_set_text(core.progress_text(self.task, info))
                Gimp.progress_update(max(0.0, min(1.0, info.progress.fraction)))

            job = connection.wait(job.id, on_progress=show)
            Gimp.progress_set_text(f"Diffusion {self.task}: receiving the result")
            return job, connection.result_image(job.id)
        except client.JobFailed as exc:
            raise core.PluginError(f"The backend could not {self.task} the image: {exc}") from exc
        except client.JobCanceled as exc:
            raise core.PluginError(f"The {self.task} job was canceled: {exc}") from exc
        except client.ApiError as exc:
            raise core.PluginError(client.gui_words(exc, "Install… in the plug-in's dialog")) from exc
        except client.ClientError as exc:
            raise core.PluginError(str(exc)) from exc

    # ------------------------------------------------------------------ output
    def _layer_type(self, channels: int):  # type: ignore[no-untyped-def]
        return {
            1: Gimp.ImageType.GRAY_IMAGE,
            2: Gimp.ImageType.GRAYA_IMAGE,
            3: Gimp.ImageType.RGB_IMAGE,
            4: Gimp.ImageType.RGBA_IMAGE,
        }[channels]

    def _mask_values(self, region: core.Rect, scale: int) -> tuple[str, bytes]:
        """The selection over the region at output scale (read before the canvas changes)."""
        mfmt = core.mask_format(True)
        values = (
            self.image.get_selection()
            .get_buffer()
            .get(_rect(region.scaled(scale)), float(scale), mfmt.babl, Gegl.AbyssPolicy.NONE)
        )
        return mfmt.babl, values

    def _fill(self, target, result, mask_values) -> None:  # type: ignore[no-untyped-def]
        self._fill_pixels(target, result)
        self._finish_layer(target, result, mask_values)

    def _fill_pixels(self, target, result) -> None:  # type: ignore[no-untyped-def]
        fmt = core.result_format(result.channels, result.dtype)
        whole = Gegl.Rectangle.new(0, 0, result.width, result.height)
        buffer = target.get_buffer()
        buffer.set(whole, fmt.babl, bytes(result.data))
        buffer.flush()

    def _finish_layer(self, target, result, mask_values) -> None:  # type: ignore[no-untyped-def]
        """The layer mask from the selection and the colour mode (once the layer is in the image)."""
        whole = Gegl.Rectangle.new(0, 0, result.width, result.height)
        if mask_values is not None:
            layer_mask = target.create_mask(Gimp.AddMaskType.WHITE)
            target.add_mask(layer_mask)
            mask_buffer = layer_mask.get_buffer()
            mask_buffer.set(whole, mask_values[0], mask_values[1])
            mask_buffer.flush()
        if self.task == "colorize" and self.settings.get("color-mode") == "lch-color":
            target.set_mode(Gimp.LayerMode.LCH_COLOR)
        target.update(0, 0, result.width, result.height)

    def _parasite(self, outcome: core.Outcome, region: core.Rect):  # type: ignore[no-untyped-def]
        record = core.run_record(self.settings, outcome, region)
        return Gimp.Parasite.new(
            core.PARASITE_NAME, Gimp.PARASITE_PERSISTENT | Gimp.PARASITE_UNDOABLE, list(record)
        )

    def _new_layer(self, source, region, selection, outcome, result, foreground=None) -> None:  # type: ignore[no-untyped-def]
        """The result as a layer above the source, in one undo step.

        Upscaling scales the whole image first (every layer, channel and the selection, as Image →
        Scale Image does), so all layers stay aligned and the restored pixels sit exactly over their
        source area; the source layer stays below as the scaled original to compare with.
        """
        image = self.image
        scale = self.settings.scale
        width, height = image.get_width(), image.get_height()
        mask_values = self._mask_values(region, scale) if selection is not None else None
        name = core.layer_name(self.task, scale, outcome.seed)
        needs_rgb = result.channels >= 3 and image.get_base_type() == Gimp.ImageBaseType.GRAY

        def make_layer():  # type: ignore[no-untyped-def]
            layer = Gimp.Layer.new(
                image, name, result.width, result.height, self._layer_type(result.channels), 100.0,
                Gimp.LayerMode.NORMAL,
            )  # fmt: skip
            self._fill_pixels(layer, result)
            return layer

        # The pixels go into the new layer before the image changes (an RGB layer needs an RGB image,
        # so for a grey one, right after the conversion): a failure there leaves the image as it was.
        created = None if needs_rgb else make_layer()
        image.undo_group_start()
        inserted = converted = scaled = False
        try:
            if needs_rgb:
                image.convert_rgb()  # colorizing a greyscale image: the source's grey values stay as they are
                converted = True
                created = make_layer()
            if scale > 1:
                image.scale(width * scale, height * scale)
                scaled = True
            image.insert_layer(created, source.get_parent(), image.get_item_position(source))
            inserted = True
            created.set_offsets(region.x * scale, region.y * scale)
            self._finish_layer(created, result, mask_values)
            created.attach_parasite(self._parasite(outcome, region))
            self._add_foreground_channel(image, foreground, region.scaled(scale))
        except Exception as exc:
            # Remove what was added and restore the mode; a scaled image can only be restored
            # exactly by GIMP's undo (scaling back would blur it), so the message says so.
            if inserted:
                image.remove_layer(created)
            if converted and not scaled:
                image.convert_grayscale()
            if scaled:
                raise core.PluginError(
                    f"{exc}. The image was already scaled; Edit → Undo restores it exactly."
                ) from exc
            raise
        finally:
            image.undo_group_end()

    def _new_image(self, source, region, selection, outcome, result, foreground=None) -> None:  # type: ignore[no-untyped-def]
        scale = self.settings.scale
        mask_values = self._mask_values(region, scale) if selection is not None else None
        base = Gimp.ImageBaseType.RGB if result.channels >= 3 else Gimp.ImageBaseType.GRAY
        precision = self.image.get_precision()
        image = Gimp.Image.new_with_precision(result.width, result.height, base, precision)
        try:
            image.undo_disable()
            name = core.layer_name(self.task, scale, outcome.seed)
            layer = Gimp.Layer.new(
                image, name, result.width, result.height, self._layer_type(result.channels), 100.0,
                Gimp.LayerMode.NORMAL,
            )  # fmt: skip
            image.insert_layer(layer, None, 0)
            self._fill(layer, result, mask_values)
            layer.attach_parasite(self._parasite(outcome, region))
            self._add_foreground_channel(image, foreground, core.Rect(0, 0, result.width, result.height))
            image.undo_enable()
        except Exception:
            image.delete()
            raise
        if self.interactive:
            Gimp.Display.new(image)


def _keep(handoff, folder: Path, key: str, title: str) -> bool:  # type: ignore[no-untyped-def]
    """Keep a finished result for the next run on this input; False when it cannot be kept."""
    try:
        handoff.keep(folder, key, title)
    except (OSError, ValueError, TypeError, AttributeError):
        return False
    return True


def _rect(r: core.Rect):  # type: ignore[no-untyped-def]
    return Gegl.Rectangle.new(r.x, r.y, r.width, r.height)


if __name__ == "__main__":
    Gimp.main(DiffusionUpscale.__gtype__, sys.argv)
