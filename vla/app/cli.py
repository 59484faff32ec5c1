"""The front door of every Hydra entry script (train/bc.py, train/ppo.py, eval/evaluate.py, ...).

``hydra_entry("bc", job, check)`` composes ``configs/bc.yaml`` with the command line's
overrides, runs ``check(cfg)`` (every cross-group check, before any slow work), and only
then ``job(cfg)``. Mistakes a user can fix end in one ``error:`` line naming the bad value
and what is allowed: a config-group typo (``data=nosuchsuite``), an unknown or mistyped key,
a bad path or value, a checkpoint that does not fit. ``--cfg job`` prints the composed
config and stops; ``--help`` lists the groups and their options.

Hydra composes the config here, but runs nothing: the run directory is the job's, made
once the config is valid (no ``.hydra/`` folder beside an empty run), and its log holds
what the run printed (``vla.app.console.run_log``).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from vla.checkpoint import CheckpointError
from vla.policy import PolicyConfig

DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # no space, file over its size limit, over quota
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"  # the repository's configs/


@contextmanager
def user_errors() -> Iterator[None]:
    """One clear line instead of a traceback for mistakes a user can fix."""
    try:
        yield
    except MissingMandatoryValue as error:
        key = getattr(error, "full_key", None) or "a setting"
        raise SystemExit(f"error: {key} is required: add {key}=<value> to the command line") from None
    except (CheckpointError, FileNotFoundError, ValueError, OmegaConfBaseException) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise SystemExit(f"error: {lines[0] if lines else type(error).__name__}") from None
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        where = f" {error.filename}" if error.filename else ""
        raise SystemExit(
            f"error: could not write{where}: {error.strerror}; free some space and run the same command again "
            "(what was written before is intact, and runs resume)"
        ) from None


def config_options(config_dir: Path = CONFIG_DIR) -> dict[str, list[str]]:
    """Each config group and its options, as the folders of ``configs/`` hold them."""
    return {
        group.name: sorted(f.stem for f in group.glob("*.yaml"))
        for group in sorted(config_dir.iterdir())
        if group.is_dir()
    }


def compose_config(config_name: str, overrides: list[str], config_dir: Path = CONFIG_DIR) -> DictConfig:
    """The composed config, or a ValueError whose one line names the bad override and what is allowed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException

    GlobalHydra.instance().clear()
    register_schemas()
    try:
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            return compose(config_name, overrides=overrides)
    except MissingConfigException as error:
        raise ValueError(_missing_option(str(error), overrides, config_dir)) from None
    except (HydraException, OmegaConfBaseException) as error:
        raise ValueError(_explain(error, overrides, config_name, config_dir)) from None


def register_schemas() -> None:
    """``configs/model/*.yaml`` build on ``PolicyConfig`` (vla/policy.py): its dataclass is the one
    source of every model setting and its default; Hydra then checks each override's key and type."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="model", name="policy_schema", node=PolicyConfig)


def _missing_option(message: str, overrides: list[str], config_dir: Path) -> str:
    # Hydra: "In 'bc': Could not find 'data/nosuchsuite'\n\nAvailable options in 'data': ..."
    wanted = message.split("Could not find '", 1)[-1].split("'", 1)[0]
    group, _, option = wanted.rpartition("/")
    options = config_options(config_dir).get(group)
    if not group or options is None:
        return _first_line(message, overrides)
    given = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == group), f"{group}={option}")
    return f"{given}: no such {group} config; valid values are: {', '.join(o for o in options if o != 'policy_schema')}"


def _explain(error: Exception, overrides: list[str], config_name: str, config_dir: Path) -> str:
    """One line from Hydra's error and its cause: the override, and what is wrong with it."""
    message = f"{error}\n{error.__cause__ or ''}"
    given = next((o for o in overrides if o in message), None)
    if given is not None and "not in struct" in message:  # an unknown key: list the valid ones
        key = given.lstrip("+~").split("=", 1)[0]
        parent, _, _ = key.rpartition(".")
        composed = compose_config(config_name, [o for o in overrides if o != given], config_dir)
        node = OmegaConf.select(composed, parent) if parent else composed
        if isinstance(node, DictConfig):
            return f"{given}: no such setting; valid keys{f' of {parent}' if parent else ''} are: {', '.join(node)}"
    if given is not None and "could not be converted" in message:
        reason = next(line for line in message.splitlines() if "could not be converted" in line)
        return f"{given}: {reason.strip()}"
    return _first_line(message, overrides)


def _first_line(message: str, overrides: list[str]) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    detail = "; ".join(line for line in lines[:3] if not line.startswith(("See https", "full_key", "object_type")))
    return f"{detail} (overrides: {' '.join(overrides) or 'none'})"


def policy_settings() -> str:
    """The model settings, for --help."""
    return ", ".join(f.name for f in fields(PolicyConfig))


def hydra_entry(
    config_name: str,
    job: Callable[[DictConfig], Any],
    check: Callable[[DictConfig], Any] | None = None,
    argv: list[str] | None = None,
) -> Any:
    """Parse the command line (Hydra overrides, ``--cfg job``, ``--help``), compose and check
    the config, and run ``job`` on it; every user error ends in one ``error:`` line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(usage(config_name))
        return None
    show = False
    if "--cfg" in argv:  # Hydra's spelling: --cfg job
        index = argv.index("--cfg")
        del argv[index : index + 2]
        show = True
    with user_errors():
        cfg = compose_config(config_name, argv)
        check_types(cfg, compose_config(config_name, [o for o in argv if _selects_config(o)]), argv)
        if show:
            print(OmegaConf.to_yaml(cfg))
            return None
        if check is not None:
            check(cfg)
        return job(cfg)


# Settings that are null (off) by default, and an example of what they take when set.
OFF_BY_DEFAULT = {
    "resume": "<run dir>",
    "init": "<checkpoint>",
    "dataset": "<dir>",
    "stop_at_step": 1,
    "critic_lr": 1e-4,
}
NULL_ALLOWED = {"ppo.target_kl"}  # null switches it off (configs/ppo.yaml)
TEXT_OR_LIST = {"task"}  # one name or a list of them (configs/ppo.yaml: multi-task PPO)
# Shares and probabilities: at most 1.
FRACTIONS = {"beta", "beta_decay", "rewrites", "val_fraction", "negatives", "gamma", "gae_lambda", "dropout"}


def _selects_config(override: str) -> bool:
    """A group choice (``model=large``, ``+recipe=five_gpu``), not a value."""
    key = override.lstrip("+~").split("=", 1)[0]
    return "." not in key and key in config_options() or key == "recipe"


def _leaves(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in node.items_ex(resolve=False):
        if isinstance(value, DictConfig):
            yield from _leaves(value, f"{prefix}{key}.")
        elif not isinstance(value, ListConfig):
            yield f"{prefix}{key}", value


def check_types(cfg: DictConfig, defaults: DictConfig, overrides: list[str]) -> None:
    """Each value overridden on the command line keeps its default's type (the yaml files are
    the schema), and no number is negative: every number in configs/ is a count, size, rate,
    probability, weight or seed. Checked before any work, so a typo never starts a long job."""
    default = dict(_leaves(defaults))
    given = {o.lstrip("+~").split("=", 1)[0]: o for o in overrides if "=" in o}
    for key, override in given.items():
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        was = default.get(key)
        if value is None and (was is None or key in NULL_ALLOWED):
            continue  # switched off, as it may be
        if was is None:  # null by default: the type its yaml comment states
            was = OFF_BY_DEFAULT.get(key.rpartition(".")[2])
        if was is None or "${" in str(was):
            continue  # new, free-form, following another setting, or switched off
        if isinstance(was, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(was, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        elif isinstance(was, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
            kind = "a number"
        elif isinstance(was, str) and key in TEXT_OR_LIST:
            ok = isinstance(value, str) or (isinstance(value, ListConfig) and all(isinstance(v, str) for v in value))
            kind = "a name or a list of names"
        elif isinstance(was, str):
            ok, kind = isinstance(value, str), f"text (quote it: {key}='{override.split('=', 1)[1]}')"
        else:
            continue
        if not ok:
            raise ValueError(f"{override}: {key} takes {kind}, like {was!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"{override}: {key} must not be negative (default {was!r})")
        if key.rpartition(".")[2] in FRACTIONS and isinstance(value, (int, float)) and value > 1:
            raise ValueError(f"{override}: {key} is a share in [0, 1] (default {was!r})")


def usage(config_name: str, config_dir: Path = CONFIG_DIR) -> str:
    """--help: the command as the config's first line writes it, its config groups, the model settings."""
    from omegaconf import OmegaConf

    path = config_dir / f"{config_name}.yaml"
    first = path.read_text().splitlines()[0].lstrip("# ").strip()
    defaults = OmegaConf.to_container(OmegaConf.load(path)).get("defaults") or []
    used = {key for entry in defaults if isinstance(entry, dict) for key in entry}
    groups = "\n".join(
        f"  {group}={'|'.join(o for o in options if o != 'policy_schema')}"
        for group, options in config_options(config_dir).items()
        if group in used or (group == "recipe" and "model" in used)
    )
    text = f"usage: {first}\n\nComposes configs/{config_name}.yaml (every key is documented there"
    if groups:
        text += f" and in its groups).\nConfig groups and their options:\n{groups}\n"
        text += "  (recipe is added with a '+': +recipe=five_gpu)\n"
    else:
        text += ").\n"
    text += "\n--cfg job   print the composed config and stop"
    if "model" in used:
        text += f"\nModel settings (model.<name>=..., documented in vla/policy.py PolicyConfig): {policy_settings()}"
    return text
