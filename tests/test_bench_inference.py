"""eval/bench_inference.py runs on the default and the large model config (few repeats: a
smoke test of the script, never of its timings) and checks KV-cache tokens against recomputation;
the fast decoding modes give the tokens plain decoding gives."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT, TINY_MODEL
from vla.fast_inference import StaticDecoder, text_inputs
from vla.policy import PolicyConfig, VLAPolicy


@pytest.mark.parametrize("model", ["small", "large"])
def test_the_inference_benchmark_runs_on_the_model_configs(model, tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "eval/bench_inference.py", "--model", model, "--repeats", "2", "--out", str(out)]
    command += ["--sections", "latency,throughput,decoding", "--modes", "eager,int8", "--batch-sizes", "1,4"]
    command += ["--probes", "3", "--dtypes", "fp32"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    decoding = report["decoding"]
    assert decoding["identical_tokens"] and set(decoding["median_ms"]) == {
        "kv_cache",
        "recompute",
        "recompute_all",
        "parallel",
    }
    eager = [r for r in report["latency"] if r["mode"] == "eager" and r["dtype"] == "fp32"]
    assert len(eager) == 3 and all(r["tokens_equal"] == 1.0 for r in eager)  # the reference itself
    assert {r["mode"] for r in report["latency"]} == {"eager", "int8"}
    assert {r["batch"] for r in report["throughput"]} == {1, 4}


def batch(policy: VLAPolicy, n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    words = ["touch the red cube", "stack the blue cylinder on the green cube please", "lift it"]
    return {
        "image": torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g),
        "proprio": torch.randn(n, 8, generator=g),
        "instruction": [words[i % 3] for i in range(n)],
    }


@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
@pytest.mark.parametrize("word_tokens", [False, True])
def test_static_decoding_gives_the_tokens_of_plain_decoding(decoding, word_tokens):
    torch.manual_seed(0)
    overrides = {"decoding": decoding, "proprio_dim": 8, "word_tokens": word_tokens, "sentence_token": True}
    policy = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, **overrides})).eval()
    policy.head.weight.data *= 50  # far-apart logits: padding the text to full length cannot flip a token
    data = batch(policy, 5)
    expected = policy.decode(data)
    decoder = StaticDecoder(policy, 5, torch.device("cpu"))
    assert torch.equal(decoder.decode(data), expected)
    states, mask = text_inputs(policy, data["instruction"], torch.device("cpu"))
    _, unpadded = policy.text(data["instruction"], torch.device("cpu"))
    assert states.shape[1] == policy.config.text_max_length > unpadded.shape[1]
    assert torch.equal(mask.sum(1), unpadded.sum(1))  # padding added, masked
    assert torch.equal(decoder.decode({**data, "text_states": states, "text_mask": mask}), expected)
    with pytest.raises(ValueError, match="built for batches of 5, got 2"):
        decoder.decode(batch(policy, 2))


@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
def test_onnx_runtime_decodes_the_tokens_of_pytorch(decoding):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    policy = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "decoding": decoding, "proprio_dim": 8})).eval()
    policy.head.weight.data *= 50
    decoder = StaticDecoder(policy, 3, torch.device("cpu"), mode="onnx")
    for seed in range(3):
        data = batch(policy, 3, seed)
        assert torch.equal(decoder.decode(data), policy.decode(data))


def test_static_decoding_refuses_what_this_machine_cannot_run():
    policy = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "proprio_dim": 8}))
    with pytest.raises(ValueError, match="mode=graph captures a CUDA graph: it needs device=cuda"):
        StaticDecoder(policy, 1, torch.device("cpu"), mode="graph")
    with pytest.raises(ValueError, match="unknown dtype 'int4'"):
        StaticDecoder(policy, 1, torch.device("cpu"), dtype="int4")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
def test_a_cuda_graph_replays_the_tokens_of_eager_decoding(decoding):
    torch.manual_seed(0)
    policy = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "decoding": decoding, "proprio_dim": 8})).cuda().eval()
    policy.head.weight.data *= 50
    decoder = StaticDecoder(policy, 3, torch.device("cuda"), mode="graph")
    for seed in range(3):  # new inputs each replay
        data = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch(policy, 3, seed).items()}
        assert torch.equal(decoder.decode(data), policy.decode(data))


def test_the_last_block_computing_only_the_actions_gives_the_full_blocks_states():
    """The decoder's last block skips the prefix positions nobody reads: the action states and
    the greedy tokens are those of running every position through every block."""
    torch.manual_seed(0)
    policy = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "proprio_dim": 8, "decoding": "parallel"})).eval()
    prefix, key_valid = policy.prefix(batch(policy, 6))
    p, d = prefix.shape[1], policy.config.action_dim
    x = torch.cat([prefix, policy._action_inputs(None, len(prefix), d)], 1)
    mask = policy._mask(torch.cat([key_valid, torch.ones(len(prefix), d, dtype=torch.bool)], 1), p)
    full = x
    for i, block in enumerate(policy.blocks):
        full = block(full, mask, None, i)
    trimmed = policy._run(x, mask, read_from=p)
    assert trimmed.shape == (len(prefix), d, x.shape[-1])
    torch.testing.assert_close(trimmed, full[:, p:], rtol=0, atol=1e-5)


def test_weight_only_int8_stores_int8_weights_and_keeps_the_tokens():
    """torchao's weight-only int8 (the ``quant`` extra): every plain Linear outside the text
    encoder holds int8 weights with per-channel scales, the saved weights shrink, and greedy
    tokens stay those of fp32 on most observations (a weight moves by at most half a step)."""
    pytest.importorskip("torchao", reason="the quant extra is not installed: pip install -e '.[quant]'")
    from torchao.quantization import Int8Tensor

    from vla.fast_inference import quantize_weight_int8

    torch.manual_seed(0)
    policy = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "proprio_dim": 8})).eval()
    quantised = quantize_weight_int8(policy)
    linears = {n: m for n, m in quantised.named_modules() if type(m) is torch.nn.Linear and not n.startswith("text.")}
    assert linears and all(isinstance(m.weight, Int8Tensor) for m in linears.values())
    assert all(type(m.weight) is torch.nn.Parameter for m in policy.modules() if type(m) is torch.nn.Linear)
    data = batch(policy, 32)
    agree = (quantised.decode(data) == policy.decode(data)).float().mean().item()
    assert agree >= 0.9, agree
    assert quantised.text is policy.text  # shared, not copied


@pytest.mark.parametrize("word_tokens", [False, True], ids=["no padding", "padded words"])
def test_flex_attention_decodes_the_tokens_of_sdpa(word_tokens):
    """The prefix-LM mask as a FlexAttention block mask gives SDPA's tokens (padding included),
    and the caller's policy keeps SDPA."""
    torch.manual_seed(0)
    overrides = {"decoding": "parallel", "proprio_dim": 8, "word_tokens": word_tokens, "sentence_token": True}
    policy = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, **overrides})).eval()
    policy.head.weight.data *= 50  # far-apart logits: float noise between kernels cannot flip a token
    data = batch(policy, 6)
    expected = StaticDecoder(policy, 6, torch.device("cpu")).decode(data)
    flex = StaticDecoder(policy, 6, torch.device("cpu"), attention="flex")
    assert flex.policy.flex_attention and not policy.flex_attention
    assert torch.equal(flex.decode(data), expected)
    if not word_tokens:  # compiled: the masks are built outside the graph, once per shape
        compiled = StaticDecoder(policy, 6, torch.device("cpu"), mode="compile", attention="flex")
        assert torch.equal(compiled.decode(data), expected) and torch.equal(compiled.decode(data), expected)
        assert len(compiled.policy._flex_cache) == 1
    with pytest.raises(ValueError, match="decoding=parallel"):
        StaticDecoder(
            VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "proprio_dim": 8})),
            1,
            torch.device("cpu"),
            attention="flex",
        )


def test_flex_attention_refuses_a_gpu_batch_past_cudas_grid_limit_in_one_line():
    """batch x heads over 65,535 is one clear error on a GPU (CUDA's own is "invalid argument");
    the CPU kernel has no such grid, so the same batch is allowed there."""
    from vla.fast_inference import check_flex_batch

    check_flex_batch(8_191, 8, torch.device("cuda"))  # 65,528: fits
    with pytest.raises(ValueError, match=r"at most 8,191 samples per batch with 8 heads.*got batch 8,192"):
        check_flex_batch(8_192, 8, torch.device("cuda"))
    check_flex_batch(8_192, 8, torch.device("cpu"))
