"""The knobs of a run as one form; ``values()`` and ``set_values()`` convert to and from
:class:`~gui.settings.DialogSettings`, so the dialog never reads widgets one by one.

Every control has a tooltip that says what it does to the picture. Sizes come from the layouts and
fonts (high-DPI), colours from the style (dark themes).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QStandardItemModel
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
from backend.pipelines.params import FAST_GUIDANCE, FAST_STEPS

from .faces import FacesPanel
from .request import Context, output_size
from .settings import (
    PRESETS,
    SCALES,
    SEED_MAX,
    DialogSettings,
    apply_supir_preset,
    fallback_defaults,
    light_model,
    matching_preset,
    preset_named,
    random_seed,
)
from .widgets import Fold, SliderNumber, format_bytes

TILE_AUTO = 56  # the tile box's lowest value, shown as "Auto" (the smallest real tile is 64)
RESTORATION_TASKS = ("upscale", "colorize")
# Registry entries that are no restoration model, and what each gives the dialog (Install… lists them).
ADD_ONS = {
    "fast": "the fast mode (Fast, LCM, 4 steps) of the PASD SD1.5 upscale models",
    "caption": "the words of “Describe the picture automatically” (caption)",
    "classify": "the ImageNet class words of “Describe the picture automatically”",
    "style": "a Style for the PASD SD1.5 models",
}
STYLE_KINDS = {
    "checkpoint": "an SD1.5 checkpoint, blended into the model's UNet (its VAE and text encoder replace "
    "the model's); strength: how much of it, 1 = all",
    "unet": "an SD1.5 UNet folder, blended into the model's UNet; strength: how much of it, 1 = all",
    "lora": "a LoRA, merged into the model at the strength (its multiplier)",
}
FAST_TIP = (
    f"The fast mode: the LCM-LoRA lets the model finish in {FAST_STEPS} steps at guidance "
    f"{FAST_GUIDANCE:g}, several times quicker, with a little less fine detail. Guidance can still be "
    "raised (up to 9, as PASD's code uses) for a stronger prompt."
)


FOREGROUND_TIP = (
    "How closely the foreground (the selection, and the faces when Foreground uses them) follows the "
    "original: 0 lets the model repaint it freely, 2 keeps its shapes and textures. Raise it for faces "
    "and lettering, lower it for worn textures."
)


def _narrow(combo: QComboBox, characters: int) -> None:
    """A combo that may be narrower than its longest entry (the panel stays narrow; the list shows all)."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(characters)
    combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)


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
        self.install_button.setToolTip(
            "Download a model for this task, or an add-on (the fast mode's LCM-LoRA, the prompt-word "
            "models, a style), into the backend's model folder."
        )
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
            "A model adds its own words about the picture to the prompt (needs the BLIP captioner, or the "
            "ImageNet classifier, on the backend: Install… lists them; without it this does nothing)."
        )
        self.words_source = QComboBox()
        _narrow(self.words_source, 8)
        self.words_source.addItem("caption (BLIP)", "caption")
        self.words_source.addItem("ImageNet class (as ModelScope)", "classify")
        self.words_source.setToolTip(
            "Where the automatic words come from: caption: BLIP describes the picture in a sentence; "
            "ImageNet class: a classifier names what it shows in class words, as ModelScope's PASD does."
        )
        self.auto_prompt.toggled.connect(self.words_source.setEnabled)
        form.addRow("", self.auto_prompt)
        _row(form, "…words from:", self.words_source)  # under its tick box: the panel stays narrow

        self.style_combo = QComboBox()
        self.style_combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.style_combo.addItem("None", None)
        self.style_combo.activated.connect(self._style_chosen)
        self.style_label = _row(form, "St&yle:", self.style_combo)
        self.style_strength = SliderNumber(0.0, 2.0, 0.05)
        _row(form, "Style strength:", self.style_strength, self.style_strength.number)
        self.lora_scaling = QComboBox()
        _narrow(self.lora_scaling, 12)
        self.lora_scaling.addItem("alpha / rank (as trainers and UIs)", "alpha")
        self.lora_scaling.addItem("alpha ignored (as PASD's code)", "reference")
        _row(form, "LoRA scaling:", self.lora_scaling)
        self.sd15 = True  # the chosen model is a PASD SD1.5 one (styles, the fast mode)
        self.styles: list[dict[str, Any]] = []  # the backend's installed styles
        self.fast_mode: bool | None = None  # the backend's LCM-LoRA is installed (None: not listed yet)
        self._before_fast: tuple[int, float] | None = None  # steps and guidance before Fast was ticked
        self._strength_unknown = False  # a stored style at its own strength, before the list says which

        self.foreground = QComboBox()
        _narrow(self.foreground, 12)
        self.foreground.addItem("Selection", "off")
        self.foreground.addItem("Faces", "on")
        self.foreground.addItem("Selection or faces automatically", "auto")
        self.foreground.setToolTip(
            "What gets the foreground fidelity. Selection: the selection only (faces are not used). "
            "Faces: the faces ticked below (with the selection, if any). Automatically: the selection; "
            "without one, the faces, once the two fidelities differ."
        )
        _row(form, "Foreground:", self.foreground)
        self.faces_panel = FacesPanel()
        self.faces_panel.changed.connect(self._changed)
        form.addRow("", self.faces_panel)

        self.fidelity_fg = SliderNumber(0.0, 2.0, 0.05)
        self.fidelity_fg.setToolTip(FOREGROUND_TIP)
        _row(form, "Foreground &fidelity:", self.fidelity_fg, self.fidelity_fg.number)
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
        self.fast = QCheckBox("Fast (LCM, 4 steps)")
        self.fast.setToolTip(FAST_TIP)
        self.fast.toggled.connect(self._fast_toggled)
        steps_row = QHBoxLayout()
        steps_row.addWidget(self.steps, 1)
        steps_row.addWidget(self.fast)
        _row(form, "S&teps:", steps_row, self.steps)
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
            self.words_source.currentIndexChanged,
            self.style_combo.currentIndexChanged,
            self.style_strength.valueChanged,
            self.lora_scaling.currentIndexChanged,
            self.foreground.currentIndexChanged,
            self.fast.toggled,
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
        self.has_mask = has_mask
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
            faces=self.foreground.currentData(),
            auto_prompt_source=self.words_source.currentData(),
            style=self.style_combo.currentData(),
            style_strength=self.style_strength.value() if self.style_combo.currentData() else None,
            style_lora_scaling=self.lora_scaling.currentData(),
            fast=self.fast.isChecked(),
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
            self.words_source.setCurrentIndex(max(0, self.words_source.findData(s.auto_prompt_source)))
            self.words_source.setEnabled(s.auto_prompt)
            self.foreground.setCurrentIndex(max(0, self.foreground.findData(s.faces)))
            self._select_style(s.style, s.style_strength)
            self.lora_scaling.setCurrentIndex(max(0, self.lora_scaling.findData(s.style_lora_scaling)))
            self.fast.setChecked(s.fast)
        finally:
            self._loading = False
        self._update_abilities()
        self._changed()

    def reset(self) -> None:
        self.set_values(DialogSettings.defaults(self.task, self.shown_defaults))

    def _changed(self, *_: object) -> None:
        if self._loading:
            return
        self._update_abilities()
        self._update_foreground()
        preset = matching_preset(self.values(), self.shown_defaults)
        self.preset.setCurrentIndex(max(0, self.preset.findData(preset.name if preset else None)))
        out_w, out_h = output_size(*self.image_size, int(self.scale_combo.currentData()))
        self.size_label.setText(f"{out_w} × {out_h} px, {out_w * out_h / 1e6:.2f} MP")
        self.changed.emit()

    def _preset_chosen(self, index: int) -> None:
        preset = preset_named(self.preset.itemData(index) or "")
        if preset is None:
            return
        if preset.fast and not self.fast_ok:  # offered greyed out; the tick box's tooltip says why
            self._changed()
            return
        values = self.values()
        installed = self.models.get("installed", [])
        light = (
            light_model(installed, self.task, self.model_combo.currentData()) if preset.light_model else None
        )
        if light is not None and light != self.model_combo.currentData():
            old, new = self.shown_defaults, self.model_defaults(light)
            values = replace(values.with_model(old, new, self.abilities(light)[1]), model=light)
            self.shown_defaults = new
        self.set_values(preset.apply(values, self.shown_defaults))
        self._show_model_info()

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
        model_id = self.model_combo.itemData(index)
        self.shown_defaults = self.model_defaults(model_id)
        self.set_values(values.with_model(old, self.shown_defaults, self.abilities(model_id)[1]))
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
        entry = self.model_entry(self.model_combo.currentData())
        known = FAMILIES.get((entry or {}).get("family", ""))
        knobs = f"{d.steps} steps, guidance {d.guidance:g}, fidelity {d.fidelity:g}, {d.process_size} px"
        self.model_info.setText(
            f"{known.short}: its settings are {knobs}" if known else f"The model's settings are {knobs}"
        )
        self._update_abilities()

    def model_entry(self, model_id: str | None) -> dict[str, Any] | None:
        """A listed model (Automatic: the task's default model); None before the list or without one."""
        listed = self.models.get("installed", [])
        entry = next((m for m in listed if m["id"] == model_id), None)
        if entry is None and model_id is None:
            entry = next((m for m in listed if self.task in m.get("default_for", [])), None)
        return entry

    def abilities(self, model_id: str | None) -> tuple[bool, bool]:
        """(takes styles, has the fast mode now) for a model: styles are for the PASD SD1.5 family;
        the fast mode also needs the LCM-LoRA on the backend and an upscale model (PASD's colour model
        predicts v, which the LoRA was not distilled for)."""
        sd15 = (self.model_entry(model_id) or {}).get("family", "pasd") == "pasd"
        return sd15, sd15 and self.task == "upscale" and bool(self.fast_mode)

    @property
    def fast_ok(self) -> bool:
        return self.abilities(self.model_combo.currentData())[1]

    def _update_abilities(self) -> None:
        """Enable the style and the fast mode where the model and the backend have them, and say why
        not where they do not; a fast mode that cannot run is turned off (its steps and guidance go back)."""
        sd15, fast_ok = self.abilities(self.model_combo.currentData())
        self.sd15 = sd15
        known = FAMILIES.get((self.model_entry(self.model_combo.currentData()) or {}).get("family", ""))
        not_sd15 = (
            f"Styles are for the PASD SD1.5 models; {known.short if known else 'this model'} takes none."
        )
        style = self._style_info()
        self.style_combo.setEnabled(sd15)
        self.style_strength.setEnabled(sd15)
        self.lora_scaling.setEnabled(sd15)
        self.form.setRowVisible(self.style_strength, style is not None)  # the rows of a chosen style
        self.form.setRowVisible(self.lora_scaling, (style or {}).get("kind") == "lora")
        if not sd15:
            for widget in (self.style_combo, self.style_strength, self.lora_scaling):
                widget.setToolTip(not_sd15)
        else:
            self.style_combo.setToolTip(
                "A personalized Stable Diffusion 1.5 model the picture is painted with: its look (a film, "
                "a painter, a kind of photograph) replaces the base model's. Put SD1.5 checkpoints, LoRAs "
                "or UNet folders in the backend's models/styles folder, or use Install…. None: the model "
                "as it is."
            )
            self.style_strength.setToolTip(
                "How strongly the style is blended in (0–2): a checkpoint's blending weight (1: all of "
                "it), a LoRA's multiplier. Choosing a style sets its own default."
            )
            self.lora_scaling.setToolTip(
                "How a LoRA's alpha is used: alpha / rank as kohya's trainers and every UI do; or ignored, "
                "as PASD's code does (stronger for a LoRA trained with alpha below its rank)."
            )
        if self.fast_mode is None:
            tip = "Whether the backend has the fast mode is known once it has listed its models."
        elif not sd15 or self.task != "upscale":
            tip = "The fast mode is for the PASD SD1.5 upscale models."
        elif not self.fast_mode:
            tip = "Install the LCM-LoRA with Install… (lcm-lora-sdv1-5) to use the fast mode."
        else:
            tip = FAST_TIP
        self.fast.setEnabled(fast_ok)
        self.fast.setToolTip(tip)
        index, model = self.preset.findData("Fast"), self.preset.model()
        if isinstance(model, QStandardItemModel) and index >= 0:
            model.item(index).setEnabled(fast_ok)  # offered once it can run
            description = next(p.description for p in PRESETS if p.fast)
            self.preset.setItemData(index, description if fast_ok else tip, Qt.ItemDataRole.ToolTipRole)
        if self.fast.isChecked() and self.fast_mode is not None and not fast_ok and not self._loading:
            self.fast.setChecked(False)  # through _fast_toggled: steps and guidance go back

    def _fast_toggled(self, on: bool) -> None:
        """Ticked: the fast mode's steps and guidance; unticked: those from before (or the model's)."""
        if self._loading:
            return
        if on:
            self._before_fast = (self.steps.value(), self.guidance.value())
            steps, guidance = FAST_STEPS, FAST_GUIDANCE
        else:
            d = self.shown_defaults
            steps, guidance = self._before_fast or (d.steps, d.guidance)
            self._before_fast = None
        self._loading = True
        try:
            self.steps.setValue(steps)
            self.guidance.setValue(guidance)
        finally:
            self._loading = False
        self._changed()

    # ------------------------------------------------------------------ styles
    def _style_info(self, name: str | None = None) -> dict[str, Any] | None:
        name = self.style_combo.currentData() if name is None else name
        return next((s for s in self.styles if s.get("name") == name), None) if name else None

    def _select_style(self, name: str | None, strength: float | None) -> None:
        combo = self.style_combo
        if name and combo.findData(name) < 0 and not self.models_loaded:
            combo.addItem(name, name)  # the stored choice, until the backend lists its styles
        combo.setCurrentIndex(max(0, combo.findData(name)))
        style = self._style_info()
        default = float(style.get("default_strength", 1.0)) if style else 1.0
        self.style_strength.setValue(default if strength is None else strength)
        self._strength_unknown = bool(name) and style is None and strength is None

    def select_style(self, name: str) -> None:
        """Choose a listed style, at its own strength (a style just installed)."""
        if self.style_combo.findData(name) >= 0:
            self.style_combo.setCurrentIndex(self.style_combo.findData(name))
            self._style_chosen(self.style_combo.currentIndex())

    def _style_chosen(self, index: int) -> None:
        """The user picked a style: its own default strength, and the LoRA choice for a LoRA."""
        style = self._style_info(self.style_combo.itemData(index))
        self._strength_unknown = False
        if style is not None:
            self.style_strength.setValue(float(style.get("default_strength", 1.0)))
        self._update_abilities()

    def _fill_styles(self) -> None:
        combo = self.style_combo
        current, strength = combo.currentData(), self.style_strength.value()
        combo.blockSignals(True)
        combo.clear()
        combo.addItem("None", None)
        for style in self.styles:
            combo.addItem(style["name"], style["name"])
            what = STYLE_KINDS.get(style.get("kind", ""), style.get("kind", ""))
            licence = style.get("licence") or "not stated (see where it came from)"
            default = style.get("default_strength", 1.0)
            tip = f"{style['name']}: {what}.\nDefault strength {default:g}; licence: {licence}"
            combo.setItemData(combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        if current and combo.findData(current) < 0 and not self.models_loaded:
            combo.addItem(current, current)
        combo.setCurrentIndex(max(0, combo.findData(current)))
        combo.blockSignals(False)
        style = self._style_info()
        if style is not None and self._strength_unknown:  # now known: the style's own strength
            strength = float(style.get("default_strength", 1.0))
        self._strength_unknown = self._strength_unknown and style is None and bool(combo.currentData())
        self.style_strength.blockSignals(True)
        self.style_strength.setValue(strength)
        self.style_strength.blockSignals(False)

    # ------------------------------------------------------------------ faces
    def faces_used(self) -> bool:
        """Whether the faces that are on get the foreground fidelity with the current choices."""
        choice = self.foreground.currentData()
        if choice == "off":
            return False
        if choice == "on":
            return True
        return not self.has_mask and self.fidelity_fg.value() != self.fidelity_bg.value()

    def context(self) -> Context:
        """What the request needs besides the values: the selection, the faces on, the model's abilities."""
        chosen = self.faces_panel.chosen()
        return Context(
            has_mask=self.has_mask,
            faces=None if chosen is None else tuple(face.box() for face in chosen),
            sd15=self.sd15,
            fast=self.fast_mode is None or self.fast_ok,  # unknown yet: the backend decides
        )

    def _update_foreground(self) -> None:
        """The foreground fidelity is live with a selection or with faces to give it to; the line under
        the faces says what they do with the current choice."""
        choice = self.foreground.currentData()
        chosen = self.faces_panel.chosen() or ()
        live = self.has_mask or (choice != "off" and bool(chosen))
        self.fidelity_fg.setEnabled(live)
        self.restoration_fg.setEnabled(live)
        self.fidelity_fg.setToolTip(
            FOREGROUND_TIP
            if live
            else "There is no selection and no face to use, so the background fidelity applies to the "
            "whole image. Select an area before opening the dialog, or use faces (Foreground), to give "
            "it its own fidelity."
        )
        count, total = len(chosen), len(self.faces_panel.faces)
        some = f"{count} of {total} face{'s' if total != 1 else ''} get{'s' if count == 1 else ''}"
        if choice == "off":
            hint = (
                "Faces are not used: the selection is the foreground."
                if self.has_mask
                else "Faces are not used: the background fidelity applies everywhere."
            )
        elif choice == "on":
            hint = f"{some} the foreground fidelity" + (", with the selection." if self.has_mask else ".")
        elif self.has_mask:
            hint = "The selection is the foreground (faces join automatically only without one)."
        elif self.fidelity_fg.value() == self.fidelity_bg.value():
            hint = f"{some} the foreground fidelity once it differs from the background's."
        else:
            hint = f"{some} the foreground fidelity."
        self.faces_panel.set_hint(hint)

    def set_models(self, models: dict[str, list[dict[str, Any]]], loaded: bool, selected: str | None) -> int:
        """Fill the model list (this task's installed models) and the Install menu; returns how many
        models the task has installed."""
        self.models, self.models_loaded = models, loaded
        self.styles = [s for s in models.get("styles") or [] if isinstance(s, dict) and s.get("name")]
        if loaded:  # an older backend lists neither: no styles, no fast mode
            self.fast_mode = bool(models.get("fast_mode", False))
        self._fill_styles()
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
        self._add_ons()
        self.install_menu.setToolTipsVisible(True)
        return len(installed)

    def _add_ons(self) -> None:
        """Entries for another use than a restoration task (the LCM-LoRA, the prompt-word models,
        styles), after the models, in a section of their own: each says what it adds to the dialog."""
        extras = [  # (components with no task of their own, e.g. the SD1.5 base, come with their models)
            m
            for m in self.models.get("downloadable", [])
            if m.get("tasks") and not set(m["tasks"]) & set(RESTORATION_TASKS) and not m.get("installed")
        ]
        if not extras:
            return
        self.install_menu.addSection("Add-ons")
        for model in extras:
            action = self.install_menu.addAction(f"{model['title']} ({format_bytes(model['size_bytes'])})")
            action.setData(model["id"])
            gives = [ADD_ONS.get(t, t) for t in model.get("tasks", [])]
            tip = f"Adds {', '.join(gives) or 'a component'}.\nLicence: {model.get('licence')}"
            tip += f"\n{model.get('url')}"
            if model.get("terms"):
                tip += "\nIts licence terms are shown, and must be accepted, before the download."
            action.setToolTip(tip)

    @property
    def installable(self) -> bool:
        return any(action.data() for action in self.install_menu.actions())

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
