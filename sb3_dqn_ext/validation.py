"""
Input validation: every rejected hyperparameter, space, env output or file raises :class:`ScratchDQNError` (or
:class:`DivergenceError` for non-finite env outputs) naming it, before anything is half done.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.buffers import ReplayBuffer as SB3ReplayBuffer
from stable_baselines3.common.save_util import load_from_pkl

from sb3_dqn_ext.buffers import PrioritizedReplayBuffer, ReplayBuffer, replay_buffer_nbytes
from sb3_dqn_ext.errors import DivergenceError, ScratchDQNError

try:
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

SUPPORTED_OBSERVATION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _require(ok: bool, name: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ScratchDQNError(f"{name} must be {allowed}, got {value!r}")


def check_hyperparameters(**params: Any) -> None:
    """
    Raise :class:`ScratchDQNError` naming the first hyperparameter outside its meaningful range.

    The ranges accept every value SB3 and rl-zoo3 use (``tau=0``, ``learning_starts=0``, ``gradient_steps=-1``,
    ``exploration_fraction=0``, ``exploration_final_eps=0``).
    """
    p = params
    lr = p["learning_rate"]
    _require(callable(lr) or (_is_number(lr) and math.isfinite(lr) and lr > 0), "learning_rate", "> 0", lr)
    _require(_is_int(p["buffer_size"]) and p["buffer_size"] >= 1, "buffer_size", "an integer >= 1", p["buffer_size"])
    _require(
        _is_int(p["learning_starts"]) and p["learning_starts"] >= 0,
        "learning_starts",
        "an integer >= 0",
        p["learning_starts"],
    )
    _require(_is_int(p["batch_size"]) and p["batch_size"] >= 1, "batch_size", "an integer >= 1", p["batch_size"])
    for name in ("tau", "gamma", "exploration_fraction", "exploration_initial_eps", "exploration_final_eps"):
        _require(_is_number(p[name]) and 0.0 <= p[name] <= 1.0, name, "in [0, 1]", p[name])
    train_freq = p["train_freq"]
    freq, unit = train_freq if isinstance(train_freq, tuple) and len(train_freq) == 2 else (train_freq, "step")
    _require(
        _is_int(freq) and freq >= 1 and unit in ("step", "episode"),
        "train_freq",
        'an integer >= 1 or a tuple (n >= 1, "step" | "episode")',
        train_freq,
    )
    _require(
        _is_int(p["gradient_steps"]) and p["gradient_steps"] >= -1,
        "gradient_steps",
        "an integer >= 0, or -1 (as many as env steps)",
        p["gradient_steps"],
    )
    _require(_is_int(p["n_steps"]) and p["n_steps"] >= 1, "n_steps", "an integer >= 1", p["n_steps"])
    _require(
        _is_int(p["target_update_interval"]) and p["target_update_interval"] >= 1,
        "target_update_interval",
        "an integer >= 1",
        p["target_update_interval"],
    )
    _require(
        _is_number(p["max_grad_norm"]) and p["max_grad_norm"] > 0,
        "max_grad_norm",
        "> 0",
        p["max_grad_norm"],
    )
    _require(
        _is_int(p["stats_window_size"]) and p["stats_window_size"] >= 1,
        "stats_window_size",
        "an integer >= 1",
        p["stats_window_size"],
    )
    _require(isinstance(p["double_q"], bool), "double_q", "a bool", p["double_q"])
    schedule = p["exploration_schedule"]
    _require(
        callable(schedule) or schedule in ("linear", "exponential"),
        "exploration_schedule",
        '"linear", "exponential" or a callable',
        schedule,
    )
    if "mlp_backend" in p:
        _require(p["mlp_backend"] in ("torch", "numpy"), "mlp_backend", '"torch" or "numpy"', p["mlp_backend"])
    buffer_class = p["replay_buffer_class"]
    _require(
        buffer_class is None or (isinstance(buffer_class, type) and issubclass(buffer_class, BaseBuffer)),
        "replay_buffer_class",
        "None or a replay buffer class",
        buffer_class,
    )
    for name in ("replay_buffer_kwargs", "policy_kwargs"):
        _require(p[name] is None or isinstance(p[name], dict), name, "None or a dict", p[name])
    # checked when the caller passes them (numpy and torch reject these with errors that do not name them)
    if "seed" in p:
        _require(
            p["seed"] is None or (_is_int(p["seed"]) and 0 <= p["seed"] < 2**32),
            "seed",
            "None or an integer in [0, 2**32)",
            p["seed"],
        )
    if "device" in p:
        _check_device(p["device"])


def _check_device(device: Any) -> None:
    if not isinstance(device, (str, th.device)):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    if device == "auto":
        return
    try:
        th.device(device)
    except RuntimeError as error:
        raise ScratchDQNError(
            f'device must be "auto", "cpu", "cuda" or another torch device, got {device!r}'
        ) from error


def check_spaces(observation_space: spaces.Space | None, action_space: spaces.Space | None) -> None:
    """Raise :class:`ScratchDQNError` for spaces ScratchDQN cannot learn with (``None``: not known yet)."""
    if action_space is not None and not isinstance(action_space, spaces.Discrete):
        raise ScratchDQNError(
            f"ScratchDQN needs a Discrete action space, got {action_space} (action_space); "
            "for continuous actions use SAC, TD3 or DDPG"
        )
    if observation_space is None:
        return
    inner = observation_space.spaces.values() if isinstance(observation_space, spaces.Dict) else [observation_space]
    for space in inner:
        if not isinstance(space, SUPPORTED_OBSERVATION_SPACES):
            raise ScratchDQNError(
                f"unsupported observation space {space} (observation_space): use Box, Discrete, MultiDiscrete, "
                "MultiBinary or a Dict of those"
            )


# --------------------------------------------------------------------------------------------- env outputs
def _has_non_finite(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_non_finite(item) for item in value.values())
    if not isinstance(value, np.ndarray):
        value = np.asarray(value)
    # integer observations (images, discrete spaces) cannot be non-finite: no pass over them
    return value.dtype.kind in "fc" and not np.isfinite(value).all()


def check_finite_transition(
    obs: np.ndarray | dict[str, np.ndarray],
    new_obs: np.ndarray | dict[str, np.ndarray],
    rewards: np.ndarray,
    infos: list[dict[str, Any]],
    timestep: int,
) -> None:
    """
    Raise :class:`DivergenceError` when a transition the env returned holds a NaN or infinite reward or observation.

    A non-finite value in the replay buffer turns every loss computed from it into NaN; stopping at the env step that
    produced it names the culprit. It costs a few microseconds per step; integer observations are not scanned.

    :param obs: the observations the actions were taken in (``_last_obs``), or ``None`` when already checked
    :param new_obs: the observations the env returned (the first of the next episode where one ended)
    :param rewards: the rewards
    :param infos: the infos; their ``terminal_observation`` is checked too
    :param timestep: ``num_timesteps``, for the message
    """
    # one pass for the common case: a finite sum means every term is finite (NaN or ±inf make the sum non-finite; a
    # sum of finite values that overflows goes to the exact checks below, which pass it)
    all_finite = (
        type(rewards) is np.ndarray
        and type(new_obs) is np.ndarray
        and rewards.dtype.kind == "f"
        and new_obs.dtype.kind == "f"
        and math.isfinite(float(rewards.sum()) + float(new_obs.sum()))
    )
    if not all_finite:
        if _has_non_finite(rewards):
            raise DivergenceError(f"the env returned a non-finite reward {rewards} at timestep {timestep}")
        if _has_non_finite(new_obs):
            raise DivergenceError(f"the env returned a non-finite next observation at timestep {timestep}: {new_obs}")
    if obs is not None and _has_non_finite(obs):
        raise DivergenceError(f"the env returned a non-finite observation at timestep {timestep}: {obs}")
    for env_index, info in enumerate(infos):
        terminal = info.get("terminal_observation")
        if terminal is not None and _has_non_finite(terminal):
            raise DivergenceError(
                f"the env returned a non-finite terminal observation at timestep {timestep} (env {env_index}): "
                f"{terminal}"
            )


# --------------------------------------------------------------------------------------------- memory
def machine_memory_bytes() -> int | None:
    """Physical memory plus swap of this machine, or ``None`` where it cannot be read."""
    if psutil is not None:
        return int(psutil.virtual_memory().total + psutil.swap_memory().total)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_replay_buffer_setup(
    buffer_size: int,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    n_envs: int = 1,
    optimize_memory_usage: bool = False,
    prioritized: bool = False,
) -> int:
    """
    Before a replay buffer is allocated, raise :class:`ScratchDQNError` naming ``buffer_size`` when it cannot work:
    when it would need more memory than the machine has in all (RAM plus swap; the buffers themselves warn when it
    exceeds the memory available now), or when ``optimize_memory_usage`` leaves it no complete transition (it needs
    two rows per env: the next observation is read from the next row).

    :return: the estimated size in bytes (:func:`replay_buffer_nbytes`)
    """
    if optimize_memory_usage and buffer_size // n_envs < 2:
        raise ScratchDQNError(
            f"buffer_size={buffer_size} is too small for optimize_memory_usage=True with {n_envs} env(s): "
            f"it needs buffer_size >= {2 * n_envs} (two rows per env)"
        )
    needed = replay_buffer_nbytes(
        buffer_size, observation_space, action_space, n_envs, optimize_memory_usage, prioritized
    )
    total = machine_memory_bytes()
    if total is not None and needed > total:
        raise ScratchDQNError(
            f"buffer_size={buffer_size} needs about {needed / 1e9:.1f} GB for the replay buffer, more than this "
            f"machine's {total / 1e9:.1f} GB of memory: lower buffer_size"
            + ("" if optimize_memory_usage else " or set optimize_memory_usage=True")
        )
    return needed


# --------------------------------------------------------------------------------------------- model files
def _read_serialized(data: dict[str, Any], key: str, custom_objects: dict[str, Any] | None, name: str) -> Any:
    if custom_objects is not None and key in custom_objects:
        return custom_objects[key]
    if key not in data:
        raise ScratchDQNError(f"{name} is not a model file: its 'data' entry has no {key!r}")
    item = data[key]
    if not (isinstance(item, dict) and ":serialized:" in item):
        return item
    try:
        return cloudpickle.loads(base64.b64decode(item[":serialized:"].encode()))
    except Exception as error:  # noqa: BLE001 - whatever unpickling raises, the file cannot be loaded
        raise ScratchDQNError(
            f"{name}: cannot unpickle {key!r} ({type(error).__name__}: {error}); pass it in custom_objects"
        ) from error


def _open_model_file(path: str | os.PathLike | io.BufferedIOBase) -> tuple[Any, str, bool]:
    """The file, a name for messages, and whether we opened it (as SB3's ``open_path``: ``.zip`` may be left off)."""
    if isinstance(path, (str, os.PathLike)):
        candidate = Path(path)
        if not candidate.exists() and candidate.suffix != ".zip":
            candidate = Path(f"{candidate}.zip")
        if not candidate.exists():
            raise FileNotFoundError(f"model file {path} not found")
        return open(candidate, "rb"), str(candidate), True  # noqa: SIM115 - closed by the caller
    return path, type(path).__name__, False


def check_model_file(
    path: str | os.PathLike | io.BufferedIOBase,
    env: Any = None,
    algorithm: type[BaseAlgorithm] | None = None,
    custom_objects: dict[str, Any] | None = None,
) -> None:
    """
    Check that ``path`` is a complete model file for ``algorithm`` and ``env``; raise :class:`ScratchDQNError` naming
    the problem otherwise (:class:`FileNotFoundError` when there is no file).

    Checked, in this order: the file is a zip archive whose entries pass their CRC checks (a truncated or corrupt
    download fails here); it has SB3's ``data`` and ``policy.pth`` entries; ``data`` is JSON; the saved policy class
    belongs to ``algorithm`` (a PPO or SB3-DQN file is rejected); the ``.pth`` weights load with
    ``weights_only=True``; the saved observation and action spaces are those of ``env``.

    It unpickles ``policy_class``, ``observation_space`` and ``action_space`` from ``data``, as ``load`` does: load
    only files you trust.

    :param path: the file, as given to ``load`` (a path, with or without ``.zip``, or an open binary file)
    :param env: the env the model will run on (``None``: not checked)
    :param algorithm: the class whose ``load`` is called (``None``: the policy class is not checked)
    :param custom_objects: as in ``load``: objects used instead of the pickled ones
    """
    file, name, opened = _open_model_file(path)
    start = None if opened else file.tell()
    try:
        if not zipfile.is_zipfile(file):
            raise ScratchDQNError(f"{name} is not a model file: not a zip archive, or a truncated one")
        if start is not None:
            file.seek(start)
        try:
            with zipfile.ZipFile(file) as archive:
                bad_entry = archive.testzip()
                if bad_entry is not None:
                    raise ScratchDQNError(f"{name} is corrupt: its entry {bad_entry!r} fails its CRC check")
                names = archive.namelist()
                for required in ("data", "policy.pth"):
                    if required not in names:
                        # a truncated file can still end in a zip directory: the one of an archive stored inside it
                        raise ScratchDQNError(f"{name} is not a model file, or a truncated one: no {required!r} entry")
                try:
                    data = json.loads(archive.read("data").decode())
                except (UnicodeDecodeError, ValueError) as error:
                    raise ScratchDQNError(f"{name} is corrupt: its 'data' entry is not JSON ({error})") from error
                for entry in names:
                    if entry.endswith(".pth"):
                        try:
                            with archive.open(entry) as weights:
                                th.load(weights, map_location="cpu", weights_only=True)
                        except Exception as error:  # noqa: BLE001 - torch raises several types for a bad file
                            raise ScratchDQNError(f"{name} is corrupt: its entry {entry!r} does not load") from error
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
            raise ScratchDQNError(f"{name} is corrupt or truncated ({type(error).__name__}: {error})") from error
    finally:
        if opened:
            file.close()
        else:
            file.seek(start)

    if not isinstance(data, dict):
        raise ScratchDQNError(f"{name} is not a model file: its 'data' entry is not a JSON object")
    if algorithm is not None:
        policy_class = _read_serialized(data, "policy_class", custom_objects, name)
        # the most derived class every alias derives from (DQNPolicy for ScratchDQN)
        aliases = list(algorithm.policy_aliases.values())
        policy_base = next(base for base in aliases[0].__mro__ if all(issubclass(alias, base) for alias in aliases))
        if not (isinstance(policy_class, type) and issubclass(policy_class, policy_base)):
            raise ScratchDQNError(
                f"{name} was not saved by {algorithm.__name__}: its policy_class is "
                f"{getattr(policy_class, '__qualname__', policy_class)}"
            )
    if env is not None:
        saved_spaces = [
            _read_serialized(data, key, custom_objects, name) for key in ("observation_space", "action_space")
        ]
        check_env_spaces(env, *saved_spaces, source=f"the model in {name}")


def check_env_spaces(env: Any, observation_space: spaces.Space, action_space: spaces.Space, source: str) -> None:
    """
    Raise :class:`ScratchDQNError` naming ``observation_space`` or ``action_space`` when ``env`` (wrapped as SB3 wraps
    it: a VecEnv, images transposed to channel-first) does not have the given spaces.

    :param env: a gymnasium env or a VecEnv
    :param observation_space: the observation space the model was built for
    :param action_space: the action space the model was built for
    :param source: what holds those spaces, for the message ("the model in model.zip")
    """
    vec_env = BaseAlgorithm._wrap_env(env, verbose=0, monitor_wrapper=False)
    for key, expected in (("observation_space", observation_space), ("action_space", action_space)):
        actual = getattr(vec_env, key)
        if expected != actual:
            raise ScratchDQNError(f"{source} has {key} {expected}, but the env has {actual}")


# --------------------------------------------------------------------------------------------- replay buffers
def load_replay_buffer_file(path: str | os.PathLike | io.BufferedIOBase, verbose: int = 0) -> BaseBuffer:
    """
    Unpickle a replay buffer (SB3's ``load_from_pkl``); raise :class:`ScratchDQNError` when the file is truncated,
    corrupt, or holds something else. Unpickling runs code from the file: load only files you trust.

    :param path: the pickle, with or without ``.pkl``
    :param verbose: SB3's verbosity
    :return: the buffer
    """
    try:
        buffer = load_from_pkl(path, verbose)
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001 - unpickling a damaged file raises many types
        raise ScratchDQNError(
            f"{path} is not a readable replay buffer (truncated or corrupt pickle: {type(error).__name__}: {error})"
        ) from error
    if not isinstance(buffer, (ReplayBuffer, SB3ReplayBuffer)):
        raise ScratchDQNError(f"{path} does not hold a replay buffer (got {type(buffer).__name__})")
    return buffer


def check_replay_buffer(model: BaseAlgorithm, buffer: BaseBuffer, n_envs: int | None = None) -> None:
    """
    Raise :class:`ScratchDQNError` naming what differs when ``buffer`` cannot serve ``model``: its
    ``observation_space``, ``action_space``, number of envs (``n_envs``: one column per env), prioritized or not
    (``replay_buffer_class``), or the ``n_steps`` and ``gamma`` of its n-step returns.

    :param model: the model that will sample from the buffer
    :param buffer: the buffer
    :param n_envs: the number of envs the model will step (default: ``model.n_envs``)
    """
    n_envs = model.n_envs if n_envs is None else n_envs
    for key in ("observation_space", "action_space"):
        if getattr(buffer, key) != getattr(model, key):
            raise ScratchDQNError(
                f"the replay buffer holds {key} {getattr(buffer, key)}, the model has {getattr(model, key)}"
            )
    if buffer.n_envs != n_envs:
        raise ScratchDQNError(f"the replay buffer was filled by n_envs={buffer.n_envs} envs, the env has {n_envs}")
    buffer_class = model.replay_buffer_class or ReplayBuffer
    wants_priorities = issubclass(buffer_class, PrioritizedReplayBuffer)
    if isinstance(buffer, PrioritizedReplayBuffer) != wants_priorities:
        raise ScratchDQNError(
            f"the replay buffer is a {type(buffer).__name__}, "
            f"the model's replay_buffer_class is {buffer_class.__name__}"
        )
    if isinstance(buffer, ReplayBuffer) and issubclass(buffer_class, ReplayBuffer):
        kwargs = model.replay_buffer_kwargs or {}
        n_steps = kwargs.get("n_steps", getattr(model, "n_steps", 1))
        if buffer.n_steps != n_steps:
            raise ScratchDQNError(
                f"the replay buffer computes {buffer.n_steps}-step returns, the model has n_steps={n_steps}"
            )
        gamma = kwargs.get("gamma", model.gamma)
        if n_steps > 1 and buffer.gamma != gamma:
            raise ScratchDQNError(f"the replay buffer discounts n-step returns with gamma={buffer.gamma}, not {gamma}")
