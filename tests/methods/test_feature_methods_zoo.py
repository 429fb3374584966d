"""Every feature method trains one step on the reference pair resnet32x4 -> resnet8x4 (CIFAR shapes).

The teacher's dry run and forward are done once for all methods (it is the costly part); each
method then gets its own setup from the dry-run shapes, a student forward and an optimizer step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

import kdhub
from kdhub.engine.features import FeatureTaps, dry_run_shapes
from kdhub.engine.losses import method_loss

METHODS = ["fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "nst", "ab", "ft", "fsp"]


@dataclass
class Pair:
    student: nn.Module
    s_taps: dict[str, list[str]]
    teacher: nn.Module
    t_taps: dict[str, list[str]]
    s_shapes: dict[str, list[tuple[int, ...]]]
    t_shapes: dict[str, list[tuple[int, ...]]]
    images: Tensor
    labels: Tensor
    t_logits: Tensor
    t_feats: dict[str, list[Tensor]]


@pytest.fixture(scope="module")
def pair() -> Pair:
    models = kdhub.list_plugins("model")
    if "resnet8x4" not in models or "resnet32x4" not in models:
        pytest.skip("the zoo does not register resnet8x4 / resnet32x4 yet")
    torch.manual_seed(0)
    nets, taps = [], []
    for name in ("resnet8x4", "resnet32x4"):
        plugin = kdhub.create("model", name)
        nets.append(plugin.build(num_classes=100, in_channels=3, image_size=32))
        taps.append(plugin.taps(nets[-1]))
    student, teacher = nets[0], nets[1].eval()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    s_shapes, _ = dry_run_shapes(student, taps[0], images[:2])
    t_shapes, _ = dry_run_shapes(teacher, taps[1], images[:2])
    with torch.no_grad(), FeatureTaps(teacher, taps[1], taps[1].keys()) as recorder:
        t_logits = teacher(images)
        t_feats = recorder.collect()
    return Pair(student, taps[0], teacher, taps[1], s_shapes, t_shapes, images, labels, t_logits, t_feats)


def _outputs(method: kdhub.Method, student: nn.Module, pair: Pair, class_mask: Tensor | None) -> kdhub.StepOutputs:
    with FeatureTaps(student, pair.s_taps, method.feature_roles) as recorder:
        logits = student(pair.images)
        feats = recorder.collect()
    t_feats = {role: pair.t_feats[role] for role in method.feature_roles}
    return kdhub.StepOutputs(
        student_logits=logits,
        teacher_logits=pair.t_logits,
        labels=pair.labels,
        indices=torch.arange(4),
        class_mask=class_mask,
        student_features=feats,
        teacher_features=t_feats,
    )


@pytest.mark.parametrize("name", METHODS)
def test_one_training_step(name: str, pair: Pair) -> None:
    student = copy.deepcopy(pair.student).train()
    method = kdhub.create("method", name, **({"main_loss": True} if name in ("ab", "fsp") else {}))
    ctx = kdhub.SetupContext(
        num_classes=100,
        num_train=4,
        epochs=1,
        steps_per_epoch=1,
        student=student,
        teacher=pair.teacher,
        student_taps=pair.s_taps,
        teacher_taps=pair.t_taps,
        student_shapes=pair.s_shapes,
        teacher_shapes=pair.t_shapes,
        train_labels=pair.labels,
    )
    method.setup(ctx)
    method.train()
    optimizer = torch.optim.SGD(list(student.parameters()) + list(method.parameters()), lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in student.parameters()]
    if method.init_epochs:
        init = method.init_loss(_outputs(method, student, pair, None))
        assert init.shape == ()
        assert torch.isfinite(init)
        optimizer.zero_grad()
        init.backward()
        optimizer.step()
    mask = torch.ones(100, dtype=torch.bool)
    mask[0] = False  # one class stopped, as a class-selection policy would
    out = _outputs(method, student, pair, mask)
    terms = method_loss(method, out)
    loss = nn.functional.cross_entropy(out.student_logits, pair.labels) + method.default_weight * sum(terms.values())
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    changed = [not torch.equal(p.detach(), b) for p, b in zip(student.parameters(), before, strict=True)]
    assert all(changed)
