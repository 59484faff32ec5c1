"""Speculative decoding (vla/speculative.py): the target's own greedy tokens whatever the draft
guesses, acceptance 1.0 with the target as its own draft, and a draft of another vocabulary refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import TINY_MODEL
from vla.policy import PolicyConfig, VLAPolicy
from vla.speculative import SpeculativeDecoder
from vla.tokenizer import ActionTokenizer

WORDS = ["touch the red cube", "stack the blue cylinder on the green cube please", "lift it"]


def make_policy(seed: int, **overrides) -> VLAPolicy:
    torch.manual_seed(seed)
    return VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "proprio_dim": 8, **overrides})).eval()


def target_and_draft(delta: float | None, draft_decoding: str = "autoregressive") -> tuple[VLAPolicy, VLAPolicy]:
    """A 2-layer, 64-wide target and a 1-layer, 32-wide draft. ``delta``: both heads' biases favour
    bins 40 (by ``delta``) and 200 over every other, so the two agree on some tokens and not on
    others (fresh models otherwise agree on almost none); None: untouched weights."""
    target = make_policy(0, layers=2, width=64, heads=4)
    draft = make_policy(1, decoding=draft_decoding)
    if delta is not None:
        for policy in (target, draft):
            policy.head.bias.data.zero_()
            policy.head.bias.data[[40, 200]] = torch.tensor([20.0 + delta, 20.0])
    return target, draft


def random_batch(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g),
        "proprio": torch.randn(n, 8, generator=g),
        "instruction": [WORDS[i % len(WORDS)] for i in range(n)],
    }


@pytest.mark.parametrize("draft_decoding", ["autoregressive", "parallel"])
@pytest.mark.parametrize("delta", [None, 0.0, 0.2])
def test_speculative_tokens_are_the_targets_greedy_autoregressive_tokens(delta, draft_decoding):
    target, draft = target_and_draft(delta, draft_decoding)
    decoder = SpeculativeDecoder(target, draft)
    for seed in range(2):
        batch = random_batch(12, seed)
        tokens, stats = decoder.decode(batch)
        assert torch.equal(tokens, target.decode(batch, use_cache=True))
        assert torch.equal(tokens, target.decode(batch, use_cache=False))
        assert 0 <= stats.accepted <= stats.proposed and 0.0 <= stats.acceptance <= 1.0
        assert stats.accepted == int(stats.row_accepted.sum())
        assert 1 <= stats.target_passes <= 7 and stats.target_passes == int(stats.row_passes.max())
        # every pass gives each row at least one token: passes + accepted drafts >= 7 per row
        assert bool((stats.row_passes + stats.row_accepted >= 7).all())
    if delta is not None:  # partial agreement: rows accept different numbers, most in fewer than 7 passes
        assert 0.0 < stats.acceptance < 1.0 and len(set(stats.row_accepted.tolist())) > 1
        assert float(stats.row_passes.float().mean()) < 7


def test_batch_rows_decode_as_they_would_alone():
    target, draft = target_and_draft(0.2)
    decoder = SpeculativeDecoder(target, draft)
    batch = random_batch(6)
    tokens, stats = decoder.decode(batch)
    for i in range(6):
        row, row_stats = decoder.decode({k: v[i : i + 1] for k, v in batch.items()})
        assert torch.equal(row, tokens[i : i + 1])
        assert row_stats.accepted == int(stats.row_accepted[i])
        assert row_stats.target_passes == int(stats.row_passes[i])


def test_the_target_as_its_own_draft_is_accepted_whole_in_one_pass():
    target = make_policy(0, layers=2, width=64, heads=4)
    batch = random_batch(8)
    tokens, stats = SpeculativeDecoder(target, target).decode(batch)
    assert torch.equal(tokens, target.decode(batch))
    assert stats.acceptance == 1.0 and stats.proposed == 8 * 7
    assert stats.target_passes == 1 and bool((stats.row_passes == 1).all())


def test_a_draft_of_another_vocabulary_or_tokenizer_is_refused():
    target = make_policy(0)
    with pytest.raises(ValueError, match=r"share the target's action tokenizer, but bins 128 \(draft\) vs 256"):
        SpeculativeDecoder(target, make_policy(1, bins=128))
    draft = make_policy(1)
    same, other = ActionTokenizer(), ActionTokenizer(low=np.full(7, -0.5), high=np.full(7, 0.5))
    SpeculativeDecoder(target, draft, same, ActionTokenizer())  # equal tokenizers: fine
    with pytest.raises(ValueError, match=r"tokenizer low \[-0\.5.*\(draft\) vs \[-1\.0.*\(target\)"):
        SpeculativeDecoder(target, draft, same, other)
    with pytest.raises(ValueError, match="tokenizer mode quantile"):
        SpeculativeDecoder(target, draft, same, ActionTokenizer(mode="quantile"))


def test_a_parallel_target_is_refused():
    with pytest.raises(ValueError, match="checks an autoregressive target"):
        SpeculativeDecoder(make_policy(0, decoding="parallel"), make_policy(1))


def test_the_benchmark_section_times_speculation_on_real_observations(tmp_path):
    """eval/bench_inference.py --sections speculative on two tiny checkpoints (a smoke test of the
    script, never of its timings): every speculative row gives the target's tokens."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT
    from vla.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "target.pt", make_policy(0, layers=2, width=64, heads=4), ActionTokenizer())
    save_checkpoint(tmp_path / "draft.pt", make_policy(1), ActionTokenizer())
    save_checkpoint(tmp_path / "other.pt", make_policy(1, bins=128), ActionTokenizer(bins=128))
    out = tmp_path / "bench.json"
    command = [sys.executable, "eval/bench_inference.py", "--sections", "speculative", "--checkpoint"]
    command += [str(tmp_path / "target.pt"), "--draft", str(tmp_path / "draft.pt"), "--observations", "3"]
    result = subprocess.run(
        [*command, "--repeats", "3", "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())["speculative"]
    rows = {r["decoding"]: r for r in report["rows"]}
    assert set(rows) == {
        "target autoregressive",
        "target parallel",
        "draft autoregressive",
        "draft parallel",
        "speculative, autoregressive draft",
        "speculative, parallel draft",
    }
    for name in ("target autoregressive", "speculative, autoregressive draft", "speculative, parallel draft"):
        assert rows[name]["tokens_equal"] == rows[name]["actions_equal"] == 1.0
    assert 0.0 <= rows["speculative, parallel draft"]["acceptance"] <= 1.0
    assert report["observations"] == 3 and "tokens_equal" in report["as_trained_agreement"]
    command[command.index(str(tmp_path / "draft.pt"))] = str(tmp_path / "other.pt")
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "bins 128 (draft) vs 256 (target)" in result.stderr
