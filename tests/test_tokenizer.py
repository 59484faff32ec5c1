"""Action tokenizer: round trip within half a bin, edges, quantile bins, token-id block."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vla.tokenizer import ActionTokenizer, soft_bin_targets

actions = arrays(np.float64, st.tuples(st.integers(1, 16), st.just(7)), elements=st.floats(-1.0, 1.0))


@settings(max_examples=200, deadline=None)
@given(actions, st.sampled_from([2, 16, 256, 1000]))
def test_uniform_round_trip_error_is_at_most_half_a_bin(values, bins):
    tokenizer = ActionTokenizer(bins)
    decoded = tokenizer.decode(tokenizer.encode(values))
    assert np.all(np.abs(decoded - values) <= (2.0 / bins) / 2 + 1e-6)  # decode is float32


def test_edge_values_map_to_the_first_and_last_bin_and_outside_values_are_clipped():
    tokenizer = ActionTokenizer(256)
    assert tokenizer.encode(np.full(7, -1.0)).tolist() == [0] * 7
    assert tokenizer.encode(np.full(7, 1.0)).tolist() == [255] * 7
    assert tokenizer.encode(np.full(7, 3.0)).tolist() == [255] * 7
    assert tokenizer.encode(np.full(7, -3.0)).tolist() == [0] * 7
    assert np.allclose(tokenizer.decode(np.array([[0] * 7, [255] * 7]))[:, 0], [-1 + 1 / 256, 1 - 1 / 256])


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (500, 7), elements=st.floats(-1.0, 1.0)))
def test_quantile_bins_round_trip_within_half_a_bin_inside_their_range(data):
    low, high = np.percentile(data, 1, axis=0), np.percentile(data, 99, axis=0)
    tokenizer = ActionTokenizer(256, low, high, "quantile")
    inside = np.clip(data, low, high)
    assert np.all(np.abs(tokenizer.decode(tokenizer.encode(inside)) - inside) <= tokenizer.width / 2 + 1e-6)


def test_token_ids_live_in_a_reserved_block_and_state_round_trips():
    tokenizer = ActionTokenizer(256, token_offset=30522)
    bins = tokenizer.encode(np.linspace(-1, 1, 7))
    ids = tokenizer.to_token_ids(bins)
    assert ids.min() >= 30522 and ids.max() < 30522 + 256
    assert np.array_equal(tokenizer.from_token_ids(ids), bins)
    restored = ActionTokenizer.from_state_dict(tokenizer.state_dict())
    assert np.array_equal(restored.encode(np.linspace(-1, 1, 7)), bins)


@pytest.mark.parametrize("bins", [0, 1, -5])
def test_bad_bin_count_is_rejected(bins):
    with pytest.raises(ValueError, match="bins"):
        ActionTokenizer(bins)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 255), st.floats(0.3, 20.0))
def test_soft_labels_are_a_distribution_peaked_on_the_label_bin(label, sigma):
    probs = soft_bin_targets(torch.tensor([label]), 256, sigma)[0]
    assert probs.shape == (256,) and torch.isclose(probs.sum(), torch.tensor(1.0))
    assert probs.min() >= 0 and probs.argmax().item() == label
    # farther bins get less: the order of the bins is in the label
    right = probs[label:]
    assert torch.all(right[1:] <= right[:-1] + 1e-7)


def test_soft_labels_are_symmetric_inside_the_range_and_one_hot_at_sigma_zero():
    probs = soft_bin_targets(torch.tensor([100]), 256, 4.0)[0]
    assert torch.allclose(probs[100 - 10 : 100], probs[101 : 101 + 10].flip(0), atol=1e-6)
    assert torch.equal(soft_bin_targets(torch.tensor([3, 7]), 16, 0.0), torch.eye(16)[[3, 7]])
    with pytest.raises(ValueError, match="label sigma must be >= 0 bins, got -1"):
        soft_bin_targets(torch.tensor([3]), 16, -1.0)


def test_soft_labels_at_the_edge_keep_their_mass_inside_the_range():
    probs = soft_bin_targets(torch.tensor([0, 255]), 256, 6.0)
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    assert probs[0, 0] > probs[0, 1] > probs[0, 2] and probs[1, 255] > probs[1, 254]
