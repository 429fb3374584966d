"""What ``kdhub demo`` prints: per-class accuracy of the teacher, the vanilla and the KD student over a few
seeds, and the classes KD hurt — only those beyond seed noise; every other change is given in test images.

The comparison is the one ``kdhub compare`` makes (reached through the plugin registry, never imported
here): per-class ΔACC averaged over seeds, a paired t-test per class over the seeds and Benjamini–Hochberg
adjusted p-values. On digits a class has about 45 test images, so one image is about 2.2 points of its
accuracy: a class is never called hurt for a change the seeds do not separate from noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["noise_report"]


def _images(delta: float, count: float) -> str:
    """A change in points as the test images it stands for: '-1 image of 45', '-0.3 images of 45'."""
    if not (math.isfinite(delta) and count > 0):
        return "-"
    images = delta * count / 100
    rounded = round(images)
    value = f"{rounded:+d}" if abs(images - rounded) < 0.05 else f"{images:+.1f}"
    if value in ("+0", "-0"):
        value = "0"
    unit = "image" if abs(images - 1) < 0.05 or abs(images + 1) < 0.05 else "images"
    return f"{value} {unit} of {count:.0f}"


def _listed(comparison: Any, classes: Sequence[int], counts: Sequence[float]) -> str:
    index = {c: i for i, c in enumerate(comparison.classes)}
    return ", ".join(
        f"{comparison.names[index[c]]} ({_images(comparison.delta_acc[index[c]], counts[index[c]])})" for c in classes
    )


def noise_report(comparison: Any, teacher: Sequence[float], counts: Sequence[float], teacher_acc: float) -> str:
    """The demo's report from a ``kdhub compare`` comparison (vanilla = baseline, KD = run, seeds paired).

    ``teacher``: the teacher's per-class test accuracy (%), ``counts``: test images per class,
    ``teacher_acc``: its overall accuracy. Lists as hurt only the classes with ΔACC < 0 and an adjusted
    p below the comparison's alpha; the others below the vanilla student are "within seed noise", with
    their change in test images.
    """
    seeds = len(comparison.run_by_seed)
    tested = comparison.test_name != "no test"
    p_label = {"bh": "p (BH)", "holm": "p (Holm)"}.get(comparison.correction, "p")
    tests, adjusted = comparison.class_tests, comparison.p_adjusted
    lines = [
        f"\ntest accuracy per class (%), students averaged over {seeds} seed(s); KD-van. also in test images"
        + (" (mean over seeds)" if seeds > 1 else ""),
        f"{'class':<8}{'teacher':>9}{'vanilla':>9}{'KD':>9}{'KD-van.':>9}  {'images':<20}{'sd':>6}{p_label:>9}",
    ]
    for i, cls in enumerate(comparison.names):
        sd = tests[i].sd if tested else math.nan
        lines.append(
            f"{cls!s:<8}{teacher[i]:>9.1f}{comparison.acc_baseline[i]:>9.1f}{comparison.acc_run[i]:>9.1f}"
            f"{comparison.delta_acc[i]:>+9.1f}  {_images(comparison.delta_acc[i], counts[i]):<20}"
            + (f"{sd:>6.1f}{adjusted[i]:>9.3f}" if tested and math.isfinite(sd) else f"{'-':>6}{'-':>9}")
        )
    base = comparison.overall(comparison.baseline_by_seed)
    run = comparison.overall(comparison.run_by_seed)
    base_mean, run_mean = sum(base) / len(base), sum(run) / len(run)
    lines.append(f"{'overall':<8}{teacher_acc:>9.1f}{base_mean:>9.1f}{run_mean:>9.1f}{run_mean - base_mean:>+9.1f}")
    image = 100 / (sum(counts) / len(counts)) if counts and sum(counts) > 0 else math.nan
    below = [c for c, d in zip(comparison.classes, comparison.delta_acc, strict=True) if d < 0]
    if not tested:
        lines.append(
            f"\none seed: no class can be told hurt from seed noise (one test image is about {image:.1f} points"
            " of a class); classes below the vanilla student: "
            + (_listed(comparison, below, counts) or "none")
            + ". Run several seeds to test them."
        )
        return "\n".join(lines)
    overall = comparison.overall_test
    hurt = comparison.undistillable_significant
    noise = [c for c in below if c not in hurt]
    lines += [
        f"\nKD - vanilla overall: {overall.mean:+.2f} ± {overall.sd:.2f} points over {seeds} seeds,"
        f" paired t-test p = {overall.p:.3g}",
        f"KD hurt beyond seed noise (ΔACC < 0 and {p_label} < {comparison.alpha:g}, {seeds} seeds paired):"
        f" {_listed(comparison, hurt, counts) or 'none'}",
    ]
    if comparison.helped_significant:
        lines.append(f"KD helped beyond seed noise: {_listed(comparison, comparison.helped_significant, counts)}")
    lines.append(
        f"below the vanilla student but within seed noise: {_listed(comparison, noise, counts) or 'none'}"
        f" (one test image is about {image:.1f} points of a class)"
    )
    return "\n".join(lines)
