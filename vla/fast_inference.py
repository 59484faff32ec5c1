"""Decoding at fixed shapes, for speed: the instruction read once, static input buffers, and
on a GPU the whole decode replayed as one CUDA graph (L1, L2, V10).

At batch 1 the policy is launch-bound: a decode is a few hundred small kernels, each costing
more to launch from Python than to run. ``StaticDecoder`` removes what a fixed shape allows:

- the instruction's encoder states come in already read (``text_inputs``: the frozen encoder
  runs once per instruction, padded to ``text_max_length`` so every call has one shape;
  padding is masked, so the tokens do not change);
- ``mode="graph"``: the decode is captured once as a CUDA graph and replayed, one launch for
  everything (inputs are copied into the graph's static buffers first);
- ``mode="compile"``: ``torch.compile`` fuses the small ops (on a CPU into C++ loops);
  ``"compile-graph"``: the compiled decode (fewer, fused kernels) captured as a CUDA graph;
- ``mode="onnx"``: the decode exported once to ONNX and run by ONNX Runtime (CPU; the ``onnx``
  extra): one call into C++ per decode instead of a few hundred PyTorch operator calls;
- ``dtype``: bf16 / fp16 matrix products under autocast, as training runs them (the tokens
  may then differ from fp32's: eval/bench_inference.py reports how often);
- ``attention="flex"``: the prefix-LM mask as a FlexAttention block mask instead of a dense
  boolean bias for SDPA (compiled, one fused attention kernel per layer).

``decode(batch)`` returns the action bins of ``policy.decode`` (greedy) for a batch of exactly
``batch_size`` observations.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from vla.policy import VLAPolicy

MODES = ("eager", "graph", "compile", "compile-graph", "onnx")
ATTENTIONS = (
    "sdpa",
    "flex",
)  # SDPA with a boolean mask | FlexAttention (parallel decoding; compiled: one fused kernel)
INPUT_NAMES = ("image", "proprio", "text_states", "text_mask")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# FlexAttention's GPU kernel puts batch x heads on one launch-grid axis, which CUDA caps at
# 65,535 (inferred: batch 8,192 x 8 heads = 65,536 failed with "CUDA driver error: invalid
# argument" on an H100, batch 4,096 ran).
FLEX_GRID_LIMIT = 65_535


def check_flex_batch(batch_size: int, heads: int, device: torch.device) -> None:
    """One clear error instead of CUDA's when FlexAttention on a GPU cannot launch this batch."""
    if device.type == "cuda" and batch_size * heads > FLEX_GRID_LIMIT:
        raise ValueError(
            f"attention=flex on a GPU runs at most {FLEX_GRID_LIMIT // heads:,} samples per batch with {heads} "
            f"heads (batch x heads <= {FLEX_GRID_LIMIT:,}, CUDA's grid limit), got batch {batch_size:,}: "
            "use a smaller batch or attention=sdpa"
        )


def text_inputs(policy: VLAPolicy, instructions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The instructions' encoder states and mask, padded to ``text_max_length`` tokens."""
    states, mask = policy.text(instructions, device)
    pad = policy.config.text_max_length - states.shape[1]
    return F.pad(states, (0, 0, 0, pad)), F.pad(mask, (0, pad))


class StaticDecoder:
    """Greedy decoding of ``batch_size`` observations at a time (module docstring)."""

    def __init__(
        self,
        policy: VLAPolicy,
        batch_size: int,
        device: torch.device,
        dtype: str = "fp32",
        mode: str = "eager",
        use_cache: bool = True,
        compile_mode: str = "default",
        attention: str = "sdpa",
    ):
        policy.require_plain_blocks("the static decoder (CUDA graphs, compile, ONNX)")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid values are: {', '.join(MODES)}")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; valid values are: {', '.join(DTYPES)}")
        if mode in ("graph", "compile-graph") and device.type != "cuda":
            raise ValueError(f"mode={mode} captures a CUDA graph: it needs device=cuda")
        if mode == "onnx" and (device.type != "cpu" or dtype != "fp32" or "wrist" in policy.config.cameras):
            raise ValueError("mode=onnx runs the scene-camera decode in fp32 on the CPU: needs device=cpu, dtype=fp32")
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}; valid values are: {', '.join(ATTENTIONS)}")
        if attention == "flex":
            if policy.config.decoding != "parallel" or mode == "onnx":
                raise ValueError("attention=flex serves parallel decoding in PyTorch: needs decoding=parallel, no onnx")
            check_flex_batch(batch_size, policy.config.heads, device)
        self.dtype, self.device, self.mode, self.batch_size = DTYPES[dtype], device, mode, batch_size
        self.policy = policy.to(device).eval()
        if attention == "flex":  # on a shallow copy: the caller's policy keeps SDPA
            self.policy = copy.copy(self.policy)
            self.policy.flex_attention = True
        if self.dtype != torch.float32 and mode != "onnx":
            self.policy = _matmul_weights_in(self.policy, self.dtype)
        self.use_cache = use_cache  # autoregressive decoding: the KV cache, or recompute per token
        c = policy.config
        length, width = c.text_max_length, policy.text.out_dim
        self.inputs = {
            "image": torch.zeros(batch_size, c.image_size, c.image_size, 3, dtype=torch.uint8, device=device),
            "proprio": torch.zeros(batch_size, c.proprio_dim, device=device),
            "text_states": torch.zeros(batch_size, length, width, device=device),
            "text_mask": torch.ones(batch_size, length, dtype=torch.bool, device=device),
        }
        if "wrist" in c.cameras:
            self.inputs["wrist_image"] = torch.zeros_like(self.inputs["image"])
        self._run = self._eager
        if mode in ("compile", "compile-graph"):
            # "max-autotune-no-cudagraphs" also tries Triton matmul templates with fused epilogues
            self._run = torch.compile(self._eager, dynamic=False, mode=compile_mode)
        if mode == "onnx":
            self._run = self._onnx_session()
        self.graph: torch.cuda.CUDAGraph | None = None

    @torch.no_grad()
    def _eager(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.dtype == torch.float32:
            return self.policy.decode(inputs, use_cache=self.use_cache)
        with torch.autocast(self.device.type, dtype=self.dtype):
            return self.policy.decode(inputs, use_cache=self.use_cache)

    def load(self, batch: dict[str, Any]) -> None:
        """Copy ``batch`` (images, proprio, and instructions or their text states) into the buffers."""
        n = len(batch["proprio"])
        if n != self.batch_size:
            raise ValueError(f"this decoder was built for batches of {self.batch_size}, got {n}")
        if "text_states" in batch:
            states, mask = batch["text_states"], batch["text_mask"]
        else:
            states, mask = text_inputs(self.policy, list(batch["instruction"]), self.device)
        for key, value in (("text_states", states), ("text_mask", mask)):
            self.inputs[key].copy_(value)
        for key in ("image", "wrist_image", "proprio"):
            if key in self.inputs:  # proprio: the leading elements the policy reads
                self.inputs[key].copy_(torch.as_tensor(batch[key])[..., : self.inputs[key].shape[-1]])

    @torch.no_grad()
    def decode(self, batch: dict[str, Any] | None = None) -> torch.Tensor:
        """Bins (batch_size, action_dim) of ``batch`` (None: of what the buffers hold now)."""
        if batch is not None:
            self.load(batch)
        if not self.mode.endswith("graph"):
            return self._run(self.inputs)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.output.clone()

    def _onnx_session(self):
        """The decode at this batch size as an ONNX Runtime session (exported once, by tracing)."""
        import tempfile
        import warnings

        try:
            import onnxruntime
        except ImportError:
            raise ImportError("mode=onnx needs ONNX Runtime: pip install -e '.[onnx]'") from None
        decode = _FeatureDecode(self.policy, self.use_cache)
        inputs = tuple(self.inputs[name] for name in INPUT_NAMES)
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer warns of every Python-level shape check
            path = f"{folder}/decode.onnx"
            names = {"input_names": list(INPUT_NAMES), "output_names": ["bins"]}
            torch.onnx.export(decode, inputs, path, dynamo=False, opset_version=17, **names)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

        def run(buffers: dict[str, torch.Tensor]) -> torch.Tensor:
            feed = {name: buffers[name].numpy() for name in INPUT_NAMES}
            return torch.from_numpy(session.run(None, feed)[0])

        return run

    def _capture(self) -> None:
        # warm up on a side stream (lazy initialisation, cuBLAS workspaces), then capture
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._run(self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = self._run(self.inputs)


def _matmul_weights_in(policy: VLAPolicy, dtype: torch.dtype) -> VLAPolicy:
    """A copy whose Linear and Conv2d weights are stored in ``dtype``: autocast would cast the
    same fp32 weights to the same values on every call (a copy kernel per weight, ~1/5 of a
    batch-1 decode on a GPU); cast once, its casts are no-ops. The text encoder is shared."""
    text, policy.text = policy.text, None
    try:
        lowered = copy.deepcopy(policy)
    finally:
        policy.text = text
    for module in lowered.modules():
        if type(module) in (torch.nn.Linear, torch.nn.Conv2d):
            module.to(dtype)
    lowered.text = text
    return lowered


class _FeatureDecode(torch.nn.Module):
    """``policy.decode`` as a module of tensors alone (what ONNX export traces)."""

    def __init__(self, policy: VLAPolicy, use_cache: bool):
        super().__init__()
        self.policy, self.use_cache = policy, use_cache

    def forward(self, image, proprio, text_states, text_mask) -> torch.Tensor:
        batch = {"image": image, "proprio": proprio, "text_states": text_states, "text_mask": text_mask}
        return self.policy.decode(batch, use_cache=self.use_cache)


def quantize_int8(policy: VLAPolicy) -> VLAPolicy:
    """A copy whose Linear layers hold int8 weights and quantise their inputs per call
    (PyTorch's dynamic int8, for the CPU); the frozen text encoder stays as it is (it runs
    once per instruction)."""
    from torch.ao.quantization import quantize_dynamic

    text, policy.text = policy.text, None
    try:
        quantised = quantize_dynamic(copy.deepcopy(policy), {torch.nn.Linear}, dtype=torch.qint8)
    finally:
        policy.text = text
    quantised.text = text
    return quantised.eval()


def quantize_weight_int8(policy: VLAPolicy) -> VLAPolicy:
    """A copy whose Linear layers hold int8 weights, one scale per output channel, while the
    activations keep their dtype (weight-only int8, torchao's ``Int8WeightOnlyConfig``: what a
    GPU gains from int8 is weight memory and traffic, and its matrix products stay in
    fp32/bf16). The text encoder stays as it is (it runs once per instruction), and so do the
    keypoint reader's ``nn.MultiheadAttention`` projections (it passes its weights to
    ``F.multi_head_attention_forward``, which quantised weights do not support)."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise ImportError("weight-only int8 needs torchao: pip install -e '.[quant]'") from None

    text, policy.text = policy.text, None
    try:
        quantised = copy.deepcopy(policy)
    finally:
        policy.text = text
    quantize_(quantised, Int8WeightOnlyConfig(), filter_fn=lambda module, _: type(module) is torch.nn.Linear)
    quantised.text = text
    return quantised.eval()
