"""The VLA model side of the sandbox (action tokenizer, ViT, language encoder, policy).

It knows the observation/action contract of DESIGN.md but nothing of MuJoCo; the
demonstration reader it trains from is ``envs.dataset.DemoDataset``.
"""
