"""The model zoo: every architecture builds from the data's shape and learns on the CPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from analog_onnx.errors import AnalogError  # noqa: E402
from analog_onnx.train.zoo import ARCHS, TOKEN_ARCHS, build_model  # noqa: E402

SAMPLE_ARCHS = [arch for arch in ARCHS if arch not in TOKEN_ARCHS]


@pytest.mark.parametrize("arch", SAMPLE_ARCHS)
@pytest.mark.parametrize("in_shape", [(1, 8, 8), (3, 16, 16)])
def test_every_arch_trains_a_few_steps(arch: str, in_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(arch, in_shape, 7)
    x, y = torch.randn(8, *in_shape), torch.randint(0, 7, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)  # 0.05 overshoots for BN nets on 8 samples
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(4):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True) if p.grad is not None)
    assert model.eval()(x).shape == (8, 7)


@pytest.mark.parametrize("arch", TOKEN_ARCHS)
def test_gpts_learn_next_tokens_and_tie_their_output_layer(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, (12,), 20)
    assert model.lm_head.weight is model.wte.weight
    ids = torch.randint(0, 20, (4, 12))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).reshape(-1, 20), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    logits = model.eval()(ids[:, :5])  # shorter windows than the context are fine
    assert logits.shape == (4, 5, 20)
    changed = ids[:, :5].clone()
    changed[:, 4] = (changed[:, 4] + 1) % 20
    torch.testing.assert_close(model(changed)[:, :4], logits[:, :4])  # causal: no position sees a later one
    with pytest.raises(AnalogError, match="needs token windows"):
        build_model(arch, (1, 8, 8), 10)


def test_mlp_takes_vectors_and_conv_archs_refuse_them() -> None:
    assert build_model("mlp", (40,), 10)(torch.randn(3, 40)).shape == (3, 10)
    with pytest.raises(AnalogError, match="needs image inputs"):
        build_model("lenet5", (40,), 10)


def test_unknown_arch_and_too_few_classes_are_user_errors() -> None:
    with pytest.raises(AnalogError, match="unknown arch"):
        build_model("resnet50", (3, 32, 32), 10)
    with pytest.raises(AnalogError, match="at least 2 classes"):
        build_model("mlp", (4,), 1)


def test_classic_sizes() -> None:
    """Parameter counts of the well-known layouts (LeNet-5 on 28x28, ResNet-20 and ResNet-18 on CIFAR)."""
    def count(arch: str, shape: tuple[int, ...]) -> int:
        return sum(p.numel() for p in build_model(arch, shape, 10).parameters())

    assert count("lenet5", (1, 28, 28)) == 61706
    assert 0.26e6 < count("resnet20", (3, 32, 32)) < 0.28e6
    assert 11.1e6 < count("resnet18", (3, 32, 32)) < 11.2e6
