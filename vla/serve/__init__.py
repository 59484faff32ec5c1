"""The batched policy server: ``python -m vla.serve checkpoint=<run dir or .pt>`` (configs/serve.yaml).

Many robots call one model over HTTP for actions (``vla.serve.client.PolicyClient``); the
server batches their observations dynamically, refuses what it cannot take in time, and
reports its health and metrics (vla/serve/app.py).
"""
