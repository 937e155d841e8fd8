"""Sharded DCP resume checkpoints: atomic, exact on resume, reshardable, checksummed, optionally asynchronous.
(Initial weights from elsewhere, ``init.from_checkpoint``, are components/weights_import.py's.)

Layout under ``<run_dir>/checkpoints/``:
``step_<N>/`` is a complete ``torch.distributed.checkpoint`` directory. A save writes into
``.tmp_step_<N>/`` (each file fsynced by DCP); after every rank finished, rank 0 renames it to
``step_<N>`` (an atomic rename, then an fsync of the parent). A process killed mid-save therefore
leaves only a ``.tmp_*`` directory, which load ignores and the next successful start removes.
Pruning (``keep_last``) renames a checkpoint to ``.del_step_<N>`` before deleting it, so a kill
during pruning never leaves a half-deleted ``step_<N>`` behind.

Contents: the model and optimizer through ``get/set_model_state_dict`` and
``get/set_optimizer_state_dict`` (DTensor shards, so DCP reshards across world sizes: 2 -> 1,
1 -> 2 ranks), every other Stateful object (LR schedule, data position, train state) pickled into
one leaf each, and the torch CPU/CUDA RNG states of all ranks. ``step_0`` (the seed checkpoint,
``save(0)``) holds the model only, as in torchtitan; resuming from it restores the weights and
leaves the optimizer fresh. The seed checkpoint is never pruned. A Checkpointer given the model alone writes
the model only at any step: train.py's final weights of a run without checkpoints, ``<run_dir>/weights/step_<N>/``
(:func:`weight_steps` finds them beside the checkpoints). Before the rename, rank 0 writes
``identity.json`` (the run's identity settings, ``config.run_identity``) and ``checksums.json`` (CRC-32 of
every file, each rank hashing its own); a resume verifies both, refusing a checkpoint of another
experiment with the same diff as a changed config. Non-finite weights are never saved, and a resume
refuses them. Every failure, DCP's ``CheckpointException`` (a BaseException) included, becomes one
CheckpointError line; running out of space says so however the error put it (components/files.py).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

from components.config import Checkpoint as CheckpointConfig
from components.config import describe_changes
from components.files import file_crc32, no_space_line, out_of_space
from components.metrics import first_nonfinite
from distributed.env import DistEnv, barrier

STEP_DIR = re.compile(r"step_(\d+)")
PARTIAL_DIR = re.compile(r"\.(tmp|del)_step_\d+")
MODEL_KEY = "model"
MANIFEST = "checksums.json"  # {file name: CRC-32} of a complete checkpoint, written before its rename
IDENTITY = "identity.json"  # {"section.key": value} of the run's identity settings (config.run_identity)
CHECKPOINTS_DIR = "checkpoints"  # <run_dir>/checkpoints/step_<N>/: resume checkpoints
WEIGHTS_DIR = "weights"  # <run_dir>/weights/step_<N>/: a finished run's model-only save when it kept no checkpoints


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read; the message is one line naming it and a fix."""


# ------------------------------------------------------------------------------------------ layout
def complete_steps(folder: Path) -> list[int]:
    """Steps N with a complete ``step_N`` directory in ``folder``, ascending (empty if none)."""
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if p.is_dir() and (m := STEP_DIR.fullmatch(p.name)))


def weight_steps(run_dir: Path) -> dict[int, Path]:
    """Step -> complete directory holding the model's weights at that step, ascending: the resume checkpoints
    ``checkpoints/step_<N>`` and the final model-only save ``weights/step_<N>`` (a checkpoint wins a tie); a
    ``step_<N>`` without DCP's ``.metadata`` (not written by the trainer, whose renames are atomic) is left out."""
    found = {}
    for folder in (WEIGHTS_DIR, CHECKPOINTS_DIR):
        for step in complete_steps(run_dir / folder):
            if (run_dir / folder / f"step_{step}" / ".metadata").is_file():
                found[step] = run_dir / folder / f"step_{step}"
    return dict(sorted(found.items()))


def partial_dirs(folder: Path) -> list[Path]:
    """Leftovers of killed saves (``.tmp_step_N``) or prunes (``.del_step_N``)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if PARTIAL_DIR.fullmatch(p.name))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` and fsync it (before the directory's rename makes it part of a checkpoint)."""
    with path.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def prune_checkpoints(folder: Path, keep_last: int) -> list[int]:
    """Delete all but the newest ``keep_last`` complete checkpoints (0 = keep all; step_0 is kept); returns the steps removed."""
    if not keep_last:
        return []
    doomed_steps = [s for s in complete_steps(folder) if s > 0][:-keep_last]
    for step in doomed_steps:
        doomed = folder / f".del_step_{step}"
        (folder / f"step_{step}").rename(doomed)  # atomic: a kill never leaves a half-deleted step_N
        shutil.rmtree(doomed)
    return doomed_steps


def read_checkpoint_metadata(path: Path) -> Metadata:
    """DCP metadata of ``path`` after checking that every file it references is present and long enough."""
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path} is not a complete DCP checkpoint (no .metadata file); delete it to fall back "
                              "to an older checkpoint")
    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as err:  # unpickling a truncated/garbled file raises many different types
        raise CheckpointError(f"{path}/.metadata is corrupt ({type(err).__name__}); delete {path} to fall back "
                              "to an older checkpoint") from None
    sizes: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        file = path / info.relative_path
        if info.relative_path not in sizes:
            sizes[info.relative_path] = file.stat().st_size if file.is_file() else -1
        if sizes[info.relative_path] < info.offset + info.length:
            state = "missing" if sizes[info.relative_path] < 0 else "truncated"
            raise CheckpointError(f"checkpoint file {file} is {state} (needs {info.offset + info.length} bytes); "
                                  f"delete {path} to fall back to an older checkpoint")
    return metadata


def saved_model_shapes(metadata: Metadata) -> dict[str, tuple[int, ...] | None]:
    """{model tensor name: shape} of a checkpoint (None for a non-tensor entry under 'model.')."""
    prefix = MODEL_KEY + "."
    return {key[len(prefix):]: (tuple(meta.size) if isinstance(meta, TensorStorageMetadata) else None)
            for key, meta in metadata.state_dict_metadata.items() if key.startswith(prefix)}


def check_model_shapes(model_shapes: Mapping[str, tuple[int, ...]], metadata: Metadata, path: Path,
                       allow_missing: bool = False) -> None:
    """Raise CheckpointError naming the first tensor whose shape differs (or, unless allowed, that is absent)."""
    saved = saved_model_shapes(metadata)
    fix = "use the model config the checkpoint was written with"
    for name, shape in model_shapes.items():
        if name not in saved:
            if allow_missing:
                continue
            raise CheckpointError(f"{path} does not match the model: tensor {name} {list(shape)} is missing from "
                                  f"the checkpoint; {fix}")
        if saved[name] != tuple(shape):
            saved_shape = "a non-tensor" if saved[name] is None else list(saved[name])
            raise CheckpointError(f"{path} does not match the model: tensor {name} is {saved_shape} in the checkpoint "
                                  f"but {list(shape)} in the model; {fix}")
    extra = [name for name in saved if name not in model_shapes]
    if extra and not allow_missing:
        raise CheckpointError(f"{path} does not match the model: tensor {extra[0]} of the checkpoint does not exist "
                              f"in the model; {fix}")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "")


# ------------------------------------------------------------------------------- state adapters
class ModelState(Stateful):
    """The model as DCP sees it: canonical names -> (sharded) tensors."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        return get_model_state_dict(self.model)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_model_state_dict(self.model, state)


class OptimizerState(Stateful):
    """Optimizer state keyed by parameter name (flattened), so it reshards with the model."""

    OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        return get_optimizer_state_dict(self.model, self.optimizer, options=self.OPTIONS)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the moments and step counts; the hyperparameters (lr, betas, eps, weight decay) stay the ones
        the optimizer was built with from the current config, so a changed value applies instead of being
        silently replaced by the checkpoint's (train.py prints each change on resume)."""
        hyper = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        set_optimizer_state_dict(self.model, self.optimizer, state, options=self.OPTIONS)
        for group, kept in zip(self.optimizer.param_groups, hyper):
            group.update(kept)


class PickledState(Stateful):
    """A small Stateful (LR schedule, data position, train state) stored as one pickled leaf.

    DCP would otherwise flatten nested lists/dicts into keys, and a list that grows between
    save and load (e.g. a log history) could not be loaded into a fresh, shorter one.
    """

    def __init__(self, obj: Any):
        self.obj = obj

    def state_dict(self) -> dict[str, bytes]:
        return {"pickle": pickle.dumps(self.obj.state_dict())}

    def load_state_dict(self, state: dict[str, bytes]) -> None:
        self.obj.load_state_dict(pickle.loads(state["pickle"]))


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def adapt_states(states: Mapping[str, Any]) -> dict[str, Stateful]:
    """Wrap train.py's objects: the nn.Module and Optimizer through DCP's state_dict API, others pickled."""
    models = [obj for obj in states.values() if isinstance(obj, nn.Module)]
    if len(models) != 1:
        raise ValueError(f"checkpoint states need exactly one nn.Module (the model); got {len(models)}")
    adapted = {}
    for key, obj in states.items():
        if isinstance(obj, nn.Module):
            adapted[key] = ModelState(obj)
        elif isinstance(obj, torch.optim.Optimizer):
            adapted[key] = OptimizerState(models[0], obj)
        elif hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict"):
            adapted[key] = PickledState(obj)
        else:
            raise ValueError(f"checkpoint state {key!r} ({type(obj).__name__}) has no state_dict/load_state_dict")
    return adapted


# ----------------------------------------------------------------------------------- failures
def _rank_failures(err: BaseException) -> dict[int, BaseException]:
    """DCP's CheckpointException.failures: {rank: (exception, stack summary)} -> {rank: exception}."""
    if not isinstance(err, CheckpointException):
        return {}
    return {rank: failure[0] if isinstance(failure, tuple) else failure for rank, failure in err.failures.items()}


def describe_failure(err: BaseException, where: Path | None = None) -> str:
    """One line for an exception raised by DCP (its CheckpointException is a BaseException) or the filesystem
    while writing ``where``: "no space left on <where>: <why>" whenever space ran out there (errno, free space,
    file-size limit: components/files.py), however the error put it."""
    reason = out_of_space(err, where) if where is not None else None
    if reason:
        return no_space_line(where, reason)
    failures = _rank_failures(err)
    if failures:
        rank, inner = next(iter(failures.items()))
        return f"rank {rank}: {type(inner).__name__}: {_one_line(inner)}"
    return f"{type(err).__name__}: {_one_line(err)}"


def newest_complete(folder: Path, below: int | None = None) -> str:
    """Path of the newest complete checkpoint (older than ``below`` if given), or a phrase saying there is none."""
    steps = [s for s in complete_steps(folder) if below is None or s < below]
    return f"{folder / f'step_{steps[-1]}'}" if steps else "none (no complete checkpoint)"


# ---------------------------------------------------------------------------------- checksums
def own_files(folder: Path, rank: int) -> list[Path]:
    """The files rank ``rank`` wrote into a DCP directory: its data files ``__<rank>_<n>.distcp``; rank 0 also
    the ``.metadata`` (DCP's FileSystemWriter naming)."""
    files = sorted(folder.glob(f"__{rank}_*.distcp"))
    return files + ([folder / ".metadata"] if rank == 0 and (folder / ".metadata").is_file() else [])


def read_json_object(file: Path) -> dict[str, Any]:
    """A JSON object (dict) from ``file``; ValueError saying in a few words why it is not one (empty, not JSON...)."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"unreadable: {type(err).__name__}: {_one_line(err)}") from None
    if not text.strip():
        raise ValueError("empty file")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")
    return value


def verify_manifest(path: Path, rank: int, world_size: int) -> str | None:
    """Check this rank's share (every world_size-th file) of ``path``'s manifest; the first bad file or None."""
    try:
        manifest = read_json_object(path / MANIFEST)
    except ValueError as err:
        return f"{MANIFEST} ({err}, not the file names and CRC-32s of the save)"
    if not all(isinstance(crc, str) for crc in manifest.values()):
        return f"{MANIFEST} (its values are not CRC-32 strings)"
    for name in sorted(manifest)[rank::world_size]:
        file = path / name
        if not file.is_file():
            return f"{name} (missing)"
        if file_crc32(file) != manifest[name]:
            return f"{name} (CRC-32 mismatch: its bytes changed after the save)"
    return None


def _pinned_stager(device: torch.device):
    """DCP's stager for async saves: on CUDA it copies into pinned CPU buffers (the copy runs at PCIe speed, not
    pageable-memory speed), which it reuses from one save to the next where it outlives a stage
    (:func:`stager_outlives_a_stage`); staging stays synchronous, so no tensor changes while it is copied. None on a
    torch without DefaultStager."""
    try:
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
    except ImportError:
        return None
    cuda = device.type == "cuda"
    return DefaultStager(StagingOptions(use_pinned_memory=cuda, use_shared_memory=False, use_async_staging=False,
                                        use_non_blocking_copy=cuda))


def stager_outlives_a_stage() -> bool:
    """Whether one DCP DefaultStager can stage twice, tried on a small CPU dict. torch 2.11's
    ``DefaultStager._stage`` (torch/distributed/checkpoint/staging.py) closes its StateDictStager after every stage,
    emptying the copy dispatch table and the cached buffers, so its next stage fails (``KeyError: <class 'type'>``);
    torch 2.13 and 2.14 keep it open. Where it does not outlive a stage, every save gets a stager of its own (there the
    buffers were freed after each stage anyway)."""
    stager = _pinned_stager(torch.device("cpu"))
    if stager is None:
        return False
    try:
        for _ in range(2):
            stager.stage({"tensor": torch.zeros(2), "table": {"n": 1}})
        return True
    except Exception:  # any failure: a stager per save is always safe
        return False
    finally:
        stager.close()


# ---------------------------------------------------------------------------------- checkpointer
@dataclass
class PendingSave:
    """An asynchronous save in flight: ``future`` resolves to this rank's {file: crc32} once its files are written."""

    step: int
    future: Future
    started: float  # time.perf_counter() when the save was issued


class Checkpointer:
    """Saves ``states`` to ``folder/step_<N>`` and resumes from the newest complete one.

    ``states`` maps names to the model (nn.Module), the optimizer and Stateful objects; the
    model's entry must be named ``model`` (the seed checkpoint and exports read that key).
    An asynchronous save (``async_mode = "async"``) blocks only while DCP stages the tensors into
    CPU memory (pinned on CUDA, and reused across saves where the torch's stager allows it); the files
    are written by a background thread, and the save becomes ``step_<N>`` only after every rank's write finished
    (:meth:`finalize_pending`, called by the trainer once the ranks agree, by the next save, or by
    :meth:`close`). At most one save is in flight.
    """

    def __init__(self, folder: Path, cfg: CheckpointConfig, env: DistEnv, states: Mapping[str, Any],
                 identity: Mapping[str, Any] | None = None):
        if MODEL_KEY not in states or not isinstance(states[MODEL_KEY], nn.Module):
            raise ValueError("checkpoint states need the model under the key 'model'")
        self.folder, self.cfg, self.env = Path(folder), cfg, env
        self.identity = dict(identity) if identity is not None else None  # stamped into, and checked against, each save
        self.states = adapt_states(states)
        self.model: nn.Module = states[MODEL_KEY]
        self.use_async = cfg.async_mode == "async"
        # The background save runs collectives while training runs its own: give it a separate (CPU) group.
        self.async_group = dist.new_group(backend="gloo") if self.use_async else None
        # One stager for the run where this torch's outlives a stage, else one per save (``save``).
        self.stager_per_save = self.use_async and not stager_outlives_a_stage()
        self.stager = _pinned_stager(env.device) if self.use_async and not self.stager_per_save else None
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="initlab-ckpt") if self.use_async else None
        self.pending: PendingSave | None = None
        self.last_write_s = 0.0  # seconds from issuing the latest finalized save to its rename

    def due(self, step: int, total_steps: int) -> bool:
        """Whether ``step`` gets a checkpoint: every ``interval`` steps and at the last step, when enabled."""
        return self.cfg.enable and (step % self.cfg.interval == 0 or step == total_steps)

    def _states_to_save(self, step: int) -> dict[str, Any]:
        if step == 0 or self.states.keys() == {MODEL_KEY}:  # a seed checkpoint or final weights: the model only
            return {MODEL_KEY: self.states[MODEL_KEY]}
        ranks_rng = [None] * self.env.world_size
        dist.all_gather_object(ranks_rng, pickle.dumps(rng_state(self.env.device)))
        rng = {f"rank_{rank}": blob for rank, blob in enumerate(ranks_rng)}
        return {**self.states, "rng": rng}  # identical keys on every rank, as DCP wants

    def save(self, step: int, blocking: bool = False) -> float:
        """Write ``step_<step>`` atomically (in the background when async and not ``blocking``); step 0 = model
        only. Returns the seconds the caller was blocked."""
        started = time.perf_counter()
        self.finalize_pending()
        final, tmp = self.folder / f"step_{step}", self.folder / f".tmp_step_{step}"
        culprit = first_nonfinite(self.model)  # one pass over the weights and one all-reduce: small beside a save
        if culprit:
            raise CheckpointError(f"not saving checkpoint step_{step}: a weight is non-finite after the update of step "
                                  f"{step} (first non-finite: {culprit}); the newest complete checkpoint is "
                                  f"{newest_complete(self.folder)} (unchanged); lower optimizer.lr, raise "
                                  "lr_scheduler.warmup_steps or pick another init")
        if final.exists():
            raise CheckpointError(f"checkpoint {final} already exists; refusing to overwrite it (move it away or "
                                  "resume from it with --checkpoint.resume true)")
        if self.env.is_main:
            if tmp.exists():  # left by a save that was killed
                shutil.rmtree(tmp)
            self.folder.mkdir(parents=True, exist_ok=True)
        barrier()
        state = self._states_to_save(step)
        try:
            if self.use_async and not blocking:
                stager = _pinned_stager(self.env.device) if self.stager_per_save else self.stager
                upload = dcp.async_save(state, checkpoint_id=str(tmp), process_group=self.async_group,
                                        async_stager=stager)
                if stager is not None and stager is not self.stager:
                    stager.close()  # staging is synchronous: the staged copy is complete, the stager no longer needed
                self.pending = PendingSave(step, self.writer.submit(self._wait_and_hash, upload, tmp), started)
                return time.perf_counter() - started
            dcp.save(state, checkpoint_id=str(tmp))
            digests = self._hash_own_files(tmp)
        except (Exception, CheckpointException) as err:  # DCP's CheckpointException is a BaseException
            raise self._save_error(step, err) from None
        self._finalize(step, digests, started)
        return time.perf_counter() - started

    def _save_error(self, step: int, err: BaseException) -> CheckpointError:
        tmp = self.folder / f".tmp_step_{step}"
        return CheckpointError(f"cannot write checkpoint {tmp}: {describe_failure(err, tmp)}; "
                               f"the newest complete checkpoint is {newest_complete(self.folder)} (unchanged)")

    def _hash_own_files(self, tmp: Path) -> dict[str, str]:
        if not self.cfg.verify_checksums:
            return {}
        return {file.name: file_crc32(file) for file in own_files(tmp, self.env.rank)}

    def _wait_and_hash(self, upload: Future, tmp: Path) -> dict[str, str]:
        """Background thread: wait for DCP's write of this rank's files, then checksum them."""
        upload.result()
        return self._hash_own_files(tmp)

    def local_save_done(self) -> bool:
        """Whether this rank has no save in flight (non-blocking; the ranks must agree before finalizing)."""
        return self.pending is None or self.pending.future.done()

    def finalize_pending(self) -> int | None:
        """Wait for the save in flight (if any) on every rank and make it ``step_<N>``; returns N or None."""
        if self.pending is None:
            return None
        pending, self.pending = self.pending, None
        try:
            digests = pending.future.result()
        except (Exception, CheckpointException) as err:
            raise self._save_error(pending.step, err) from None
        self._finalize(pending.step, digests, pending.started)
        return pending.step

    def _finalize(self, step: int, digests: dict[str, str], started: float) -> None:
        """After every rank wrote its part: the manifest, then rename .tmp_step_N -> step_N (rank 0), then prune."""
        gathered: list[dict[str, str] | None] = [digests]
        if dist.is_initialized():  # (a seed checkpoint may be written by a process without a group)
            gathered = [None] * self.env.world_size
            dist.all_gather_object(gathered, digests)
        if self.env.is_main:
            tmp, final = self.folder / f".tmp_step_{step}", self.folder / f"step_{step}"
            manifest = {name: crc for part in gathered for name, crc in (part or {}).items()}
            try:
                if self.identity is not None:
                    _write_synced(tmp / IDENTITY, json.dumps(self.identity, indent=0, sort_keys=True))
                    manifest[IDENTITY] = file_crc32(tmp / IDENTITY)
                if self.cfg.verify_checksums:
                    _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=0, sort_keys=True))
            except OSError as err:  # the disk filled up after the tensors
                raise self._save_error(step, err) from None
            _fsync_dir(tmp)
            tmp.rename(final)
            _fsync_dir(self.folder)
            prune_checkpoints(self.folder, self.cfg.keep_last)
        barrier()
        self.last_write_s = time.perf_counter() - started

    def close(self) -> None:
        """Wait for (and finalize) an async save still in flight, then free the staging memory and the thread."""
        try:
            self.finalize_pending()
        finally:
            if self.stager is not None:
                self.stager.close()
                self.stager = None
            if self.writer is not None:
                self.writer.shutdown(wait=True)
                self.writer = None

    def load_for_resume(self) -> int:
        """Load the newest complete checkpoint into the states; returns its step.

        Checks the checkpoint's files (sizes, and their CRC-32 manifest unless ``verify_checksums`` is
        off), its identity stamp and the model's shapes before loading anything, and the loaded weights
        after; on any error raises CheckpointError naming the older checkpoint to fall back to, and changes
        no file. Afterwards rank 0 removes partial saves.
        """
        steps = complete_steps(self.folder)
        if not steps:
            partial = ", ".join(p.name for p in partial_dirs(self.folder))
            note = f" (only partial saves: {partial})" if partial else ""
            raise CheckpointError(f"--checkpoint.resume true but {self.folder} holds no complete checkpoint{note}; "
                                  "start a new run instead (--checkpoint.resume auto, or a new job.run_name)")
        step = steps[-1]
        path = self.folder / f"step_{step}"
        fallback = f"delete {path} to fall back to {newest_complete(self.folder, below=step)}"
        metadata = read_checkpoint_metadata(path)
        self._verify_checksums(path, fallback)
        self._check_identity(path, fallback)
        model_shapes = {name: tuple(t.shape) for name, t in get_model_state_dict(self.model).items()}
        check_model_shapes(model_shapes, metadata, path)
        wanted: dict[str, Any] = {MODEL_KEY: self.states[MODEL_KEY]} if step == 0 else dict(self.states)
        saved_keys = {key.split(".", 1)[0] for key in metadata.state_dict_metadata}
        missing = [key for key in wanted if key not in saved_keys]
        if missing:
            raise CheckpointError(f"{path} has no {missing[0]!r} state (it holds {sorted(saved_keys)}); it was not "
                                  "written by this trainer version: start a new run")
        if "rng" in saved_keys:
            wanted["rng"] = {key.split(".", 1)[1]: b"" for key in metadata.state_dict_metadata
                             if key.startswith("rng.")}
        try:
            dcp.load(wanted, checkpoint_id=str(path))
        except (Exception, CheckpointException) as err:  # a corrupt pickle or tensor file surfaces here
            raise CheckpointError(f"cannot load {path}: {describe_failure(err)}; {fallback}") from None
        culprit = first_nonfinite(self.model)
        if culprit:
            raise CheckpointError(f"checkpoint {path} holds non-finite weights (first: {culprit}); {fallback}")
        own_rng = wanted.get("rng", {}).get(f"rank_{self.env.rank}")
        if own_rng:  # a rank that did not exist at save time (world size grew) keeps its fresh RNG
            set_rng_state(pickle.loads(own_rng), self.env.device)
        self._remove_partials()
        return step

    def _verify_checksums(self, path: Path, fallback: str) -> None:
        """Every rank checks its share of the manifest's files; one all_gather names the first bad file."""
        if not self.cfg.verify_checksums or not (path / MANIFEST).is_file():
            return  # a checkpoint written with verify_checksums = false (or before manifests existed)
        problems: list[str | None] = [None] * self.env.world_size
        dist.all_gather_object(problems, verify_manifest(path, self.env.rank, self.env.world_size))
        bad = next((problem for problem in problems if problem), None)
        if bad:
            raise CheckpointError(f"checkpoint {path} is corrupt: {bad}; {fallback} (or pass "
                                  "--checkpoint.verify_checksums false to load it anyway)")

    def _check_identity(self, path: Path, fallback: str) -> None:
        """Refuse a checkpoint stamped with other identity settings than this run's (one copied from another run),
        with the same one-line diff as a changed config: the checkpoint's value -> this run's."""
        if self.identity is None or not (path / IDENTITY).is_file():
            return  # a checkpoint written before checkpoints were stamped
        try:
            saved = read_json_object(path / IDENTITY)
        except ValueError as err:
            raise CheckpointError(f"checkpoint {path} is corrupt: {IDENTITY} ({err}); {fallback}") from None
        changes = [(key, saved[key], value) for key, value in self.identity.items()
                   if key in saved and saved[key] != value]
        if changes:
            raise CheckpointError(f"checkpoint {path} is of a different experiment ({describe_changes(changes)}): "
                                  f"it was written by another run; {fallback}, or start a new run with another "
                                  "--job.run_name")

    def _remove_partials(self) -> None:
        barrier()
        if self.env.is_main:
            for leftover in partial_dirs(self.folder):
                shutil.rmtree(leftover)
        barrier()
