"""CRD: NCE golden values, memory-bank maths, negative sampling, the whole loss against NumPy, the contract."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from _digits_runs import digits_trainer, logged

import kdhub
from kdhub.testing import check_method
from kdhub_methods.crd import nce_per_sample

pytestmark = pytest.mark.filterwarnings("ignore:crd. .* negatives requested:UserWarning")


def _ctx(labels: list[int], s_dim: int = 4, t_dim: int = 6, num_classes: int | None = None) -> kdhub.SetupContext:
    y = torch.tensor(labels)
    net = torch.nn.Identity()
    return kdhub.SetupContext(
        num_classes=num_classes or int(y.max()) + 1,
        num_train=len(labels),
        epochs=1,
        steps_per_epoch=1,
        student=net,
        teacher=net,
        student_taps={"pooled": ["x"]},
        teacher_taps={"pooled": ["x"]},
        student_shapes={"pooled": [(s_dim,)]},
        teacher_shapes={"pooled": [(t_dim,)]},
        train_labels=y,
    )


def _outputs(f_s: torch.Tensor, f_t: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> kdhub.StepOutputs:
    logits = torch.zeros(len(labels), 3)
    return kdhub.StepOutputs(
        student_logits=logits,
        teacher_logits=logits,
        labels=labels,
        indices=indices,
        student_features={"pooled": [f_s]},
        teacher_features={"pooled": [f_t]},
    )


def test_nce_golden_hand_case() -> None:
    # N = 10, K = 2 negatives -> noise c = K / N = 0.2
    # row 0: -log(.5/.7) - log(.2/.3) - log(.2/.4) = 0.336472 + 0.405465 + 0.693147 = 1.435084
    # row 1: -log(1/1.2) - log(.2/.25) - log(.2/.5) = 0.182322 + 0.223144 + 0.916291 = 1.321756
    probs = torch.tensor([[0.5, 0.1, 0.2], [1.0, 0.05, 0.3]])
    loss = nce_per_sample(probs, num_data=10)
    assert loss.shape == (2,)
    torch.testing.assert_close(loss, torch.tensor([1.435084, 1.321756]), atol=2e-6, rtol=0)
    # RepDistiller's ContrastLoss is the batch mean of the same quantity
    p, c, eps = probs.double().numpy(), 0.2, 1e-7
    ref = -(np.log(p[:, 0] / (p[:, 0] + c + eps)).sum() + np.log(c / (p[:, 1:] + c + eps)).sum()) / 2
    assert loss.mean().item() == pytest.approx(ref, abs=1e-6)


def test_memory_update_hand_example() -> None:
    crd = kdhub.create("method", "crd", feat_dim=2, num_negatives=1, momentum=0.5)
    crd.setup(_ctx([0, 1, 0], s_dim=2, t_dim=2))
    memory = crd.memory
    memory.memory_s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    memory.memory_t = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    memory.update(torch.tensor([0, 2]), torch.tensor([[0.0, 1.0], [0.6, 0.8]]), torch.tensor([[0.0, -1.0], [0.0, 1.0]]))
    r = float(1 / np.sqrt(2))
    # row 0: normalise(.5 [1, 0] + .5 [0, 1]) = [.707107, .707107]; row 2: .5 v + .5 v = v stays; row 1 untouched
    torch.testing.assert_close(memory.memory_s, torch.tensor([[r, r], [0.0, 1.0], [0.6, 0.8]]))
    # teacher bank row 0: .5 [0, 1] + .5 [0, -1] = 0 -> stays 0 (no NaN); row 2: normalise([.5, .5])
    torch.testing.assert_close(memory.memory_t, torch.tensor([[0.0, 0.0], [1.0, 0.0], [r, r]]))


def _numpy_crd(crd, f_s, f_t, index, negatives, bank_s, bank_t, z_s, z_t, n):
    """The paper's loss from first principles, with every negative set given explicitly."""

    def embed(linear, f):
        v = f @ linear.weight.detach().double().numpy().T + linear.bias.detach().double().numpy()
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    tau = crd.options.nce_temperature
    v_s, v_t = embed(crd.embed_s.linear, f_s), embed(crd.embed_t.linear, f_t)
    total = np.zeros(len(index))
    zs = []
    for v, bank, z in ((v_s, bank_t, z_s), (v_t, bank_s, z_t)):
        scores = np.array([[v[i] @ bank[j] for j in [index[i], *negatives[i]]] for i in range(len(index))])
        e = np.exp(scores / tau)
        z = e.mean() * n if z < 0 else z
        zs.append(z)
        p = e / z
        k = p.shape[1] - 1
        c = k / n
        total += -(np.log(p[:, 0] / (p[:, 0] + c + 1e-7)) + np.log(c / (p[:, 1:] + c + 1e-7)).sum(1))
    return total, zs, v_s, v_t


@pytest.mark.parametrize("mode", ["uniform", "other_classes"])
def test_whole_loss_against_numpy(mode: str) -> None:
    labels = [0, 0, 1, 1, 2, 2]
    n = len(labels)
    k = n - 1 if mode == "uniform" else 4  # every candidate once: the loss does not depend on the draw
    torch.manual_seed(0)
    crd = kdhub.create("method", "crd", feat_dim=3, num_negatives=k, negatives=mode, momentum=0.5)
    crd.setup(_ctx(labels))
    index = torch.tensor([1, 4])
    f_s, f_t = torch.randn(2, 4), torch.randn(2, 6)
    bank_s = crd.memory.memory_s.double().numpy().copy()
    bank_t = crd.memory.memory_t.double().numpy().copy()
    if mode == "uniform":
        negs = [[j for j in range(n) if j != i] for i in index.tolist()]
    else:
        negs = [[j for j in range(n) if labels[j] != labels[i]] for i in index.tolist()]
    expected, zs, v_s, v_t = _numpy_crd(
        crd, f_s.double().numpy(), f_t.double().numpy(), index.tolist(), negs, bank_s, bank_t, -1.0, -1.0, n
    )
    crd.train()
    loss = crd.loss(_outputs(f_s, f_t, torch.tensor([labels[i] for i in index.tolist()]), index))
    np.testing.assert_allclose(loss.detach().double().numpy(), expected, rtol=1e-5)
    # Z comes from the first batch and is kept
    assert crd.memory.z_s.item() == pytest.approx(zs[0], rel=1e-5)
    assert crd.memory.z_t.item() == pytest.approx(zs[1], rel=1e-5)
    # the banks moved by momentum 0.5 at the batch's rows only
    for bank, old, v in ((crd.memory.memory_s, bank_s, v_s), (crd.memory.memory_t, bank_t, v_t)):
        new = 0.5 * old[index.numpy()] + 0.5 * v
        new /= np.linalg.norm(new, axis=1, keepdims=True)
        np.testing.assert_allclose(bank.double().numpy()[index.numpy()], new, rtol=1e-5)
        rest = [i for i in range(n) if i not in index.tolist()]
        np.testing.assert_allclose(bank.double().numpy()[rest], old[rest])
    # a second step uses the stored Z, not a new batch estimate
    bank_s2 = crd.memory.memory_s.double().numpy().copy()
    bank_t2 = crd.memory.memory_t.double().numpy().copy()
    expected2, zs2, _, _ = _numpy_crd(
        crd, f_s.double().numpy(), f_t.double().numpy(), index.tolist(), negs, bank_s2, bank_t2, zs[0], zs[1], n
    )
    loss2 = crd.loss(_outputs(f_s, f_t, torch.tensor([labels[i] for i in index.tolist()]), index))
    np.testing.assert_allclose(loss2.detach().double().numpy(), expected2, rtol=1e-5)
    assert zs2 == zs


@pytest.mark.parametrize("replacement", [False, True])
def test_negative_sampling(replacement: bool) -> None:
    labels = torch.arange(40) % 4  # 10 per class: other-class pool 30, uniform pool 39
    for mode, k in (("other_classes", 30), ("uniform", 39)):
        crd = kdhub.create("method", "crd", num_negatives=k, negatives=mode, replacement=replacement)
        crd.setup(_ctx(labels.tolist()))
        index = torch.arange(40)
        torch.manual_seed(1)
        neg = crd.memory.sample(index, labels[index])
        torch.manual_seed(1)
        assert torch.equal(neg, crd.memory.sample(index, labels[index])), "the global seed fixes the draw"
        assert neg.shape == (40, k)
        if mode == "other_classes":
            assert (labels[neg] != labels[index][:, None]).all()
        else:
            assert (neg != index[:, None]).all()
        if not replacement:
            # without replacement K = pool size means every candidate exactly once
            assert all(len(set(row)) == k for row in neg.tolist())
        else:
            big = torch.cat([crd.memory.sample(index, labels[index]) for _ in range(20)], dim=1)
            pools = (
                (labels[None, :] != labels[:, None]) if mode == "other_classes" else ~torch.eye(40, dtype=torch.bool)
            )
            hit = torch.zeros(40, 40, dtype=torch.bool).scatter_(1, big, True)
            assert torch.equal(hit, pools), "every candidate is drawn, and nothing else"


def test_clamps_negatives_on_small_data() -> None:
    crd = kdhub.create("method", "crd")  # 16384 negatives
    with pytest.warns(UserWarning, match="using K = 6"):
        crd.setup(_ctx([0, 0, 1, 1, 2, 2, 2, 0, 1]))  # 9 samples, largest class 3 -> pool 6
    assert crd.memory.num_negatives == 6
    crd = kdhub.create("method", "crd", negatives="uniform")
    with pytest.warns(UserWarning, match="using K = 8"):
        crd.setup(_ctx([0, 0, 1, 1, 2, 2, 2, 0, 1]))
    crd = kdhub.create("method", "crd", num_negatives=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crd.setup(_ctx([0, 0, 1, 1, 2, 2, 2, 0, 1]))  # no clamp, no warning
    with pytest.raises(kdhub.IncompatibleError, match="no negative"):
        kdhub.create("method", "crd").setup(_ctx([0, 0, 0]))


def test_product_and_gather_paths_agree() -> None:
    crd = kdhub.create("method", "crd", feat_dim=8, num_negatives=20)
    crd.setup(_ctx(list(range(10)) * 3, s_dim=5, t_dim=7))
    torch.manual_seed(2)
    v = torch.nn.functional.normalize(torch.randn(4, 8), dim=1).requires_grad_(True)
    idx = torch.randint(0, 30, (4, 21))
    results = []
    for full in (True, False):
        crd.memory.full_product = full
        s = crd.memory.scores(crd.memory.memory_t, v, idx)
        (grad,) = torch.autograd.grad((s * torch.arange(21.0)).sum(), v)
        results.append((s.detach(), grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


@pytest.mark.parametrize("options", [{}, {"negatives": "uniform", "replacement": True}])
def test_contract_and_trainable_parts(options: dict) -> None:
    crd = kdhub.create("method", "crd", **options)
    result = check_method(crd)
    assert torch.isfinite(result.loss)
    for part in (crd.embed_s, crd.embed_t):
        assert part.linear.weight.grad is not None
        assert part.linear.weight.grad.abs().sum() > 0
    names = {n for n, _ in crd.named_parameters()}
    assert names == {"embed_s.linear.weight", "embed_s.linear.bias", "embed_t.linear.weight", "embed_t.linear.bias"}
    state = crd.state_dict()
    assert {"memory.memory_s", "memory.memory_t", "memory.z_s", "memory.z_t"} <= set(state)
    assert state["memory.memory_s"].shape == (64, 128)  # N x feat_dim: check_method's 64 training labels
    assert "memory.labels" not in state  # derived from the data, not checkpointed


def test_eval_mode_reads_banks_only() -> None:
    crd = kdhub.create("method", "crd", num_negatives=5)
    crd.setup(_ctx([0, 1, 2, 0, 1, 2, 0, 1]))
    crd.train()
    f_s, f_t = torch.randn(3, 4), torch.randn(3, 6)
    crd.loss(_outputs(f_s, f_t, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])))
    before = {k: v.clone() for k, v in crd.state_dict().items()}
    crd.eval()
    # held-out samples: indices need not be training rows (here 100, 101, 102 are none)
    loss = crd.loss(_outputs(f_s, f_t, torch.tensor([0, 1, 2]), torch.tensor([100, 101, 102])))
    assert loss.shape == (3,)
    assert torch.isfinite(loss).all()
    for key, value in crd.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_options_are_validated() -> None:
    with pytest.raises(kdhub.ConfigError):
        kdhub.create("method", "crd", momentum=1.0)
    with pytest.raises(kdhub.ConfigError):
        kdhub.create("method", "crd", negatives="exact")
    assert kdhub.get_plugin("method", "crd").default_weight == 0.8


@pytest.mark.skipif("resnet8x4" not in kdhub.list_plugins("model"), reason="needs the zoo's CIFAR ResNets")
def test_one_step_resnet32x4_to_resnet8x4() -> None:
    s_plugin, t_plugin = kdhub.create("model", "resnet8x4"), kdhub.create("model", "resnet32x4")
    student = s_plugin.build(num_classes=100, in_channels=3, image_size=32)
    teacher = t_plugin.build(num_classes=100, in_channels=3, image_size=32).eval()
    crd = kdhub.create("method", "crd")
    check_method(
        crd, student, teacher, s_plugin.taps(student), t_plugin.taps(teacher), 100, batch_size=4, image_size=32
    )
    assert crd.embed_s.linear.in_features == 256
    assert crd.embed_t.linear.in_features == 256


def test_real_run_on_digits_clamps_k_and_learns() -> None:
    with pytest.warns(UserWarning, match="negatives requested"):  # ~1,600 training images < 16384
        trainer = digits_trainer([{"name": "crd"}], epochs=3)
    result = trainer.fit()
    losses = logged(trainer, "loss/crd")
    assert len(losses) == 3
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert result.last_acc > 50
    memory = trainer.teaching[0].method.memory
    assert memory.memory_s.shape == (trainer.data.size("train"), 128)
    torch.testing.assert_close(memory.memory_s.norm(dim=1), torch.ones(trainer.data.size("train")))


@pytest.mark.slow
def test_real_run_under_a_class_selecting_policy() -> None:
    paper = {"criterion": "paper", "start": 1, "window": 1, "patience": 1, "end": None, "max_stopped_fraction": 1.0}
    trainer = digits_trainer([{"name": "crd"}], epochs=3, policy={"name": "tllm", "options": paper})
    trainer.fit()
    assert max(logged(trainer, "tllm/stopped_classes")) > 0, "the masked path ran"
    assert all(math.isfinite(v) for v in logged(trainer, "loss/crd"))


@pytest.mark.slow
def test_resume_restores_the_memory_banks_exactly() -> None:
    reference = digits_trainer([{"name": "crd"}], epochs=2)
    reference.fit()
    first = digits_trainer([{"name": "crd"}], epochs=1)
    first.fit()
    state = first.state_dict()  # right after the epoch, as the engine's last.pt
    resumed = digits_trainer([{"name": "crd"}], epochs=2)
    resumed.load_state_dict(state)
    resumed.fit()
    for key, value in reference.teaching[0].method.state_dict().items():
        assert torch.equal(value, resumed.teaching[0].method.state_dict()[key]), key
    for key, value in reference.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[key]), key
