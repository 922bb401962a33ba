"""The held-out evaluation report: model rows, baselines, ablations and phonetic sanity.

The shipped model is scored through the full inference path twice, once with a rendered face as
the reference and once with a real photo (scikit-image's astronaut, the bundled default face, or
the user's), since users pass photos. Ablation checkpoints (trained with ``pmmtalk train
--ablate``) zero a modality inside the decoder, which plain inference does not know about, so
they are scored through the cached-feature path that `models.training.trainer` trains with; a
test shows that path equals full inference.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from models.data.batch import Clip
from models.data.corpus import CorpusDataset
from models.pmmtalk import PMMTalk
from models.training.evaluate import (
    EvalRow,
    Predictor,
    envelope_predictor,
    evaluate,
    fit_envelope_jaw,
    markdown_table,
    mean_pose,
    mean_pose_predictor,
    model_predictor,
)
from models.training.features import cache_clip, crop_batch
from models.training.recipe import rendered_face
from models.training.sanity import SanityReport, phonetic_sanity
from models.training.trainer import forward_cached

logger = logging.getLogger(__name__)

EVAL_FACE_SEED = 424242
"""The rendered reference face of the evaluation (an identity no training clip used)."""
TABLE_GROUPS = ("all", "en", "zh", "held-out voices", "training voices")


@dataclass(frozen=True)
class EvaluationReport:
    rows: list[EvalRow]
    sanity: dict[str, SanityReport]
    markdown: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [asdict(r) for r in self.rows],
            "sanity": {k: asdict(v) for k, v in self.sanity.items()},
        }


def ablated_predictor(model: PMMTalk, face: torch.Tensor, ablate: Sequence[str]) -> Predictor:
    """A model trained with ``ablate`` removed, scored as it was trained (cached-feature path)."""
    rng = np.random.default_rng(0)

    @torch.no_grad()
    def predict(clip: Clip) -> np.ndarray:
        model.eval()
        cached = cache_clip(model, clip, face)
        batch = crop_batch(model, [cached], cached.num_frames, rng)
        return forward_cached(model, batch, ablate).blendshapes[0].clamp(0, 1).numpy()

    return predict


def _remembered(predict: Predictor) -> Predictor:
    """``predict`` computing each clip once: the sanity checks reread the table's predictions."""
    seen: dict[str, np.ndarray] = {}

    def recall(clip: Clip) -> np.ndarray:
        if clip.id not in seen:
            seen[clip.id] = predict(clip)
        return seen[clip.id]

    return recall


def _sanity(predict: Predictor, clips: Sequence[Clip]) -> SanityReport:
    return phonetic_sanity([(predict(c), c.phones or []) for c in clips])


def evaluation_report(
    checkpoint_dir: Path,
    corpus_dir: Path,
    *,
    split: str = "test",
    photo: np.ndarray | None = None,
    ablations: dict[str, Path] | None = None,
    max_clips: int | None = None,
    progress: bool = True,
) -> EvaluationReport:
    """Score a checkpoint, the baselines and any ablation checkpoints on a corpus split.

    ``photo``: the real reference photo (RGB uint8), None for the bundled default face.
    Baselines are fitted on the corpus's train split.
    """
    from pmmtalk.face import reference_face

    checkpoint = load_checkpoint(checkpoint_dir)
    model = checkpoint.model
    size = model.cfg.wav2lip.img_size
    clips = _load(corpus_dir, split)[: max_clips or None]
    train_clips = _load(corpus_dir, "train")
    pose = mean_pose(train_clips)
    slope, intercept = fit_envelope_jaw(train_clips)

    rendered = rendered_face((EVAL_FACE_SEED,), size)
    real = torch.from_numpy(reference_face(photo, size))
    predictors: dict[str, Predictor] = {
        "PMMTalk lite (rendered reference)": model_predictor(model, rendered),
        "PMMTalk lite (photo reference)": model_predictor(model, real),
        "baseline: mean pose": mean_pose_predictor(pose),
        "baseline: envelope jaw": envelope_predictor(pose, slope, intercept),
    }
    for name, folder in (ablations or {}).items():
        ablated = load_checkpoint(folder)
        ablate = ablated.metadata.get("ablate", [])
        predictors[f"ablation: {name}"] = ablated_predictor(ablated.model, rendered, ablate)

    predictors = {name: _remembered(predict) for name, predict in predictors.items()}
    rows = evaluate(predictors, clips, progress=progress)
    sanity = {
        "ground truth": _sanity(lambda c: c.targets, clips),
        "PMMTalk lite (photo reference)": _sanity(
            predictors["PMMTalk lite (photo reference)"], clips
        ),
        "baseline: envelope jaw": _sanity(predictors["baseline: envelope jaw"], clips),
    }
    return EvaluationReport(rows, sanity, _markdown(rows, sanity))


def _load(corpus_dir: Path, split: str) -> list[Clip]:
    dataset = CorpusDataset(corpus_dir, split)  # type: ignore[arg-type]
    return [dataset[i] for i in range(len(dataset))]


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _markdown(rows: list[EvalRow], sanity: dict[str, SanityReport]) -> str:
    lines = [markdown_table(rows, TABLE_GROUPS), ""]
    lines += [
        "| phonetic check | " + " | ".join(sanity) + " |",
        "|---|" + "---:|" * len(sanity),
    ]
    checks = [
        ("lip opening at /p b m/ centres", "bilabial_opening"),
        ("lip opening at vowel centres", "vowel_opening"),
        ("jawOpen at open vowels", "open_vowel_jaw"),
        ("jawOpen at close vowels", "close_vowel_jaw"),
        ("mean abs coefficient in pauses", "silence_level"),
        ("mean abs coefficient in speech", "speech_level"),
    ]
    for label, attribute in checks:
        values = [_fmt(getattr(report, attribute)) for report in sanity.values()]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    verdicts = [
        ("bilabials close (< half the vowel opening)", "bilabials_close"),
        ("open vowels open wider than close vowels", "open_wider_than_close"),
        ("pauses neutral (< a fifth of speech)", "silence_neutral"),
    ]
    for label, attribute in verdicts:
        values = ["yes" if getattr(report, attribute) else "no" for report in sanity.values()]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)
