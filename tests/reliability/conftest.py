"""Hypothesis profiles for the reliability campaign.

``ci`` (the default): a small slice with a fixed seed, so CI is reproducible and quick.
``campaign``: many more generated cases; run it with ``python eval/reliability.py``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from tests.reliability import cases

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=12, derandomize=True, **_common)
settings.register_profile("campaign", max_examples=int(os.environ.get("VLA_CAMPAIGN_EXAMPLES", "120")), **_common)
settings.load_profile(os.environ.get("VLA_HYPOTHESIS_PROFILE", "ci"))


def pytest_sessionfinish(session, exitstatus):
    cases.flush()
