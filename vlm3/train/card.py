"""vlm3's model card: the ``README.md`` written with a trained model.

TRL's card names no base model for a local folder ("a fine-tuned version of [None]") and knows
nothing of how the model must be asked, so vlm3 writes its own: the base model, the method, the
prompt profile and settings (read back from the written ``vlm3.json``), the data mixture, the full
training config, and how to run the model with ``vlm3 predict`` / ``vlm3 eval`` / transformers.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from vlm3.settings import SETTINGS_FILE
from vlm3.train.config import Config

CARD_FILE = "README.md"

# One runnable example per task (the model and output folder are filled in).
_PREDICT = {
    "depth": "vlm3 predict depth IMAGE.jpg --model {model} --fx FOCAL_PX --grid 16 --out pred/",
    "pose": "vlm3 predict pose IMAGE1.jpg IMAGE2.jpg --model {model} --fx FOCAL_PX --out pred/",
    "correspondence": "vlm3 predict correspondence IMAGE1.jpg IMAGE2.jpg --model {model} --fx FOCAL_PX --points 120,80 --out pred/",
    "object": "vlm3 predict object IMAGE.jpg --model {model} --fx FOCAL_PX --box 10,20,200,180 --box 220,40,400,300 --ask behind",
}


@dataclass(frozen=True)
class MixtureRow:
    """One training dataset as the card lists it."""

    name: str
    path: str
    records: int
    weight: float | None  # the config's explicit weight, if any
    probability: float  # the share of training rows drawn from it


def model_card(
    cfg: Config,
    model_dir: str | Path,
    mixture: Sequence[MixtureRow],
    *,
    global_step: int,
    base_model: str,
    adapter_dir: str | Path | None = None,
) -> str:
    """The card's Markdown for the checkpoint in ``model_dir`` (which must hold its ``vlm3.json``).

    ``base_model`` is the base as a reference that resolves anywhere (absolute folder or hub id);
    ``adapter_dir`` is where the LoRA adapter was kept (LoRA runs only).
    """
    model_dir = Path(model_dir).absolute()
    meta = json.loads((model_dir / SETTINGS_FILE).read_text())
    task = meta.get("task") or cfg.data.task
    m, t = cfg.model, cfg.train
    given = m.name_or_path
    is_hub = not Path(base_model).expanduser().is_dir()  # a hub id, not a local folder
    model_arg = shlex.quote(str(model_dir))

    front = {"library_name": "transformers", "pipeline_tag": "image-text-to-text", "tags": ["vlm3", task] + (["lora"] if m.lora else [])}
    if is_hub:
        front["base_model"] = base_model
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]
    lines.append(f"# {model_dir.parent.name or model_dir.name}: a vlm3 {task} model")
    lines.append("")
    base_text = f"`{base_model}`" + ("" if given == base_model else f" (given as `{given}` in model.name_or_path)")
    lines.append(f"Fine-tuned from **{base_text}** with `vlm3 train` for {global_step} optimizer steps (train.max_steps = {t.max_steps}).")
    lines.append("")
    if m.lora:
        targets = m.lora_target_modules if isinstance(m.lora_target_modules, str) else ", ".join(m.lora_target_modules)
        lines.append(
            f"Method: LoRA (r = {m.lora_r}, alpha = {m.lora_alpha}, dropout = {m.lora_dropout}, target modules: {targets}), "
            "merged into the base weights: this folder is a full transformers checkpoint."
        )
        if adapter_dir is not None:
            lines.append(
                f"The adapter alone is in `{Path(adapter_dir).absolute()}`; its `adapter_config.json` records the base as "
                f"`{base_model}`, so `--model` accepts that folder too (vlm3 loads the base and merges the adapter)."
            )
    else:
        frozen = " with the vision tower frozen" if m.freeze_vision else ""
        lines.append(f"Method: full fine-tuning{frozen}.")
    lines.append("")

    lines += ["## Prompt profile", ""]
    profile_hash = meta.get("profile_hash")
    lines.append(
        f"Ask it the way it was trained: prompt profile **`{meta.get('profile')}`**"
        + (f" (profile hash `{profile_hash}`)" if profile_hash else "")
        + f", with the settings in `{SETTINGS_FILE}` (vlm3 reads them itself):"
    )
    lines += ["", "| setting | value |", "| --- | --- |", f"| task | `{task}` |"]
    for key, value in meta.items():
        if key not in ("task", "profile_hash"):
            lines.append(f"| {key} | `{value if isinstance(value, str) else json.dumps(value)}` |")
    lines.append("")

    lines += ["## Data mixture", ""]
    lines.append(f"Policy `{cfg.data.mixture}` (data.mixture), plan seed {cfg.data.seed}; the share of training rows drawn from each dataset:")
    lines += ["", "| dataset | records | weight (config) | share | path |", "| --- | ---: | ---: | ---: | --- |"]
    for row in mixture:
        weight = "" if row.weight is None else f"{row.weight:g}"
        lines.append(f"| {row.name} | {row.records} | {weight} | {row.probability:.4f} | `{row.path}` |")
    lines.append("")

    lines += ["## Training config", ""]
    lines.append("The full config (also in `vlm3_config.yaml`; `vlm3 train --fields` explains every field):")
    lines += ["", "```yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).strip(), "```", ""]

    lines += ["## Use", ""]
    lines.append("From any working directory (vlm3 reads the prompt profile and settings from this folder):")
    lines += ["", "```bash"]
    lines.append(_PREDICT.get(task, "vlm3 predict --help  # then: vlm3 predict TASK ... --model {model}").format(model=model_arg))
    lines.append(f"vlm3 eval --model {model_arg} --bench BENCH.yaml --out eval/  # BENCH: a bench config, e.g. synth-{task}")
    lines += ["```", ""]
    lines.append("Plain transformers loads it too (vlm3 is needed only to ask questions the way it was trained):")
    lines += [
        "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        f"model = AutoModelForImageTextToText.from_pretrained({str(model_dir)!r})",
        f"processor = AutoProcessor.from_pretrained({str(model_dir)!r})",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(folders: Sequence[str | Path], card: str) -> list[Path]:
    """Write ``card`` as ``README.md`` into each folder (replacing TRL's or peft's card)."""
    written = []
    for folder in folders:
        path = Path(folder) / CARD_FILE
        path.write_text(card)
        written.append(path)
    return written
