"""The knobs of a run as one form; ``values()`` and ``set_values()`` convert to and from
:class:`~gui.settings.DialogSettings`, so the dialog never reads widgets one by one.

Every control has a tooltip that says what it does to the picture. Sizes come from the layouts and
fonts (high-DPI), colours from the style (dark themes).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QMenu,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QWidget,
)

from backend.client import DownloadStatus
from backend.models.registry import FAMILIES, ModelDefaults, recommend_model

from .request import output_size
from .settings import (
    PRESETS,
    SCALES,
    SEED_MAX,
    DialogSettings,
    apply_supir_preset,
    fallback_defaults,
    matching_preset,
    preset_named,
    random_seed,
)
from .widgets import Fold, SliderNumber, format_bytes

TILE_AUTO = 56  # the tile box's lowest value, shown as "Auto" (the smallest real tile is 64)


def _row(form: QFormLayout, text: str, field: QWidget | QLayout, buddy: QWidget | None = None) -> QLabel:
    """A form row whose label's mnemonic (Alt+letter) focuses the field."""
    label = QLabel(text)
    label.setBuddy(buddy if buddy is not None else field)  # type: ignore[arg-type]
    form.addRow(label, field)
    return label


class Controls(QWidget):
    """Preset, task, model (with Install), scale, prompt, fidelities, steps, guidance, seed, host
    options and the Advanced fold."""

    changed = Signal()  # a value that goes into the request changed
    taskChosen = Signal(str)
    installRequested = Signal(str)  # a downloadable model's id

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.task = "upscale"
        self.has_mask = False
        self.image_size = (0, 0)  # width, height of the input: for the output size
        self.models: dict[str, list[dict[str, Any]]] = {"installed": [], "downloadable": []}
        self.models_loaded = False
        self.shown_defaults: ModelDefaults = fallback_defaults(self.task)  # the chosen model's settings
        # The backend's free GPU memory (None: it has no GPU), once its health has said; for the
        # Install menu's recommendation.
        self.backend_gpu: tuple[int | None] | None = None
        self._loading = False
        form = QFormLayout(self)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.form = form

        self.preset = QComboBox()
        self.preset.addItem("Custom", None)
        for preset in PRESETS:
            self.preset.addItem(preset.name, preset.name)
            self.preset.setItemData(self.preset.count() - 1, preset.description, Qt.ItemDataRole.ToolTipRole)
        self.preset.setToolTip(
            "Starting points for steps, guidance and the fidelities: Faithful keeps close to the original, "
            "Creative lets the model invent texture and detail. Changing those knobs shows Custom."
        )
        self.preset.activated.connect(self._preset_chosen)
        _row(form, "Pre&set:", self.preset)

        self.task_combo = QComboBox()
        self.task_combo.addItem("Upscale", "upscale")
        self.task_combo.addItem("Colorize", "colorize")
        self.task_combo.setToolTip(
            "Upscale: enlarge the picture and restore its detail. Colorize: add colour to a black-and-white "
            "picture; its size and tones stay."
        )
        self.task_combo.activated.connect(self._task_chosen)
        _row(form, "Task:", self.task_combo)

        self.model_combo = QComboBox()
        self.model_combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.model_combo.setToolTip(
            "The diffusion model that paints the result. Automatic: the backend's default for this task. "
            "Models differ in how much detail they invent and in speed."
        )
        self.install_button = QToolButton()
        self.install_button.setText("&Install…")
        self.install_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.install_menu = QMenu(self.install_button)
        self.install_menu.triggered.connect(lambda action: self.installRequested.emit(action.data()))
        self.install_button.setMenu(self.install_menu)
        self.install_button.setToolTip("Download a model for this task into the backend's model folder.")
        models_row = QHBoxLayout()
        models_row.addWidget(self.model_combo, 1)
        models_row.addWidget(self.install_button)
        _row(form, "&Model:", models_row, self.model_combo)
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)
        self.model_info.setToolTip(
            "The chosen model's own settings: choosing a model sets the knobs to them (a preset stays "
            "that preset); Balanced is exactly them."
        )
        form.addRow("", self.model_info)
        self.model_combo.activated.connect(self._model_chosen)
        self.download_bar = QProgressBar()
        self.download_bar.setRange(0, 1000)
        self.download_bar.setTextVisible(True)
        self.download_bar.hide()
        form.addRow(self.download_bar)

        self.scale_combo = QComboBox()
        for factor in SCALES:
            self.scale_combo.addItem(f"{factor}×", factor)
        self.scale_combo.setToolTip(
            "How many times larger the result is. 1× restores without enlarging; 4× takes about four "
            "times as long as 2× and invents more of the detail."
        )
        self.size_label = QLabel()
        self.size_label.setToolTip("The result's size in pixels and megapixels.")
        scale_row = QHBoxLayout()
        scale_row.addWidget(self.scale_combo)
        scale_row.addWidget(self.size_label, 1)
        _row(form, "Sca&le:", scale_row, self.scale_combo)

        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("What the picture shows, e.g. old portrait, man in uniform")
        self.prompt.setClearButtonEnabled(True)
        self.prompt.setToolTip(
            "A few words on what the picture shows. The model paints details that fit them, so wrong "
            "words give wrong details (fur on a coat, text in foliage). Empty is fine."
        )
        _row(form, "P&rompt:", self.prompt)
        self.auto_prompt = QCheckBox("Describe the picture a&utomatically")
        self.auto_prompt.setToolTip(
            "A captioning model adds its own words about the picture to the prompt (needs the BLIP model "
            "on the backend; without it this does nothing)."
        )
        form.addRow("", self.auto_prompt)

        self.fidelity_fg = SliderNumber(0.0, 2.0, 0.05)
        self.fidelity_fg.setToolTip(
            "How closely the selected area follows the original: 0 lets the model repaint it freely, 2 keeps "
            "its shapes and textures. Raise it for faces and lettering, lower it for worn textures."
        )
        _row(form, "Selection &fidelity:", self.fidelity_fg, self.fidelity_fg.number)
        self.fidelity_bg = SliderNumber(0.0, 2.0, 0.05)
        self.fidelity_bg.setToolTip(
            "How closely the rest of the image (all of it, without a selection) follows the original: "
            "0 lets the model repaint freely, 2 keeps shapes and textures."
        )
        _row(form, "&Background fidelity:", self.fidelity_bg, self.fidelity_bg.number)

        self.steps = QSpinBox()
        self.steps.setRange(1, 200)
        self.steps.setToolTip(
            "Denoising steps. More give finer, more settled detail; time grows with the count. "
            "20 suits most pictures."
        )
        _row(form, "S&teps:", self.steps)
        self.guidance = QDoubleSpinBox()
        self.guidance.setRange(0.0, 30.0)
        self.guidance.setSingleStep(0.5)
        self.guidance.setDecimals(1)
        self.guidance.setToolTip(
            "How strongly the prompt and the quality words steer the picture. Higher: crisper and more "
            "'finished', but may oversharpen and add artefacts; lower: softer, closer to the input."
        )
        _row(form, "&Guidance:", self.guidance)

        self.seed = QSpinBox()
        self.seed.setRange(0, SEED_MAX)
        self.seed.setToolTip(
            "Where the random noise starts. The same seed and settings give the same picture; another seed "
            "gives different fine details."
        )
        self.dice = QToolButton()
        self.dice.setText("⚄")
        self.dice.setToolTip("Pick a new random seed.")
        self.dice.clicked.connect(lambda: self.seed.setValue(random_seed()))
        self.seed_new = QCheckBox("New each previe&w")
        self.seed_new.setToolTip(
            "Draw a new seed for every Preview, to see other details. Off (the default), the seed stays "
            "until you change it. Apply always uses the seed shown: the one of the last preview, so the "
            "applied details are the ones you approved."
        )
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.dice)
        seed_row.addWidget(self.seed_new)
        _row(form, "See&d:", seed_row, self.seed)

        self.color_mode = QComboBox()
        self.color_mode.addItem("LCh colour layer (original tones stay)", "lch-color")
        self.color_mode.addItem("Normal layer (the model's picture)", "normal")
        self.color_mode.setToolTip(
            "LCh colour: the result goes on a layer in LCh colour mode, so only its colours show and the "
            "original's tones and detail stay exactly. Normal: the model's picture as it is."
        )
        _row(form, "Colour mod&e:", self.color_mode)
        self.output = QComboBox()
        self.output.addItem("New layer", "layer")
        self.output.addItem("New image", "image")
        self.output.setToolTip(
            "New layer: the result is added on top, in place (an upscale enlarges the canvas). "
            "New image: the result opens as an image of its own."
        )
        _row(form, "&Output:", self.output)

        self.advanced = Fold("Ad&vanced", self._build_advanced())
        form.addRow(self.advanced)

        for signal in (
            self.scale_combo.currentIndexChanged,
            self.model_combo.currentIndexChanged,
            self.prompt.textChanged,
            self.auto_prompt.toggled,
            self.fidelity_fg.valueChanged,
            self.fidelity_bg.valueChanged,
            self.steps.valueChanged,
            self.guidance.valueChanged,
            self.quality_words.textChanged,
            self.negative_words.textChanged,
            self.tile.valueChanged,
            self.process_size.valueChanged,
            self.noise.valueChanged,
            self.color_fix.toggled,
        ):
            signal.connect(self._changed)

    def _build_advanced(self) -> QWidget:
        box = QWidget()
        form = QFormLayout(box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setContentsMargins(0, 0, 0, 0)
        self.quality_words = QLineEdit()
        self.quality_words.setToolTip(
            "Words added to the prompt to steer towards a clean, detailed look. Empty: none."
        )
        _row(form, "&Quality words:", self.quality_words)
        self.negative_words = QLineEdit()
        self.negative_words.setToolTip(
            "What the picture should not look like (blur, noise, ...): the model steers away from these."
        )
        _row(form, "&Negative prompt:", self.negative_words)
        words_reset = QPushButton("Default &words")
        words_reset.setAutoDefault(False)
        words_reset.setToolTip("Put the task's default quality words and negative prompt back.")
        words_reset.clicked.connect(self._default_words)
        form.addRow("", words_reset)
        self.tile = QSpinBox()
        self.tile.setRange(TILE_AUTO, 8192)
        self.tile.setSingleStep(8)
        self.tile.setSpecialValueText("Auto")
        self.tile.setSuffix(" px")
        self.tile.setToolTip(
            "Large images are painted in overlapping tiles of this many output pixels, blended without "
            "seams. Auto: as large as free memory allows. Smaller tiles need less memory and take longer."
        )
        _row(form, "Tile si&ze:", self.tile)
        self.process_size = QSpinBox()
        self.process_size.setRange(256, 2048)
        self.process_size.setSingleStep(64)
        self.process_size.setSuffix(" px")
        self.process_size.setToolTip(
            "The short side, in pixels, at which the model works. Larger: more detail, more memory and "
            "time. PASD was trained at 768."
        )
        _row(form, "Process s&ize:", self.process_size)
        self.noise = QSpinBox()
        self.noise.setRange(0, 999)
        self.noise.setSingleStep(10)
        self.noise.setToolTip(
            "How much noise is added to the input before denoising (0–999). Higher lets the model change "
            "more; lower keeps more of the input's look."
        )
        _row(form, "Noise level:", self.noise)
        self._build_sampler(form)
        self.color_fix = QCheckBox("Keep t&he original's colours")
        self.color_fix.setToolTip(
            "Match the result's colours to the original's (wavelet colour fix), so an upscale does not "
            "drift in colour."
        )
        form.addRow("", self.color_fix)
        self.advanced_form = form
        return box

    def _build_sampler(self, form: QFormLayout) -> None:
        """SUPIR's sampler knobs (shown only for a model that has them) and its README's presets."""

        def number(low: float, high: float, step: float, decimals: int, tip: str) -> QDoubleSpinBox:
            box = QDoubleSpinBox()
            box.setRange(low, high)
            box.setSingleStep(step)
            box.setDecimals(decimals)
            box.setToolTip(tip)
            return box

        presets = QHBoxLayout()
        self.supir_presets: dict[str, QPushButton] = {}
        for name, tip in (
            ("Quality", "SUPIR's Quality settings: guidance 6 from 3, fidelity 0.93, more churn noise."),
            ("Fidelity", "SUPIR's Fidelity settings: guidance 4 from 1, fidelity 1."),
        ):
            button = QPushButton(name)
            button.setAutoDefault(False)
            button.setToolTip(tip)
            button.clicked.connect(
                lambda _=False, n=name: self.set_values(apply_supir_preset(self.values(), n))
            )
            presets.addWidget(button)
            self.supir_presets[name] = button
        presets.addStretch(1)
        self.supir_preset_row = QWidget()
        self.supir_preset_row.setLayout(presets)
        presets.setContentsMargins(0, 0, 0, 0)
        _row(form, "SUPIR presets:", self.supir_preset_row)
        self.guidance_start = number(
            0.0, 30.0, 0.5, 1,
            "Guidance at the first step; it moves linearly to Guidance by the last. Low early guidance "
            "keeps faces from ageing and textures from hardening.",
        )  # fmt: skip
        _row(form, "Guidance at &start:", self.guidance_start)
        self.fidelity_start = number(
            -0.05, 2.0, 0.05, 2,
            "Fidelity (control scale) at the first step, moving linearly to the fidelities above by the "
            "last. Constant: the same all along.",
        )  # fmt: skip
        self.fidelity_start.setSpecialValueText("Constant")
        _row(form, "Fidelity at s&tart:", self.fidelity_start)
        self.restoration = number(
            0.0, 6.0, 0.5, 1,
            "Restoration guidance: pulls the first steps towards the degradation-cleaned input, so the "
            "result keeps its shapes (1–6; higher fades out faster). Off: none.",
        )  # fmt: skip
        self.restoration.setSpecialValueText("Off")
        _row(form, "&Restoration guidance:", self.restoration)
        self.restoration_fg = number(
            0.0, 1.0, 0.1, 2, "How much restoration guidance the selection gets (0: none there)."
        )
        self.restoration_bg = number(
            0.0, 1.0, 0.1, 2, "How much restoration guidance the rest of the image gets (0: none there)."
        )
        weights = QHBoxLayout()
        weights.addWidget(QLabel("selection"))
        weights.addWidget(self.restoration_fg)
        weights.addWidget(QLabel("background"))
        weights.addWidget(self.restoration_bg)
        self.restoration_weights = QWidget()
        self.restoration_weights.setLayout(weights)
        weights.setContentsMargins(0, 0, 0, 0)
        _row(form, "…its weight:", self.restoration_weights, self.restoration_fg)
        self.churn = number(
            0.0, 40.0, 0.5, 1, "Noise put back at each step (SUPIR's s_churn): more invents more."
        )
        _row(form, "C&hurn:", self.churn)
        self.churn_noise = number(0.5, 1.5, 0.001, 3, "Scale of that noise (SUPIR's s_noise), around 1.")
        _row(form, "Churn noise:", self.churn_noise)
        self.sampler_rows = [  # restoration guidance stays: every model has it
            self.supir_preset_row,
            self.guidance_start,
            self.fidelity_start,
            self.churn,
            self.churn_noise,
        ]
        for box in (
            self.guidance_start,
            self.fidelity_start,
            self.restoration,
            self.restoration_fg,
            self.restoration_bg,
            self.churn,
            self.churn_noise,
        ):
            box.valueChanged.connect(self._changed)

    # ------------------------------------------------------------------ task and host
    def configure(self, task: str, has_mask: bool, host_options: bool, task_fixed: bool) -> None:
        """What depends on the task and on the host: visible rows and enabled controls."""
        self.task = task
        upscale = task == "upscale"
        self._loading = True
        self.task_combo.setCurrentIndex(self.task_combo.findData(task))
        self._loading = False
        self.task_combo.setEnabled(not task_fixed)
        self.scale_combo.setEnabled(upscale)
        if not upscale:
            self.scale_combo.setCurrentIndex(self.scale_combo.findData(1))
        self.form.setRowVisible(self.color_mode, not upscale and host_options)
        self.form.setRowVisible(self.output, host_options)
        self.advanced_form.setRowVisible(self.color_fix, upscale)
        self.fidelity_fg.setEnabled(has_mask)
        self.has_mask = has_mask
        if not has_mask:
            self.fidelity_fg.setToolTip(
                "There is no selection, so the background fidelity applies to the whole image. Select "
                "an area before opening the dialog to give it its own fidelity."
            )
        self.set_models(self.models, self.models_loaded, self.model_combo.currentData())
        self._changed()

    def _task_chosen(self, index: int) -> None:
        task = self.task_combo.itemData(index)
        if not self._loading and task != self.task:
            self.taskChosen.emit(task)

    # ------------------------------------------------------------------ values
    def values(self) -> DialogSettings:
        """The controls as one value (what is saved, and what the request is built from)."""
        quality, negative = self._words()
        words = self.quality_words.text(), self.negative_words.text()
        return DialogSettings(
            scale=int(self.scale_combo.currentData()),
            model=self.model_combo.currentData(),
            prompt=self.prompt.text(),
            auto_prompt=self.auto_prompt.isChecked(),
            quality_prompt=None if words[0].strip() == quality else words[0],  # None: follow the defaults
            negative_prompt=None if words[1].strip() == negative else words[1],
            steps=self.steps.value(),
            guidance=round(self.guidance.value(), 2),
            seed=self.seed.value(),
            new_seed_per_preview=self.seed_new.isChecked(),
            fidelity_fg=self.fidelity_fg.value(),
            fidelity_bg=self.fidelity_bg.value(),
            process_size=self.process_size.value(),
            added_noise_level=self.noise.value(),
            tile=None if self.tile.value() == TILE_AUTO else self.tile.value(),
            guidance_start=round(self.guidance_start.value(), 2),
            fidelity_start=None if self.fidelity_start.value() < 0 else round(self.fidelity_start.value(), 2),
            restoration=round(self.restoration.value(), 2),
            restoration_fg=round(self.restoration_fg.value(), 2),
            restoration_bg=round(self.restoration_bg.value(), 2),
            churn=round(self.churn.value(), 2),
            churn_noise=round(self.churn_noise.value(), 3),
            color_fix=self.color_fix.isChecked(),
            color_mode=self.color_mode.currentData(),
            output=self.output.currentData(),
        )

    def set_values(self, s: DialogSettings) -> None:
        """Show ``s`` in the controls (the task's words where it has none)."""
        self._loading = True
        try:
            scale = 1 if self.task == "colorize" else s.scale
            if self.scale_combo.findData(scale) < 0:  # 3× from the host: offer it too
                offered = [self.scale_combo.itemData(i) for i in range(self.scale_combo.count())]
                self.scale_combo.insertItem(sum(f < scale for f in offered), f"{scale}×", scale)
            self.scale_combo.setCurrentIndex(self.scale_combo.findData(scale))
            self.set_models(self.models, self.models_loaded, s.model)
            quality, negative = self._words()  # the model's, now that it is chosen
            self.prompt.setText(s.prompt)
            self.auto_prompt.setChecked(s.auto_prompt)
            self.quality_words.setText(quality if s.quality_prompt is None else s.quality_prompt)
            self.negative_words.setText(negative if s.negative_prompt is None else s.negative_prompt)
            for line in (self.prompt, self.quality_words, self.negative_words):
                line.setCursorPosition(0)  # show the start of long words
            self.steps.setValue(s.steps)
            self.guidance.setValue(s.guidance)
            self.seed.setValue(s.seed)
            self.seed_new.setChecked(s.new_seed_per_preview)
            self.fidelity_fg.setValue(s.fidelity_fg)
            self.fidelity_bg.setValue(s.fidelity_bg)
            self.process_size.setValue(s.process_size)
            self.noise.setValue(s.added_noise_level)
            self.tile.setValue(TILE_AUTO if s.tile is None else s.tile)
            self.guidance_start.setValue(s.guidance_start)
            self.fidelity_start.setValue(-0.05 if s.fidelity_start is None else s.fidelity_start)
            self.restoration.setValue(s.restoration)
            self.restoration_fg.setValue(s.restoration_fg)
            self.restoration_bg.setValue(s.restoration_bg)
            self.churn.setValue(s.churn)
            self.churn_noise.setValue(s.churn_noise)
            self.color_fix.setChecked(s.color_fix)
            self.color_mode.setCurrentIndex(max(0, self.color_mode.findData(s.color_mode)))
            self.output.setCurrentIndex(max(0, self.output.findData(s.output)))
        finally:
            self._loading = False
        self._changed()

    def reset(self) -> None:
        self.set_values(DialogSettings.defaults(self.task, self.shown_defaults))

    def _changed(self, *_: object) -> None:
        if self._loading:
            return
        preset = matching_preset(self.values(), self.shown_defaults)
        self.preset.setCurrentIndex(max(0, self.preset.findData(preset.name if preset else None)))
        out_w, out_h = output_size(*self.image_size, int(self.scale_combo.currentData()))
        self.size_label.setText(f"{out_w} × {out_h} px, {out_w * out_h / 1e6:.2f} MP")
        self.changed.emit()

    def _preset_chosen(self, index: int) -> None:
        preset = preset_named(self.preset.itemData(index) or "")
        if preset is not None:
            self.set_values(preset.apply(self.values(), self.shown_defaults))

    def _default_words(self) -> None:
        quality, negative = self._words()
        self.quality_words.setText(quality)
        self.negative_words.setText(negative)

    # ------------------------------------------------------------------ models
    def _words(self) -> tuple[str, str]:
        return self.shown_defaults.quality_prompt, self.shown_defaults.negative_prompt

    def model_defaults(self, model_id: str | None) -> ModelDefaults:
        """A listed model's own settings for this task (Automatic: the task's default model's);
        PASD's until the backend has listed its models."""
        installed = [m for m in self.models.get("installed", []) if self.task in m.get("tasks", [])]
        entry = next((m for m in installed if m["id"] == model_id), None)
        if entry is None and model_id is None:
            entry = next((m for m in installed if self.task in m.get("default_for", [])), None)
        data = (entry or {}).get("defaults", {}).get(self.task)
        if isinstance(data, dict):
            try:
                return ModelDefaults(**data)
            except TypeError:  # a newer backend's fields: keep what this dialog knows
                pass
        return fallback_defaults(self.task)

    def _model_chosen(self, index: int) -> None:
        """The user picked a model: the knobs follow its own settings (see DialogSettings.with_model)."""
        old = self.shown_defaults
        values = self.values()  # words equal to the old model's defaults become None: they follow
        self.shown_defaults = self.model_defaults(self.model_combo.itemData(index))
        self.set_values(values.with_model(old, self.shown_defaults))
        self._show_model_info()

    def _follow_listed_model(self) -> None:
        """The model list arrived or changed: default words follow the selected model's."""
        values = self.values()
        self.shown_defaults = self.model_defaults(self.model_combo.currentData())
        quality, negative = self._words()
        was, self._loading = self._loading, True
        try:
            if values.quality_prompt is None:
                self.quality_words.setText(quality)
            if values.negative_prompt is None:
                self.negative_words.setText(negative)
        finally:
            self._loading = was
        self._show_model_info()

    def _show_model_info(self) -> None:
        d = self.shown_defaults
        # PASD-SDXL starts from pure noise: there is no added noise level to turn.
        self.noise.setEnabled(d.added_noise_level is not None)
        for row in self.sampler_rows:  # SUPIR's sampler knobs, for the models that have it
            self.advanced_form.setRowVisible(row, d.guidance_start is not None)
        self.restoration_fg.setEnabled(self.has_mask)
        model_id = self.model_combo.currentData()
        listed = self.models.get("installed", [])
        entry = next((m for m in listed if m["id"] == model_id), None)
        if entry is None and model_id is None:  # Automatic: the task's default model
            entry = next((m for m in listed if self.task in m.get("default_for", [])), None)
        known = FAMILIES.get((entry or {}).get("family", ""))
        knobs = f"{d.steps} steps, guidance {d.guidance:g}, fidelity {d.fidelity:g}, {d.process_size} px"
        self.model_info.setText(
            f"{known.short}: its settings are {knobs}" if known else f"The model's settings are {knobs}"
        )

    def set_models(self, models: dict[str, list[dict[str, Any]]], loaded: bool, selected: str | None) -> int:
        """Fill the model list (this task's installed models) and the Install menu; returns how many
        models the task has installed."""
        self.models, self.models_loaded = models, loaded
        installed = [m for m in self.models.get("installed", []) if self.task in m.get("tasks", [])]
        default = next((m["id"] for m in installed if self.task in m.get("default_for", [])), None)
        combo = self.model_combo
        combo.blockSignals(True)
        combo.clear()
        if installed or not loaded:
            combo.addItem(f"Automatic ({default})" if default else "Automatic", None)
        else:
            combo.addItem("No model installed: use Install…", None)
        for model in installed:
            combo.addItem(model["id"], model["id"])
            tip = f"{model.get('description') or ''}\nVariant: {model.get('variant')}"
            tip += f"; licence: {model.get('licence')}"
            combo.setItemData(combo.count() - 1, tip.strip(), Qt.ItemDataRole.ToolTipRole)
        if selected and combo.findData(selected) < 0 and not loaded:
            combo.addItem(selected, selected)  # the stored choice, until the backend lists its models
        combo.setCurrentIndex(max(0, combo.findData(selected)))
        combo.blockSignals(False)
        self._follow_listed_model()

        self.install_menu.clear()
        recommended, why = recommend_model(self.task, self.backend_gpu[0]) if self.backend_gpu else ("", "")
        for model in self.models.get("downloadable", []):
            if self.task in model.get("tasks", []) and not model.get("installed"):
                gpu = model.get("gpu_memory_gb")
                needs = f", needs about {gpu:g} GB GPU" if gpu else ""
                mark = " — recommended" if model["id"] == recommended else ""
                action = self.install_menu.addAction(
                    f"{model['title']} ({format_bytes(model['size_bytes'])}{needs}){mark}"
                )
                action.setData(model["id"])
                tip = f"Licence: {model.get('licence')}\n{model.get('url')}"
                if model.get("terms"):
                    tip += "\nIts licence terms are shown, and must be accepted, before the download."
                if model.get("note"):
                    tip += f"\n{model['note'][:1].upper()}{model['note'][1:]}."
                action.setToolTip(tip + (f"\nRecommended: {why}" if mark else ""))
        self.install_menu.setToolTipsVisible(True)
        return len(installed)

    @property
    def installable(self) -> bool:
        return bool(self.install_menu.actions())

    def show_download(self, status: DownloadStatus | None, model_id: str = "") -> None:
        """The download bar: hidden (None), starting, or bytes of total."""
        if status is None and not model_id:
            self.download_bar.hide()
            return
        self.download_bar.show()
        if status is None:
            self.download_bar.setValue(0)
            self.download_bar.setFormat(f"Downloading {model_id}…")
            return
        fraction = status.bytes_done / status.bytes_total if status.bytes_total else 0.0
        self.download_bar.setValue(round(1000 * min(fraction, 1.0)))
        self.download_bar.setFormat(
            f"Downloading {status.model}: {format_bytes(status.bytes_done)} "
            f"of {format_bytes(status.bytes_total)}"
        )
