"""
Checkpoints that resume a run where it stopped: the model, its replay buffer and the run's state, complete or absent.

SB3's ``save`` + ``save_replay_buffer`` keep the weights, the optimizer, the counters and the buffer, but not what
makes a resumed run *the same run*: ``load`` re-seeds the random generators and resets the env, and the generators'
states are not saved. A checkpoint here also holds the random-generator states (python, numpy, torch, the action
space's) and the env itself when it can be pickled, so that a run killed at step ``S`` and resumed from its checkpoint
at ``S`` continues exactly as the uninterrupted run would have (bitwise, on CPU).

Layout of ``save_path``::

    save_path/
        ckpt-000000001000/      one folder per checkpoint, named after num_timesteps
            model.zip           SB3's model file (weights, optimizer, counters, schedules, last observation)
            replay_buffer.pkl   the replay buffer (priorities and β included for PrioritizedReplayBuffer)
            state.pkl           random-generator states and the pickled env
            manifest.json       size and SHA-256 of each file, and a summary of the run's position
        ckpt-000000002000/
        latest                  the name of the newest complete checkpoint

A checkpoint is written into a hidden temporary folder, flushed to disk, and renamed into place with ``os.replace``
(atomic); only then is ``latest`` replaced, atomically too. A process killed at any moment, during a save included,
leaves ``latest`` naming a complete checkpoint. One training process writes to a ``save_path``.

Resume in one call, in a new process::

    model = resume_from_checkpoint("runs/dqn")   # the newest checkpoint, its env included
    learn_remaining(model, callback=ResumableCheckpointCallback(1_000, "runs/dqn"))
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import pickle
import random
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch as th
from gymnasium import spaces
from gymnasium.utils import EzPickle
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback
from stable_baselines3.her.her_replay_buffer import HerReplayBuffer

from sb3_dqn_ext.errors import ScratchDQNError
from sb3_dqn_ext.validation import check_env_spaces, check_replay_buffer, load_replay_buffer_file

CHECKPOINT_FORMAT = 1
MODEL_FILE = "model.zip"
BUFFER_FILE = "replay_buffer.pkl"
STATE_FILE = "state.pkl"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "latest"
# ckpt-<num_timesteps>, and ckpt-<num_timesteps>.<n> for a later save at the same step (a rewound run)
_CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)(?:\.(\d+))?$")


# --------------------------------------------------------------------------------------------- random generators
def _subspaces(space: spaces.Space) -> Iterator[spaces.Space]:
    yield space
    if isinstance(space, spaces.Dict):
        for child in space.spaces.values():
            yield from _subspaces(child)
    elif isinstance(space, spaces.Tuple):
        for child in space.spaces:
            yield from _subspaces(child)


def _model_spaces(model: BaseAlgorithm) -> list[spaces.Space]:
    """The model's observation and action spaces and their subspaces: each has its own generator."""
    return [space for root in (model.observation_space, model.action_space) for space in _subspaces(root)]


def capture_rng_states(model: BaseAlgorithm) -> dict[str, Any]:
    """
    The states of every random generator a run draws from: python's ``random``, numpy's global generator, torch's
    (CPU, and CUDA when initialised), and the model's observation and action spaces (ε-greedy and warm-up actions
    sample the action space). The env's own generators travel with the pickled env.
    """
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": th.get_rng_state(),
        # the private attribute, because reading `np_random` seeds a space that has no generator yet
        "spaces": [copy.deepcopy(space._np_random) for space in _model_spaces(model)],
    }
    if th.cuda.is_available() and th.cuda.is_initialized():
        states["torch_cuda"] = th.cuda.get_rng_state_all()
    return states


def restore_rng_states(model: BaseAlgorithm, states: dict[str, Any]) -> None:
    """Put back the generator states taken by :func:`capture_rng_states` (the global ones and the model's spaces)."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    th.set_rng_state(states["torch"])
    if "torch_cuda" in states and th.cuda.is_available() and th.cuda.device_count() == len(states["torch_cuda"]):
        th.cuda.set_rng_state_all(states["torch_cuda"])
    for space, generator in zip(_model_spaces(model), states["spaces"], strict=True):
        space._np_random = copy.deepcopy(generator)


# --------------------------------------------------------------------------------------------- files
def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (a rename is only durable once its folder is flushed)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # folders cannot be opened on some platforms
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_folder(path: Path) -> None:
    """Rename, then delete: a deletion killed halfway leaves a hidden ``.trash-*`` folder, never a half checkpoint."""
    trash = path.parent / f".trash-{path.name}-{uuid.uuid4().hex[:8]}"
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _checkpoint_folders(save_path: Path) -> list[tuple[tuple[int, int], Path]]:
    """The checkpoint folders, oldest first: by ``num_timesteps``, then by save at that step."""
    found = []
    for entry in save_path.iterdir() if save_path.is_dir() else ():
        match = _CHECKPOINT_NAME.match(entry.name)
        if match and entry.is_dir():
            found.append(((int(match.group(1)), int(match.group(2) or 0)), entry))
    return sorted(found)


def checkpoint_timesteps(folder: str | os.PathLike) -> int:
    """The ``num_timesteps`` a checkpoint folder was saved at, read from its name."""
    match = _CHECKPOINT_NAME.match(Path(folder).name)
    if match is None:
        raise ScratchDQNError(f"{folder} is not a checkpoint folder (ckpt-<num_timesteps>)")
    return int(match.group(1))


def latest_checkpoint(save_path: str | os.PathLike) -> Path | None:
    """
    The newest complete checkpoint in ``save_path``: the one ``latest`` names, else (``latest`` lost) the checkpoint
    folder with the most timesteps; ``None`` when there is none.

    :param save_path: the folder given to :class:`ResumableCheckpointCallback` or :func:`save_checkpoint`
    """
    save_path = Path(save_path)
    pointer = save_path / LATEST_FILE
    if pointer.is_file():
        name = pointer.read_text().strip()
        if _CHECKPOINT_NAME.match(name) and (save_path / name / MANIFEST_FILE).is_file():
            return save_path / name
    folders = [path for _, path in _checkpoint_folders(save_path) if (path / MANIFEST_FILE).is_file()]
    return folders[-1] if folders else None


def _pickle_env(model: BaseAlgorithm) -> tuple[bytes | None, str | None]:
    return pickle_vec_env(model.get_env())


def pickle_vec_env(env: Any) -> tuple[bytes | None, str | None]:
    """
    ``(bytes, None)``: the env pickled with its episodes in progress; ``(None, why)`` where it cannot be. An env
    that pickles only its constructor arguments (gymnasium's ``EzPickle``: the Box2D envs, ale-py's Atari envs)
    would come back new and not reset, so it counts as one that cannot be pickled.

    :param env: a VecEnv
    """
    try:
        state_lost = [type(e).__name__ for e in env.get_attr("unwrapped") if isinstance(e, EzPickle)]
    except Exception:  # noqa: BLE001 - an env without get_attr: pickled as it is
        state_lost = []
    if state_lost:
        return None, (
            f"{state_lost[0]} pickles only its constructor arguments (gymnasium's EzPickle), not the state of its "
            "episodes"
        )
    try:
        return cloudpickle.dumps(env), None
    except Exception as error:  # noqa: BLE001 - any env that does not pickle (processes, sockets, renderers)
        return None, f"{type(env).__name__} cannot be pickled ({type(error).__name__}: {error})"


def _check_keep_last(keep_last: Any) -> None:
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
        raise ScratchDQNError(f"keep_last must be an integer >= 1 or None, got {keep_last!r}")


def save_checkpoint(model: BaseAlgorithm, save_path: str | os.PathLike, keep_last: int | None = 2) -> Path:
    """
    Write a checkpoint of ``model`` into ``save_path`` and point ``latest`` to it; see the module docstring.

    Call it between two ``learn`` calls, or let :class:`ResumableCheckpointCallback` call it during ``learn``; in
    the middle of an env step (from a callback's ``_on_step``) the model and its buffer are one transition apart.

    :param model: the model; its env is pickled with it when it can be (else a warning, and resuming needs ``env=``)
    :param save_path: the checkpoint folder (created if needed)
    :param keep_last: how many checkpoints to keep, the newest ones (``None``: all)
    :return: the checkpoint's folder
    """
    _check_keep_last(keep_last)
    if model.replay_buffer is None:
        raise ScratchDQNError("save_checkpoint needs a model with a replay buffer (replay_buffer is None)")
    save_path = Path(save_path)
    save_path.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{model.num_timesteps:012d}"
    saves_at_step = 0
    while (save_path / name).exists():  # never replace a folder `latest` may name: take the next free name
        saves_at_step += 1
        name = f"ckpt-{model.num_timesteps:012d}.{saves_at_step}"
    final = save_path / name

    env_bytes, env_error = _pickle_env(model)
    if env_bytes is None:
        warnings.warn(f"the checkpoint does not hold the env: {env_error}; pass env= to resume_from_checkpoint")
    state = {
        "format": CHECKPOINT_FORMAT,
        "algorithm": f"{type(model).__module__}:{type(model).__qualname__}",
        "rng": capture_rng_states(model),
        "env": env_bytes,
        "env_error": env_error,
    }

    tmp = save_path / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_files(model, state, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, final)
    _fsync(save_path)
    pointer_tmp = save_path / f".{LATEST_FILE}-{uuid.uuid4().hex[:8]}"
    pointer_tmp.write_text(name + "\n")
    _fsync(pointer_tmp)
    os.replace(pointer_tmp, save_path / LATEST_FILE)
    _fsync(save_path)

    if keep_last is not None:
        for _, old in _checkpoint_folders(save_path)[:-keep_last]:
            if old != final:
                _remove_folder(old)
    _remove_leftovers(save_path)
    return final


def _write_files(model: BaseAlgorithm, state: dict[str, Any], folder: Path) -> None:
    model.save(folder / MODEL_FILE)
    model.save_replay_buffer(folder / BUFFER_FILE)
    with open(folder / STATE_FILE, "wb") as file:
        cloudpickle.dump(state, file)
    files = {}
    for file_name in (MODEL_FILE, BUFFER_FILE, STATE_FILE):
        _fsync(folder / file_name)
        files[file_name] = {"size": (folder / file_name).stat().st_size, "sha256": _sha256(folder / file_name)}
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "algorithm": state["algorithm"],
        "num_timesteps": int(model.num_timesteps),
        "total_timesteps": int(model._total_timesteps),
        "exploration_rate": float(getattr(model, "exploration_rate", 0.0)),
        "n_updates": int(model._n_updates),
        "env_saved": state["env"] is not None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    _fsync(folder / MANIFEST_FILE)
    _fsync(folder)


def _remove_leftovers(save_path: Path) -> None:
    """Delete the temporary folders and files of saves that were killed halfway."""
    for entry in save_path.iterdir():
        if entry.name.startswith((".tmp-", ".trash-")) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(f".{LATEST_FILE}-") and entry.is_file():
            entry.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- resume
def _checkpoint_folder(path: Path) -> Path:
    if (path / MANIFEST_FILE).is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise ScratchDQNError(f"{path} holds no checkpoint (no {LATEST_FILE} pointer and no ckpt-* folder)")
    return found


def _verify(folder: Path) -> dict[str, Any]:
    """Read the manifest and check each file's size and SHA-256 before unpickling anything."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        files = {name: (int(manifest["files"][name]["size"]), str(manifest["files"][name]["sha256"]))
                 for name in (MODEL_FILE, BUFFER_FILE, STATE_FILE)}  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ScratchDQNError(f"{folder / MANIFEST_FILE} is not a readable checkpoint manifest ({error})") from error
    if manifest.get("format") != CHECKPOINT_FORMAT:
        raise ScratchDQNError(
            f"{folder} has checkpoint format {manifest.get('format')!r}, expected {CHECKPOINT_FORMAT}"
        )
    for file_name, (size, sha256) in files.items():
        path = folder / file_name
        if not path.is_file() or path.stat().st_size != size or _sha256(path) != sha256:
            raise ScratchDQNError(f"checkpoint file {path} is missing or corrupt (size or SHA-256 differs)")
    return manifest


def _unpickle(path: Path, data: bytes, remedy: str, what: str = "it") -> Any:
    """Unpickle a verified checkpoint file: what fails now is a missing class or an incompatible library version."""
    try:
        return pickle.loads(data)
    except Exception as error:  # noqa: BLE001 - unpickling raises whatever the pickled objects raise
        raise ScratchDQNError(
            f"cannot unpickle {what} from {path} ({type(error).__name__}: {error}); {remedy}"
        ) from error


def _import_class(qualified_name: str) -> type[BaseAlgorithm]:
    module_name, _, class_name = qualified_name.partition(":")
    try:
        algorithm = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ScratchDQNError(
            f"cannot import the checkpoint's algorithm {qualified_name}; pass algorithm_class="
        ) from error
    return algorithm


def resume_from_checkpoint(
    path: str | os.PathLike,
    env: GymEnv | None = None,
    device: th.device | str = "auto",
    force_reset: bool | None = None,
    algorithm_class: type[BaseAlgorithm] | None = None,
    custom_objects: dict[str, Any] | None = None,
) -> BaseAlgorithm:
    """
    Rebuild a model from a checkpoint, ready for :func:`learn_remaining` to finish its run.

    It does what ``Algorithm.load`` + ``load_replay_buffer`` + ``learn(reset_num_timesteps=False)`` would do, plus what
    they leave out: the random generators are put back in the states they had at the save (``load`` re-seeds them),
    and the saved env is restored with its episodes in progress (``load`` drops the last observation).

    Loading unpickles the checkpoint's files: only resume checkpoints you trust (see docs/reliability.md).

    :param path: a checkpoint folder, or the ``save_path`` of the callback (its newest checkpoint is taken)
    :param env: the env to continue on; ``None`` (default): the env saved in the checkpoint. Another env's state is
        not the saved one, so by default its episodes restart (``force_reset``) and the run is no longer identical.
    :param device: device of the model and replay buffer
    :param force_reset: reset the env before continuing; default: ``False`` for the saved env, ``True`` for ``env``.
        On a reset the last stored transition of each env is marked as a time-limit truncation, so that n-step
        returns do not run across the cut.
    :param algorithm_class: the model's class, when the one recorded in the checkpoint cannot be imported (a class
        defined in ``__main__``)
    :param custom_objects: as in ``load``: objects to use instead of the ones pickled in the model file
    :return: the model, with ``num_timesteps``, ``_total_timesteps`` and every schedule where the checkpoint left them
    """
    folder = _checkpoint_folder(Path(path))
    _verify(folder)
    state = _unpickle(folder / STATE_FILE, (folder / STATE_FILE).read_bytes(), "was it written with other versions?")
    algorithm = algorithm_class or _import_class(state["algorithm"])
    if env is None:
        if state["env"] is None:
            raise ScratchDQNError(f"the checkpoint {folder} does not hold its env ({state['env_error']}): pass env=")
        env = _unpickle(folder / STATE_FILE, state["env"], "pass env=", what="the saved env")
        force_reset = bool(force_reset)
    elif force_reset is None:
        force_reset = True

    buffer = load_replay_buffer_file(folder / BUFFER_FILE)
    # Passing the buffer to `load` keeps `_setup_model` from allocating a second, empty one
    model = algorithm.load(
        folder / MODEL_FILE, env=None, device=device, custom_objects=custom_objects, replay_buffer=buffer
    )
    vec_env = model._wrap_env(env, model.verbose)
    check_env_spaces(vec_env, model.observation_space, model.action_space, source=f"the checkpoint {folder}")
    check_replay_buffer(model, buffer, n_envs=vec_env.num_envs)
    buffer.device = model.device
    model.set_env(vec_env, force_reset=force_reset)
    if isinstance(buffer, HerReplayBuffer):
        buffer.set_env(model.get_env())
        if force_reset:
            buffer.truncate_last_trajectory()
    elif force_reset and (buffer.full or buffer.pos > 0):
        last = (buffer.pos - 1) % buffer.buffer_size
        buffer.dones[last] = 1.0
        buffer.timeouts[last] = 1.0
    restore_rng_states(model, state["rng"])
    return model


def learn_remaining(model: BaseAlgorithm, callback: MaybeCallback = None, **learn_kwargs: Any) -> BaseAlgorithm:
    """
    Finish a resumed run: ``model.learn(total - num_timesteps, reset_num_timesteps=False)``.

    With ``reset_num_timesteps=False`` SB3 adds the steps to ``num_timesteps``, so ``_total_timesteps`` stays the
    original total and the schedules (ε, learning rate, PER's β) continue where they were; ``learn(total)`` would
    instead stretch them over a new total.

    :param model: a model from :func:`resume_from_checkpoint`
    :param callback: callbacks for the rest of the run (pass a new :class:`ResumableCheckpointCallback` to go on
        checkpointing)
    :param learn_kwargs: other ``learn`` arguments (``log_interval``, ``tb_log_name``, ``progress_bar``)
    :return: the model, trained to its original total
    """
    remaining = model._total_timesteps - model.num_timesteps
    if remaining <= 0:
        return model
    return model.learn(remaining, callback=callback, reset_num_timesteps=False, **learn_kwargs)


class ResumableCheckpointCallback(BaseCallback):
    """
    Save a resumable checkpoint (model, replay buffer, random generators, env) every ``save_freq`` timesteps, and
    at the end of ``learn``.

    Checkpoints are taken between rollouts, the only points of the training loop where the model, the buffer and the
    env agree (in ``_on_step`` the env has stepped but the transition is not stored yet). So a checkpoint falls on
    the first rollout start at or after each multiple of ``save_freq`` (with ``train_freq=4``: on a multiple of 4),
    and on the end of training unless a callback stopped it in the middle of a rollout.

    :param save_freq: save every ``save_freq`` timesteps (``num_timesteps``, counted over all envs)
    :param save_path: the checkpoint folder
    :param keep_last: how many checkpoints to keep, the newest ones (``None``: all)
    :param verbose: 1: print the path of each checkpoint
    """

    def __init__(self, save_freq: int, save_path: str | os.PathLike, keep_last: int | None = 2, verbose: int = 0):
        super().__init__(verbose)
        if isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1:
            raise ScratchDQNError(f"save_freq must be an integer >= 1, got {save_freq!r}")
        _check_keep_last(keep_last)
        self.save_freq = save_freq
        self.save_path = Path(save_path)
        self.keep_last = keep_last
        self.last_saved = 0
        self._between_rollouts = True

    def _save(self) -> None:
        path = save_checkpoint(self.model, self.save_path, keep_last=self.keep_last)
        self.last_saved = self.model.num_timesteps
        if self.verbose >= 1:
            print(f"Saving checkpoint to {path}")

    def _on_training_start(self) -> None:
        self.last_saved = self.model.num_timesteps
        newest = latest_checkpoint(self.save_path)
        if newest is not None and checkpoint_timesteps(newest) > self.model.num_timesteps:
            # checkpoints are ordered by num_timesteps: a run behind them would prune its own and resume theirs
            raise ScratchDQNError(
                f"save_path {self.save_path} holds a checkpoint of another run at {checkpoint_timesteps(newest)} "
                f"timesteps, past this run's {self.model.num_timesteps}: resume it, or give this run another save_path"
            )
        if self.save_path.is_dir():
            _remove_leftovers(self.save_path)

    def _on_rollout_start(self) -> None:
        self._between_rollouts = False
        if self.model.num_timesteps // self.save_freq > self.last_saved // self.save_freq:
            self._save()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        # not called when a callback stops the rollout: the last step is then half done
        self._between_rollouts = True

    def _on_training_end(self) -> None:
        if self._between_rollouts and self.model.num_timesteps > self.last_saved:
            self._save()
