"""Fully sharded data parallelism (FSDP2, ZeRO-3) of the policy, and what each rank holds.

``shard_policy(policy)`` turns every transformer block (decoder, ViT, scratch text encoder)
and the text embedding into a shard unit of PyTorch's ``fully_shard``, then the policy itself
(the root unit: embeddings, heads, the keypoint reader and whatever else is left). Each rank
keeps 1/world of every parameter, its gradient and its optimiser state; a unit's parameters
are all-gathered just before its forward and backward and dropped again after them, and its
gradients are reduce-scattered, so besides the root's only a unit or two are whole at a time
(the next one is gathered while this one computes).

The training loop is unchanged: ``policy(batch)`` is still the loss, the optimiser is built
on the sharded parameters (DTensors) after sharding, ``clip_grad_norm_`` computes the global
norm across shards. What changes is checkpointing and decoding: ``full_state_dict`` gathers
the weights (a collective: every rank calls it), and ``decode`` is registered as a forward
method so it gathers the root's parameters too.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from vla.language import ScratchTextEncoder
from vla.policy import VLAPolicy


def shard_units(policy: VLAPolicy) -> list[nn.Module]:
    """The modules sharded as units of their own, inner first (``fully_shard`` wants children
    before parents): every transformer block, and the scratch encoder's word embedding (at
    width 256 its 30,522 rows are 7.8M parameters, more than the six decoder blocks). A frozen
    pretrained encoder is one unit: left in the root, all its weights would be gathered with
    the root's for the whole forward."""
    units: list[nn.Module] = []
    if policy.vision is not None:
        units += list(policy.vision.blocks)
    text = policy.text
    if isinstance(text, ScratchTextEncoder):
        units += [text.embed, *text.encoder.layers]
    elif any(True for _ in text.parameters()):
        units.append(text)
    units += list(policy.blocks)
    return units


def shard_policy(policy: VLAPolicy, reshard_after_forward: bool = True) -> VLAPolicy:
    """Shard ``policy`` in place over the default process group (ZeRO-3: parameters, gradients
    and, through the optimiser built afterwards, its states). ``reshard_after_forward=False``
    keeps the gathered weights from forward to backward (ZeRO-2: one all-gather fewer per unit,
    full weights alive through the step). Returns the same object, now also an ``FSDPModule``."""
    if not dist.is_initialized():
        raise RuntimeError("shard_policy needs torch.distributed initialised (init_process_group) first")
    for unit in shard_units(policy):
        fully_shard(unit, reshard_after_forward=reshard_after_forward)
    fully_shard(policy, reshard_after_forward=reshard_after_forward)
    # decode() reads the root's weights (heads, embeddings) outside forward(): registered, it
    # gathers them as forward does; every rank must call it, since gathering is collective.
    register_fsdp_forward_method(policy, "decode")
    return policy


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights as plain CPU tensors, the same on every rank (gathered from the
    shards; a collective call). A plain ``VLAPolicy`` loads the result with ``load_state_dict``."""
    # not cpu_offload=True: with it only rank 0 keeps the gathered copy
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu() for k, v in state.items()}


def local_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of ``tensors`` held by this rank: a sharded parameter (DTensor) counts its own shard."""
    total = 0
    for t in tensors:
        local = t.to_local() if isinstance(t, DTensor) else t
        total += local.numel() * local.element_size()
    return total


def rank_memory(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds between steps: parameters, gradients, optimiser states (AdamW's
    two moments; its step counters are counted too, 4-8 bytes each)."""
    parameters = list(model.parameters())
    states = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {
        "parameters": local_bytes(parameters),
        "gradients": local_bytes([p.grad for p in parameters if p.grad is not None]),
        "optimizer": local_bytes(states),
    }
