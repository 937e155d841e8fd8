"""initlab's token batches through torchtitan's dataloader protocol (``initlab.dataset``): step k's tokens are
bitwise those initlab's train.py reads at step k for the same seed, sequence length and global batch."""

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torchtitan.components.dataloader import BaseDataLoader
from torchtitan.models import llama3

from components.config import ConfigError, Data, Tokenizer
from components.data import TokenBatches, TokenDataset, ensure_dataset, read_manifest
from components.tokenizer import build_tokenizer
from distributed.env import barrier
from integrations.torchtitan.config import InitlabSection, global_batch_size, initlab_seed


class InitlabDataLoader(BaseDataLoader):
    """torchtitan's dataloader protocol over initlab's (seed, step) -> global batch sampler (components/data.py).

    torchtitan's trainer reads gradient_accumulation_steps = global / (local x dp) micro-batches per optimizer
    step. Micro-batch m of step k (k from 1, as both trainers count) on dp rank r is rows
    [r * global / dp + m * local, + local) of initlab's global batch k: the rows train.py's
    ``Trainer.train_step`` gives that rank and micro-batch, so step k's tokens are bitwise initlab's.
    Yields ``({"input": tokens[:, :-1]}, tokens[:, 1:])``, each [local, seq_len], as torchtitan's trainer expects.
    """

    def __init__(self, batches: TokenBatches, dp_rank: int, dp_world_size: int, local_batch_size: int):
        per_rank = batches.global_batch_size // dp_world_size
        self.batches, self.dp_rank, self.dp_world_size = batches, dp_rank, dp_world_size
        self.local_batch_size, self.accum_steps = local_batch_size, per_rank // local_batch_size
        self.first_row = dp_rank * per_rank
        self.micro_batches_read = 0  # the state: torchtitan checkpoints after whole steps

    def micro_batch(self, index: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Micro-batch ``index`` (0-based, over the whole run) of this rank."""
        step, micro = divmod(index, self.accum_steps)
        start = self.first_row + micro * self.local_batch_size
        tokens = self.batches.get(step + 1, slice(start, start + self.local_batch_size))  # [local, seq_len + 1]
        return {"input": tokens[:, :-1].contiguous()}, tokens[:, 1:].contiguous()

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        while True:  # endless: initlab's sampler starts a new epoch permutation when one runs out
            index = self.micro_batches_read
            self.micro_batches_read += 1  # before the yield: a checkpoint after this step counts it
            yield self.micro_batch(index)

    def state_dict(self) -> dict:
        # Keyed by dp rank, as torchtitan's own dataloaders do (its checkpointer saves one state per rank).
        return {f"dp_rank_{self.dp_rank}": {"micro_batches_read": self.micro_batches_read,
                                            **self.batches.state_dict()}, "world_size": self.dp_world_size}

    def load_state_dict(self, state: dict) -> None:
        if not state:  # torchtitan passes {} when the checkpoint holds no dataloader state
            return
        if state.get("world_size") != self.dp_world_size:
            raise ConfigError(f"the checkpoint's data loader ran on {state.get('world_size')} dp ranks, this run on "
                              f"{self.dp_world_size}; resume with the same data-parallel degree")
        mine = state[f"dp_rank_{self.dp_rank}"]
        self.batches.load_state_dict(mine)  # one-line ValueError if seed, seq_len, batch or data changed
        self.micro_batches_read = int(mine["micro_batches_read"])


def initlab_token_dir(section: InitlabSection) -> Path:
    """initlab's token-shard directory for ``initlab.dataset`` ("embedded" is built on first use, once per node)."""
    data = Data(dataset=section.dataset, cache_dir=section.data_cache_dir)
    if section.dataset == "embedded":
        tokenizer = build_tokenizer(Tokenizer())  # initlab's default tokenizer, as train.py's default [tokenizer]
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            ensure_dataset(data, tokenizer)
        barrier()
        return ensure_dataset(data, tokenizer)
    path = Path(section.dataset).expanduser()
    if not path.is_dir():
        raise ConfigError(f"initlab.dataset = {section.dataset!r} is not a directory; use \"embedded\" or a "
                          "directory written by initlab's scripts/prepare_data.py --output DIR")
    return path


def check_initlab_data(job_config, token_dir: Path, dp_world_size: int) -> int:
    """One-line ConfigError for a job that cannot read initlab's batches; returns the global batch (sequences)."""
    t, args = job_config.training, llama3.llama3_args.get(job_config.model.flavor)
    global_batch = global_batch_size(t, dp_world_size)
    if global_batch % (t.local_batch_size * dp_world_size):
        raise ConfigError(f"training.global_batch_size = {global_batch} is not a multiple of training.local_batch_size "
                          f"{t.local_batch_size} x {dp_world_size} dp ranks; pick a multiple")
    n_vocab = read_manifest(token_dir)["tokenizer"]["n_vocab"]
    if args is not None and n_vocab > args.vocab_size:
        raise ConfigError(f"initlab.dataset {token_dir} has {n_vocab} token ids but flavor {job_config.model.flavor!r} "
                          f"embeds {args.vocab_size}; use a flavor with vocab_size >= {n_vocab}")
    if args is not None and args.attn_type != "sdpa":
        raise ConfigError(f"initlab.dataset needs attn_type 'sdpa' (flavor {job_config.model.flavor!r} has "
                          f"{args.attn_type!r}, whose document masks need torchtitan's tokenizer); use an sdpa flavor")
    if job_config.validation.enable:
        raise ConfigError("initlab.dataset feeds training only (torchtitan's validator reads its own data with "
                          "its tokenizer); set validation.enable = false")
    return global_batch


def build_dataloader(dp_world_size: int, dp_rank: int, tokenizer, job_config, **kwargs) -> BaseDataLoader:
    """torchtitan's text dataloader, or with ``initlab.dataset`` set, initlab's batches (InitlabDataLoader)."""
    section = job_config.initlab
    if not section.dataset:
        return llama3.get_train_spec().build_dataloader_fn(dp_world_size=dp_world_size, dp_rank=dp_rank,
                                                           tokenizer=tokenizer, job_config=job_config, **kwargs)
    token_dir = initlab_token_dir(section)
    global_batch = check_initlab_data(job_config, token_dir, dp_world_size)
    t = job_config.training
    batches = TokenBatches(TokenDataset(token_dir, "train"), t.seq_len, global_batch, initlab_seed(job_config))
    return InitlabDataLoader(batches, dp_rank, dp_world_size, t.local_batch_size)
