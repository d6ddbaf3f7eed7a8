"""The CPU-kernel switch (sqvae_speech.nets.cpu): its API, and that it alone decides which
code runs. With the switch off, CPU executes the very code a GPU executes (stock convs,
stock / masked batch norm, nn.GRU over pack_padded_sequence), and no kernel; with it on,
the kernels run and the stock GRU packing does not. ``train`` keeps freed memory on CPU
only while the switch is on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

from sqvae_speech.nets import cpu, masking, speech
from sqvae_speech.nets.cpu import ENV_VAR, applies_to, enabled, use_cpu_kernels
from sqvae_speech.nets.speech import SpeechDecoder, SpeechEncoder


@pytest.mark.parametrize("value,expected", [(None, True), ("", True), ("1", True), (" 1 ", True), ("0", False)])
def test_environment_variable_sets_the_switch(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool) -> None:
    if value is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, value)
    assert enabled() is expected
    assert applies_to(torch.zeros(1)) is expected


@pytest.mark.parametrize("value", ["yes", "true", "2", "off"])
def test_other_values_of_the_environment_variable_are_errors(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    with pytest.raises(ValueError, match=ENV_VAR):
        enabled()


def test_context_manager_overrides_the_environment_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "0")
    assert not enabled()
    with use_cpu_kernels(True):
        assert enabled()
        with use_cpu_kernels(False):
            assert not enabled()
        assert enabled()
        with pytest.raises(RuntimeError), use_cpu_kernels(False):
            raise RuntimeError
        assert enabled()  # restored on the way out of an exception too
    assert not enabled()
    monkeypatch.setenv(ENV_VAR, "1")
    assert enabled()


def test_kernels_apply_to_cpu_tensors_only() -> None:
    """Any other device (a GPU; here the meta device, which every build has) takes the
    stock path even with the switch on."""
    with use_cpu_kernels(True):
        assert applies_to(torch.zeros(2))
        assert not applies_to(torch.zeros(2, device="meta"))


class _Calls:
    """Counts the calls of module-level functions that the model files dispatch to."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: dict[str, int] = {}
        for module, name in ((speech, "encoder_conv"), (speech, "decode_time_major"), (masking, "train_batch_norm"),
                             (speech, "pack_padded_sequence"), (speech, "pad_packed_sequence")):
            monkeypatch.setattr(module, name, self._counted(name, getattr(module, name)))

    def _counted(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] = self.counts.get(name, 0) + 1
            return fn(*args, **kwargs)

        return wrapper


def _train_step(lengths: list[int]) -> list[type]:
    """One forward + backward of a small encoder and decoder in training on a batch with
    these latent lengths; returns the types of what the decoder's nn.GRU was given."""
    torch.manual_seed(0)
    enc = SpeechEncoder(80, 16, 8).train()
    dec = SpeechDecoder(in_channels=8, n_speakers=2, speaker_embedding_dim=4, hidden_size=6, n_mels=80).train()
    seen: list[type] = []
    dec.rnn.register_forward_pre_hook(lambda _m, args: seen.append(type(args[0])))
    mel_len = torch.tensor([2 * n + 2 for n in lengths])
    mel = torch.randn(len(lengths), 80, int(mel_len.max()))
    z, z_len = enc(mel, mel_len)
    assert z_len.tolist() == lengths
    out, _ = dec(z, z_len, torch.zeros(len(lengths), dtype=torch.long))
    out.sum().backward()
    assert all(p.grad is not None for p in [*enc.parameters(), *dec.parameters()])
    return seen


@pytest.mark.parametrize("how", ["context", "environment"])
def test_switch_off_runs_exactly_the_gpu_code_on_padded_batches(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """The decoder's packed nn.GRU branch (the one CUDA takes) is executed here, on CPU."""
    calls = _Calls(monkeypatch)
    if how == "environment":
        monkeypatch.setenv(ENV_VAR, "0")
        seen = _train_step([9, 3, 6])
    else:
        monkeypatch.setenv(ENV_VAR, "1")
        with use_cpu_kernels(False):
            seen = _train_step([9, 3, 6])
    assert seen == [PackedSequence]
    assert calls.counts == {"pack_padded_sequence": 1, "pad_packed_sequence": 1}


def test_switch_off_runs_the_plain_gru_on_crops(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _Calls(monkeypatch)
    with use_cpu_kernels(False):
        seen = _train_step([7, 7])
    assert seen == [torch.Tensor]  # nn.GRU on the batch-first tensor, no packing
    assert calls.counts == {}


@pytest.mark.parametrize("lengths", [[9, 3, 6], [7, 7]], ids=["padded", "crops"])
def test_switch_on_runs_the_kernels_on_cpu(monkeypatch: pytest.MonkeyPatch, lengths: list[int]) -> None:
    calls = _Calls(monkeypatch)
    with use_cpu_kernels(True):
        seen = _train_step(lengths)
    assert seen == []  # nn.GRU's forward is not called: its weights go to the time-major layers
    expected = {"encoder_conv": 5, "decode_time_major": 1}
    if lengths[0] != lengths[-1]:  # batch norm with lengths; crops take the fused stock kernel
        expected["train_batch_norm"] = 5
    assert calls.counts == expected


def test_hand_written_gru_backward_runs_only_with_the_switch_on() -> None:
    """Teeth for the equality tests: the autograd graphs of the two settings differ."""
    dec = SpeechDecoder(in_channels=4, n_speakers=1, speaker_embedding_dim=2, hidden_size=3, n_mels=5).train()
    z, lengths, spk = torch.randn(2, 4, 5, requires_grad=True), torch.tensor([5, 2]), torch.zeros(2, dtype=torch.long)

    def graph_nodes(kernels: bool) -> set[str]:
        with use_cpu_kernels(kernels):
            out, _ = dec(z, lengths, spk)
        names, stack, done = set(), [out.grad_fn], set()
        while stack:
            fn = stack.pop()
            if fn is None or fn in done:
                continue
            done.add(fn)
            names.add(type(fn).__name__)
            stack.extend(f for f, _ in fn.next_functions)
        return names

    assert "GRULayerBackward" in graph_nodes(True)
    assert "GRULayerBackward" not in graph_nodes(False)


@pytest.mark.parametrize("kernels", [True, False])
def test_train_keeps_freed_memory_on_cpu_only_with_the_switch_on(real_featstore, tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                                 kernels: bool) -> None:
    from conftest import tiny_experiment

    from sqvae_speech import train as train_module

    applied = []
    monkeypatch.setattr(train_module, "keep_freed_memory", lambda: applied.append(True) or True)
    with use_cpu_kernels(kernels):
        summary = train_module.train(tiny_experiment(steps=1, checkpoint_every=1), real_featstore.path, tmp_path / "exp",
                                     cpu=True, progress=False)
    assert summary["step"] == 1
    assert applied == ([True] if kernels else [])


def test_the_package_documents_its_kernels() -> None:
    doc = cpu.__doc__ or ""
    for name in ("conv", "batchnorm", "gru", "bigru", "allocator", ENV_VAR):
        assert name in doc, name
