"""Generated overrides for every Hydra entry point: unknown keys, wrong types, out-of-range
numbers. Each must end in one ``error:`` line from the config checks, before the job (the long
work) starts; a job reached with a value it cannot use is a failure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import DictConfig, ListConfig

from tests.reliability.cases import record_case
from vla.app.cli import FRACTIONS, compose_config, hydra_entry

# entry point (its config) -> the check its script runs before the job
ENTRY_POINTS = ("bc", "ppo", "collect", "dagger", "eval", "robustness", "load_test", "serve", "demo", "inspect")


def check_for(config_name: str):
    if config_name == "bc":
        from vla.training.bc import check_config
    elif config_name == "ppo":
        from vla.rl.finetune import check_config
    elif config_name == "collect":
        from train.collect import collect_config as check_config
    elif config_name == "dagger":
        from vla.training.dagger import check_config
    elif config_name == "eval":
        from eval.evaluate import check_config
    elif config_name == "robustness":
        from eval.robustness import check_config
    elif config_name == "load_test":
        from eval.load_test import check_config
    elif config_name == "demo":
        from vla.demo.__main__ import check_config
    elif config_name == "inspect":
        from eval.inspect_policy import check_config
    else:
        from vla.serve.__main__ import check_config
    return check_config


def leaves(node, prefix: str = "") -> dict[str, object]:
    """Every scalar setting of a composed config, by its dotted key."""
    found: dict[str, object] = {}
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else []
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            found.update(leaves(value, path + "."))
        elif not isinstance(value, ListConfig):
            found[path] = value
    return found


LEAVES = {name: leaves(compose_config(name, [])) for name in ENTRY_POINTS}
# Positive settings where a negative number has a meaning (documented at their keys).
NEGATIVE_ALLOWED: set[str] = set()


class Reached(Exception):
    """The job was called: the config passed every check."""


NEEDS_CHECKPOINT = {"eval", "robustness", "load_test", "serve", "demo", "inspect"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A real (tiny, untrained) checkpoint for the entry points that load one."""
    import torch

    from tests.conftest import TINY_MODEL
    from vla.checkpoint import save_checkpoint
    from vla.policy import PolicyConfig, VLAPolicy
    from vla.tokenizer import ActionTokenizer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return str(save_checkpoint(path, VLAPolicy(PolicyConfig.from_dict(TINY_MODEL)), ActionTokenizer(256)))


def run(config_name: str, override: str, checkpoint: str) -> str | None:
    """The one error line, or None when the job was reached."""

    def job(cfg):
        raise Reached

    given = [f"checkpoint={checkpoint}"] if config_name in NEEDS_CHECKPOINT else []
    if override.split("=", 1)[0] == "checkpoint":
        given = []
    try:
        hydra_entry(config_name, job, check_for(config_name), argv=[*given, override])
    except Reached:
        return None
    except SystemExit as stop:
        message = str(stop.code)
        assert message.startswith("error: ") and "\n" not in message and len(message) < 1000, message[:300]
        return message
    pytest.fail(f"{config_name} {override}: neither an error nor the job")


@st.composite
def bad_overrides(draw) -> tuple[str, str, bool | None]:
    """(entry point, override, must it be refused? None: it must be accepted)"""
    name = draw(st.sampled_from(ENTRY_POINTS))
    settings = LEAVES[name]
    kind = draw(st.sampled_from(["unknown", "type", "negative", "share", "default", "any"]))
    if kind == "unknown":
        parent = draw(st.sampled_from(["", *sorted({k.rpartition(".")[0] + "." for k in settings if "." in k})]))
        key = parent + draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True))
        return name, f"{key}={draw(st.integers(-5, 5))}", key not in settings
    key = draw(st.sampled_from(sorted(settings)))
    default = settings[key]
    if kind == "type" and isinstance(default, (int, float)) and not isinstance(default, bool):
        return name, f"{key}={draw(st.sampled_from(['abc', '[1,2]', '{a: 1}', 'nan_x', 'true']))}", True
    if kind == "negative" and isinstance(default, (int, float)) and not isinstance(default, bool) and default > 0:
        return name, f"{key}={draw(st.sampled_from([-1, -0.5, -(10**9)]))}", key not in NEGATIVE_ALLOWED
    if kind == "default" and "${" not in str(default) and default != "???":  # restating a default is fine
        text = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
        return name, f"{key}={text}", None
    if kind == "share" and key.rpartition(".")[2] in FRACTIONS:
        return name, f"{key}={draw(st.sampled_from([1.5, 2, 100]))}", True
    value = draw(
        st.one_of(
            st.integers(-(10**12), 10**12),
            st.floats(allow_nan=True),
            st.text(alphabet=st.characters(codec="ascii", exclude_characters="\\'\"=$,[]{}()\n\r\t"), max_size=12),
        )
    )
    return name, f"{key}={value}", False


@given(case=bad_overrides())
def test_any_override(checkpoint, case):
    record_case("configs")
    name, override, must_refuse = case
    message = run(name, override, checkpoint)
    if must_refuse:
        assert message is not None, f"python {name}: {override} reached the job"
    elif must_refuse is None:  # a default restated on the command line
        assert message is None, f"python {name}: {override} (its default) was refused: {message}"


@pytest.mark.parametrize(
    ("name", "override"),
    [
        ("bc", "grounding.reader=1"),
        ("bc", "init=1"),
        ("bc", "resume=1"),
        ("bc", "vision_init=1"),
        ("eval", "checkpoint=1"),
    ],
)
def test_a_number_where_a_path_belongs_is_one_line_naming_it(checkpoint, name, override):
    """Hydra hands a bare number over as an int: a path check must still say which path is missing."""
    message = run(name, override, checkpoint)
    assert message is not None and override.split("=")[0] in message and "=1" in message, message
