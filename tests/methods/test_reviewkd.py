"""ReviewKD: HCL golden values, channels and sizes from the dry run, warm-up, the contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _digits_runs import digits_trainer, logged

import kdhub
from kdhub.testing import TINY_TAPS, check_method
from kdhub_methods.reviewkd import hcl_per_sample


def test_hcl_hand_example() -> None:
    # 2x2 map: only the 1x1 level is below H = 2, weight 1/2:
    # mse = (1 + 4 + 9 + 16) / 4 = 7.5; pooled mean 2.5 -> 6.25; (7.5 + 6.25 / 2) / 1.5 = 7.083333
    fs = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    assert hcl_per_sample(fs, torch.zeros_like(fs)).item() == pytest.approx(7.083333, abs=1e-6)
    # 1x1 maps (the pooled level): plain MSE
    assert hcl_per_sample(fs[:, :, :1, :1], torch.zeros(1, 1, 1, 1)).item() == 1.0


def test_hcl_against_numpy_block_means() -> None:
    rng = np.random.default_rng(0)
    fs, ft = rng.normal(size=(3, 2, 8, 8)), rng.normal(size=(3, 2, 8, 8))

    def block_mean(x: np.ndarray, size: int) -> np.ndarray:
        b, c, h, w = x.shape
        return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))

    d = fs - ft
    # H = 8: levels 4, 2, 1 all used, weights 1/2, 1/4, 1/8, total 1.875
    expected = (d**2).mean(axis=(1, 2, 3))
    for size, w in ((4, 0.5), (2, 0.25), (1, 0.125)):
        expected = expected + w * ((block_mean(fs, size) - block_mean(ft, size)) ** 2).mean(axis=(1, 2, 3))
    expected /= 1.875
    ours = hcl_per_sample(torch.tensor(fs, dtype=torch.float32), torch.tensor(ft, dtype=torch.float32))
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5)


def test_hcl_batch_mean_is_the_reference_loss() -> None:
    torch.manual_seed(0)
    fs, ft = torch.randn(5, 3, 16, 16), torch.randn(5, 3, 16, 16)
    ref = F.mse_loss(fs, ft)  # the reference hcl(), written out
    cnt, tot = 1.0, 1.0
    for size in (4, 2, 1):
        cnt /= 2
        ref = ref + F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size)) * cnt
        tot += cnt
    torch.testing.assert_close(hcl_per_sample(fs, ft).mean(), ref / tot)


def test_channels_and_sizes_come_from_the_dry_run() -> None:
    method = kdhub.create("method", "reviewkd")
    check_method(method, epoch=20)  # TinyNet width 8 -> width 16 at 16x16: stages 16/8/4, pooled 32 -> 64
    assert [abf.conv1.in_channels for abf in method.abfs] == [8, 16, 32, 32]
    assert [abf.conv2.out_channels for abf in method.abfs] == [16, 32, 64, 64]
    assert {abf.conv1.out_channels for abf in method.abfs} == {32}  # min(512, student pooled 32)
    assert method.out_sizes == [(16, 16), (8, 8), (4, 4), (1, 1)]
    assert [abf.att_conv is not None for abf in method.abfs] == [True, True, True, False]
    small = kdhub.create("method", "reviewkd", max_mid_channels=4)
    check_method(small, epoch=20)
    assert {abf.conv1.out_channels for abf in small.abfs} == {4}


def test_fewer_student_levels_pair_the_last_ones() -> None:
    student_taps = {**TINY_TAPS, "stages": ["stage3"]}
    method = kdhub.create("method", "reviewkd")
    check_method(method, student_taps=student_taps, epoch=20)
    assert method.num_levels == 2
    assert [abf.conv2.out_channels for abf in method.abfs] == [64, 64]
    assert method.out_sizes == [(4, 4), (1, 1)]


def test_warmup_counts_epochs_from_one() -> None:
    method = kdhub.create("method", "reviewkd", warmup_epochs=20)
    result = check_method(method, epoch=20)
    out = result.outputs
    method.eval()  # fixed BN statistics: the same inputs give the same loss at every epoch
    losses = {}
    for epoch in (1, 10, 20, 40):
        out.epoch = epoch
        losses[epoch] = method.loss(out).detach()
    torch.testing.assert_close(losses[1] * 20, losses[20])
    torch.testing.assert_close(losses[10] * 2, losses[20])
    torch.testing.assert_close(losses[40], losses[20])
    assert kdhub.create("method", "reviewkd", warmup_epochs=0).warmup_factor(1) == 1.0


def test_trainable_parts_get_gradients() -> None:
    method = kdhub.create("method", "reviewkd")
    check_method(method, epoch=20)
    for name, p in method.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_teacher_post_relu_variant_needs_no_preact_taps() -> None:
    method = kdhub.create("method", "reviewkd", teacher_preact=False)
    assert method.feature_roles == ("stages", "pooled")
    no_preact = {k: v for k, v in TINY_TAPS.items() if k != "preact_stages"}
    check_method(method, student_taps=no_preact, teacher_taps=no_preact, epoch=20)
    with pytest.raises(kdhub.IncompatibleError, match="preact_stages"):
        check_method(kdhub.create("method", "reviewkd"), teacher_taps=no_preact)


@pytest.mark.skipif("resnet8x4" not in kdhub.list_plugins("model"), reason="needs the zoo's CIFAR ResNets")
def test_one_step_resnet32x4_to_resnet8x4_matches_the_reference_table() -> None:
    s_plugin, t_plugin = kdhub.create("model", "resnet8x4"), kdhub.create("model", "resnet32x4")
    student = s_plugin.build(num_classes=100, in_channels=3, image_size=32)
    teacher = t_plugin.build(num_classes=100, in_channels=3, image_size=32).eval()
    method = kdhub.create("method", "reviewkd")
    taps_s, taps_t = s_plugin.taps(student), t_plugin.taps(teacher)
    check_method(method, student, teacher, taps_s, taps_t, 100, batch_size=4, image_size=32, epoch=20)
    # mdistiller's hand-written table for this pair: IN/OUT_CHANNELS [64, 128, 256, 256], SHAPES [1, 8, 16, 32]
    assert [abf.conv1.in_channels for abf in method.abfs] == [64, 128, 256, 256]
    assert [abf.conv2.out_channels for abf in method.abfs] == [64, 128, 256, 256]
    assert {abf.conv1.out_channels for abf in method.abfs} == {256}
    assert method.out_sizes == [(32, 32), (16, 16), (8, 8), (1, 1)]


def test_real_run_on_digits_learns() -> None:
    trainer = digits_trainer([{"name": "reviewkd", "options": {"warmup_epochs": 2}}], epochs=3)
    result = trainer.fit()
    losses = logged(trainer, "loss/reviewkd")
    assert len(losses) == 3
    assert all(math.isfinite(v) for v in losses)
    assert losses[2] < losses[1]  # past the warm-up (epoch 1 has factor 1/2)
    assert result.last_acc > 50
