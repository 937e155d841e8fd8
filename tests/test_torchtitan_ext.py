"""integrations/torchtitan/: torchtitan 0.2.2's llama3, built through the registered TrainSpec and
initialized by the extension, against initlab's own init (tensor for tensor) and torchtitan's own
init_weights (call for call, for depth_aware); sharded draws on 2 FSDP2 ranks; one-line config errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from components.build import build_local_model
from components.config import Config, ConfigError, Init, Job, Model, Training
from components.torchtitan_names import from_torchtitan, to_torchtitan
from components.weight_stats import WeightStats
from integrations.torchtitan import config as tt_config
from integrations.torchtitan import flavors as tt_flavors
from integrations.torchtitan import metrics as tt_metrics
from integrations.torchtitan import spec as tt_spec
from models import build_model, make_model_args
from roles import layer_of, role_of
from tests.launch import torchrun
from tests.test_init_schemes import _record_calls, check_tensor

# torchtitan's "debugmodel" flavor: dim 256, 6 layers, 16 heads (= KV heads), vocab 2048, multiple_of 256.
DEBUGMODEL = dict(n_layers=6, dim=256, n_heads=16, n_kv_heads=16, multiple_of=256, vocab_size=2048)
SEQ = 64


def parse_job_config(extra: list[str], flavor: str = "debugmodel"):
    """torchtitan's JobConfig with the [initlab] table, as its trainer parses the command line."""
    from torchtitan.config import ConfigManager

    return ConfigManager().parse_args(["--job.custom_config_module", "integrations.torchtitan.config", "--model.name",
                                       tt_config.TRAIN_SPEC_NAME, "--model.flavor", flavor, "--training.seq_len",
                                       str(SEQ), *extra])


def build_on_meta(job_config):
    """The model as torchtitan's trainer builds it: the registered spec's flavor args, updated, on meta."""
    from torchtitan.protocols.train_spec import get_train_spec

    spec = get_train_spec(job_config.model.name)
    args = spec.model_args[job_config.model.flavor]
    args.update_from_config(job_config)
    with torch.device("meta"):
        return spec.model_cls(args)


def torchtitan_model(extra: list[str], flavor: str = "debugmodel") -> torch.nn.Module:
    model = build_on_meta(parse_job_config(extra, flavor))
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights()
    return model


def torchtitan_weights(extra: list[str]) -> dict[str, torch.Tensor]:
    return dict(torchtitan_model(extra).named_parameters())


def initlab_model(init: Init, seed: int) -> torch.nn.Module:
    cfg = Config(job=Job(seed=seed), model=Model(flavor="debug", **DEBUGMODEL), init=init,
                 training=Training(seq_len=SEQ))
    return build_local_model(cfg, DEBUGMODEL["vocab_size"])[0]


def initlab_weights(init: Init, seed: int) -> dict[str, torch.Tensor]:
    return dict(initlab_model(init, seed).named_parameters())


@pytest.mark.slow
@pytest.mark.parametrize(("flags", "init", "seed"), [
    (["--initlab.scheme", "mitchell", "--initlab.seed", "3"], Init(scheme="mitchell"), 3),
    (["--initlab.scheme", "depth_aware", "--initlab.scale_all_projections"],
     Init(scheme="depth_aware", scale_all_projections=True), 0),
    (["--initlab.scheme", "scaled_output", "--initlab.base_std", "0.01", "--debug.seed", "7"],
     Init(scheme="scaled_output", base_std=0.01), 7),
])
def test_extension_weights_are_initlabs_tensor_for_tensor(flags, init, seed):
    theirs = torchtitan_weights(flags)
    ours = initlab_weights(init, seed)
    assert sorted(theirs) == sorted(to_torchtitan(name) for name in ours)
    for name, param in ours.items():
        assert torch.equal(theirs[to_torchtitan(name)], param), name


@pytest.mark.slow
def test_depth_aware_through_the_extension_is_torchtitans_init_in_distribution(monkeypatch):
    import torchtitan.models.llama3.model.model as tt_model

    job_config = parse_job_config(["--initlab.scheme", "depth_aware"])
    plain = tt_model.Transformer(build_on_meta(job_config).model_args)  # torchtitan's own class, same args
    calls: dict[int, tuple] = {}
    _record_calls(monkeypatch, tt_model, "trunc_normal_", "trunc_normal", calls)
    _record_calls(monkeypatch, torch.nn.init, "normal_", "normal", calls)
    with torch.no_grad():
        plain.init_weights()
    model = build_on_meta(job_config)
    model.to_empty(device="cpu")
    args = model.model_args
    initializer = tt_spec.init_torchtitan_llama(model, args.initlab, args.initlab_seed, tt_config.initlab_args(args))
    for titan_name, param in plain.named_parameters():
        role, layer, spec = initializer.applied[from_torchtitan(titan_name)]
        assert (role, layer) == (role_of(from_torchtitan(titan_name)), layer_of(from_torchtitan(titan_name)))
        if spec.dist == "constant":  # norms: torchtitan resets them to ones
            assert id(param) not in calls and torch.all(param == spec.value), titan_name
        else:
            assert calls[id(param)] == (spec.dist, spec.std, spec.a, spec.b), titan_name
        check_tensor(titan_name, dict(model.named_parameters())[titan_name].detach(), spec)


@pytest.mark.slow
def test_the_spec_has_initlabs_llama_1b_shape():
    titan = build_on_meta(parse_job_config([], flavor="initlab_llama_1b"))
    with torch.device("meta"):
        ours = build_model(make_model_args("llama", "llama_1b", 128256, SEQ))
    shapes = {to_torchtitan(name): tuple(p.shape) for name, p in ours.named_parameters()}
    assert {name: tuple(p.shape) for name, p in titan.named_parameters()} == shapes
    assert sum(p.numel() for p in titan.parameters()) == 1_498_482_688


@pytest.mark.slow
def test_weight_std_of_torchtitans_model_has_initlabs_tags_and_values():
    titan = tt_metrics.torchtitan_weight_stats([torchtitan_model(["--initlab.scheme", "mitchell"])]).compute()
    ours = WeightStats(initlab_model(Init(scheme="mitchell"), 0)).compute()
    assert titan == ours  # same tensors, so the same numbers, under initlab's trainer's tags
    assert len([tag for tag in ours if tag.startswith("weight_std/attn.q/layer_")]) == DEBUGMODEL["n_layers"]


@pytest.mark.multiprocess
def test_two_fsdp_ranks_draw_the_single_process_weights(tmp_path):
    flags = ["--initlab.scheme", "mitchell", "--initlab.seed", "5"]
    out = tmp_path / "sharded.pt"
    torchrun(["tests/torchtitan_ext_worker.py", str(out), *flags], nproc=2, timeout=300)
    result = torch.load(out)
    assert result["world_size"] == 2
    single = torchtitan_weights(flags)
    assert sorted(result["state"]) == sorted(single)
    for name, tensor in result["state"].items():
        assert torch.equal(tensor, single[name]), name
    single_stats = tt_metrics.torchtitan_weight_stats([torchtitan_model(flags)]).compute()
    assert result["weight_std"] == pytest.approx(single_stats, rel=1e-6, abs=0)  # 2 shards merged; fp32 var_mean
    assert result["refusal"] == ("initlab init of layers.0.attention.wo.weight: placement Shard(dim=1) (tensor "
                                 "parallelism) is not supported, only FSDP/HSDP's Shard(0) and Replicate; set "
                                 "parallelism.tensor_parallel_degree = 1")


@pytest.mark.parametrize(("flags", "message"), [
    (["--initlab.scheme", "mitchel"], "initlab.scheme = 'mitchel' is unknown; did you mean 'mitchell'?"),
    (["--initlab.base_std", "-0.1"], "initlab.base_std must be >= 0; got -0.1"),
    (["--initlab.from_checkpoint", "x.safetensors"],
     "initlab.from_checkpoint = 'x.safetensors' is not supported inside torchtitan; load weights with torchtitan's "
     "checkpoint.initial_load_path instead"),
])
def test_bad_initlab_options_are_one_line_errors(flags, message):
    with pytest.raises(ConfigError) as caught:
        build_on_meta(parse_job_config(flags))
    assert str(caught.value) == message  # one line, naming the key and the fix


def test_the_spec_without_the_initlab_table_is_a_one_line_error():
    from torchtitan.config import ConfigManager

    job_config = ConfigManager().parse_args(["--model.name", tt_config.TRAIN_SPEC_NAME, "--model.flavor", "debugmodel"])
    with pytest.raises(ConfigError, match="^model.name = 'initlab_llama3' needs the \\[initlab\\] table; add "
                                          "--job.custom_config_module integrations.torchtitan.config$"):
        build_on_meta(job_config)


# ---------------------------------------------------------------- initlab's batches in torchtitan's trainer
MAX_VOCAB = 4096  # train_configs/debug.toml's tokenizer.max_vocab: cl100k's first 4096 tokens, plus EOS
DEBUG_VOCAB = MAX_VOCAB + 1  # the initlab_debug flavor's embedding rows


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory) -> str:
    """initlab's embedded corpus, first 300 kB of the stdlib, tokenized with debug.toml's 4096-token cl100k."""
    from components.config import Data, Tokenizer
    from components.data import ensure_dataset
    from components.tokenizer import build_tokenizer

    data = Data(dataset="embedded", cache_dir=str(tmp_path_factory.mktemp("cache")), val_fraction=0.0)
    return str(ensure_dataset(data, build_tokenizer(Tokenizer(max_vocab=MAX_VOCAB)), max_bytes=300_000))


def data_job_config(token_dir: str, local: int, global_: int, extra: tuple = ()):
    return parse_job_config(["--initlab.dataset", token_dir, "--initlab.seed", "3", "--training.local_batch_size",
                             str(local), "--training.global_batch_size", str(global_), *extra], flavor=tt_flavors.DEBUG_FLAVOR)


def torchtitan_micro_batches(job_config, dp_rank: int, dp_world_size: int, count: int) -> list:
    """The first ``count`` (input_dict, labels) the registered spec's dataloader gives torchtitan's trainer."""
    from torchtitan.protocols.train_spec import get_train_spec

    spec = get_train_spec(tt_config.TRAIN_SPEC_NAME)
    assert spec.build_tokenizer_fn(job_config) is None  # the batches are token ids already
    loader = spec.build_dataloader_fn(dp_world_size=dp_world_size, dp_rank=dp_rank, tokenizer=None,
                                      job_config=job_config)
    batches = iter(loader)
    return [next(batches) for _ in range(count)]


def initlab_train_step_tokens(token_dir: str, dp_rank: int, dp_size: int, local: int, global_: int, steps: int):
    """The token tensors [local, seq_len + 1] that train.py's Trainer.train_step reads, in order, for steps
    1..steps as dp rank ``dp_rank`` of ``dp_size`` (a world of one whose env claims that rank: the rows are
    chosen by train_step's own code; the forward/backward runs on the rows it read)."""
    import train
    from components.config import Compile, Data, Metrics, Tokenizer
    from distributed.env import DistEnv, distributed_session

    cfg = Config(job=Job(seed=3, run_name="unused"), model=Model(flavor="debug"), data=Data(dataset=token_dir),
                 tokenizer=Tokenizer(max_vocab=MAX_VOCAB), metrics=Metrics(val_freq=0), compile=Compile(enable=False),
                 training=Training(seq_len=SEQ, global_batch_size=global_, local_batch_size=local, device="cpu"))
    with distributed_session("cpu") as env:
        trainer = train.Trainer(cfg, env)
        trainer.env = DistEnv(rank=dp_rank, world_size=dp_size, local_rank=0, device=env.device, mesh=env.mesh)
        trainer.local_batch, trainer.micro_batch, trainer.accum_steps = train.batch_split(global_, dp_size, local)
        read, get = [], trainer.train_batches.get
        trainer.train_batches.get = lambda step, rows: read.append(get(step, rows)) or read[-1]
        for step in range(1, steps + 1):
            trainer.train_step(step, logging=False)
    return read


@pytest.mark.slow
@pytest.mark.parametrize(("dp_size", "local", "global_"), [(1, 2, 8), (2, 2, 8)])
def test_initlab_dataset_gives_torchtitan_initlabs_train_step_batches(token_dir, dp_size, local, global_):
    accum = global_ // (local * dp_size)  # torchtitan's gradient_accumulation_steps
    job_config = data_job_config(token_dir, local, global_)
    for dp_rank in range(dp_size):
        theirs = torchtitan_micro_batches(job_config, dp_rank, dp_size, 2 * accum)
        ours = initlab_train_step_tokens(token_dir, dp_rank, dp_size, local, global_, steps=2)
        assert len(ours) == len(theirs) == 2 * accum
        for (inputs, labels), tokens in zip(theirs, ours):
            assert list(inputs) == ["input"] and inputs["input"].shape == (local, SEQ)
            assert torch.equal(inputs["input"], tokens[:, :-1]) and torch.equal(labels, tokens[:, 1:])
    assert not torch.equal(theirs[0][1], theirs[accum][1])  # step 2 reads other windows than step 1


def test_initlab_dataloader_resumes_after_the_checkpointed_micro_batches(token_dir):
    from torchtitan.protocols.train_spec import get_train_spec

    job_config = data_job_config(token_dir, 2, 4)
    build = get_train_spec(tt_config.TRAIN_SPEC_NAME).build_dataloader_fn
    first = build(dp_world_size=1, dp_rank=0, tokenizer=None, job_config=job_config)
    batches = iter(first)
    straight = [next(batches) for _ in range(5)]
    state = first.state_dict()
    assert state["dp_rank_0"]["micro_batches_read"] == 5 and state["world_size"] == 1
    resumed = build(dp_world_size=1, dp_rank=0, tokenizer=None, job_config=job_config)
    resumed.load_state_dict(state)
    inputs, labels = next(iter(resumed))
    assert torch.equal(inputs["input"], first.micro_batch(5)[0]["input"]) and torch.equal(labels, next(batches)[1])
    other_seed = build(dp_world_size=1, dp_rank=0, tokenizer=None,
                       job_config=data_job_config(token_dir, 2, 4, ("--initlab.seed", "4")))
    with pytest.raises(ValueError, match="^data loader state of the checkpoint does not match this run \\(seed 3 -> 4\\)"):
        other_seed.load_state_dict(state)
    assert not torch.equal(straight[0][1], next(iter(other_seed))[1])


@pytest.mark.parametrize(("flags", "flavor", "message"), [
    ([], "debugmodel", "initlab.dataset {dir} has 4097 token ids but flavor 'debugmodel' embeds 2048; use a flavor "
                       "with vocab_size >= 4097"),
    (["--validation.enable"], tt_flavors.DEBUG_FLAVOR, "initlab.dataset feeds training only (torchtitan's validator reads "
                                                "its own data with its tokenizer); set validation.enable = false"),
    (["--training.global_batch_size", "6"], tt_flavors.DEBUG_FLAVOR, "training.global_batch_size = 6 is not a multiple of "
                                                              "training.local_batch_size 4 x 1 dp ranks; pick a multiple"),
])
def test_initlab_dataset_misfits_are_one_line_errors(token_dir, flags, flavor, message):
    from torchtitan.protocols.train_spec import get_train_spec

    job_config = parse_job_config(["--initlab.dataset", token_dir, "--training.local_batch_size", "4", *flags], flavor)
    with pytest.raises(ConfigError) as caught:
        get_train_spec(tt_config.TRAIN_SPEC_NAME).build_dataloader_fn(dp_world_size=1, dp_rank=0, tokenizer=None,
                                                                job_config=job_config)
    assert str(caught.value) == message.format(dir=token_dir)


def test_torchtitan_and_initlab_models_compute_the_same_loss(token_dir):
    """The premise of the GPU comparison: same weights (the extension) and same RoPE (torchtitan's default Llama 3
    scaling, factor 8, set in initlab) give the same logits, so equal batches give equal step-1 losses."""
    from components.loss import next_token_loss

    titan = torchtitan_model(["--initlab.scheme", "depth_aware", "--initlab.seed", "3"], tt_flavors.DEBUG_FLAVOR)
    cfg = Config(job=Job(seed=3), model=Model(flavor="debug", vocab_size=DEBUG_VOCAB, rope_scaling_factor=8.0),
                 init=Init(scheme="depth_aware"), training=Training(seq_len=SEQ))
    ours = build_local_model(cfg, DEBUG_VOCAB)[0]
    inputs, labels = torchtitan_micro_batches(data_job_config(token_dir, 2, 2), 0, 1, 1)[0]
    with torch.no_grad():
        theirs_logits, our_logits = titan(inputs["input"]), ours(inputs["input"])
    assert (theirs_logits - our_logits).abs().max() < 1e-4  # fp32, different kernels for attention and RoPE
    assert next_token_loss(theirs_logits, labels).item() == pytest.approx(
        next_token_loss(our_logits, labels).item(), rel=1e-6)


def test_the_gpu_comparison_configs_match_hyperparameter_for_hyperparameter():
    """benchmarks/torchtitan/compare_{torchtitan,initlab}.toml: same shape, RoPE, init, seed, data, batch, AdamW, clip,
    and the same lr at every one of the 50 optimizer steps (torchtitan's scheduler against initlab's)."""
    from torchtitan.components.lr_scheduler import build_lr_schedulers
    from torchtitan.config import ConfigManager
    from torchtitan.models.llama3.model.model import precompute_freqs_cis

    from components.build import model_args_from_config
    from components.config import load_config
    from components.lr_schedule import build_lr_scheduler
    from components.optim import param_groups
    from models.common import precompute_rope

    titan = ConfigManager().parse_args(["--job.config_file", "benchmarks/torchtitan/compare_torchtitan.toml"])
    ours = load_config(["--config", "benchmarks/torchtitan/compare_initlab.toml"])[0]
    t, o, s = titan.training, ours.training, titan.initlab
    assert (t.steps, t.seq_len, t.global_batch_size, t.local_batch_size, t.max_norm) == (
        o.steps, o.seq_len, o.global_batch_size, o.local_batch_size, o.max_norm)
    assert (s.scheme, s.seed, s.dataset, s.data_cache_dir) == (
        ours.init.scheme, ours.job.seed, ours.data.dataset, ours.data.cache_dir)
    assert tt_config.checked_section(s) == ours.init  # every init option, defaults included
    opt = titan.optimizer
    assert (opt.name, opt.lr, [opt.beta1, opt.beta2], opt.eps, opt.weight_decay, opt.implementation) == (
        "AdamW", ours.optimizer.lr, ours.optimizer.betas, ours.optimizer.eps, ours.optimizer.weight_decay, "fused")
    assert (titan.metrics.log_freq, ours.metrics.log_freq, titan.compile.enable, ours.compile.enable) == (1, 1, False, False)
    assert (s.log_weight_std, s.log_activation_stats) == (ours.metrics.log_weight_std, ours.metrics.log_variance_stats)

    titan_args = tt_spec.Flavors()[titan.model.flavor]
    titan_args.update_from_config(titan)
    args = model_args_from_config(ours, 100_000)  # vocab_size is set in the TOML
    assert tt_config.initlab_args(titan_args) == dataclasses.replace(args, rope_scaling_factor=1.0)  # shapes
    assert torch.allclose(precompute_freqs_cis(args.head_dim, t.seq_len, titan_args.rope_theta,
                                               titan_args.rope_scaling_args), precompute_rope(args), atol=1e-6)
    with torch.device("meta"):
        model = build_model(args)
    groups = param_groups(model, ours.optimizer)  # torchtitan's AdamW: one group, weight decay on everything
    assert [(g["name"], g["weight_decay"], len(g["params"])) for g in groups] == [
        ("decay", opt.weight_decay, len(list(model.parameters())))]

    def lrs(scheduler, optimizer) -> list[float]:
        used = []
        for _ in range(t.steps):
            used.append(optimizer.param_groups[0]["lr"])  # the lr the step's optimizer.step() uses
            optimizer.step()
            scheduler.step()
        return used

    theirs_opt, ours_opt = (torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=opt.lr) for _ in range(2))
    theirs = lrs(build_lr_schedulers([theirs_opt], titan.lr_scheduler, t.steps), theirs_opt)
    ours_lrs = lrs(build_lr_scheduler(ours_opt, ours.lr_scheduler, o.steps), ours_opt)
    assert theirs == pytest.approx(ours_lrs, rel=1e-12, abs=0)
    assert ours_lrs[:6] == pytest.approx([opt.lr * k / 5 for k in (1, 2, 3, 4, 5)] + [opt.lr], rel=1e-12)


def test_activation_stats_through_torchtitan_are_initlabs_on_its_log_steps(token_dir):
    """TorchtitanActivationStats on torchtitan's llama3, driven as its trainer drives the model (2 micro-batches a
    step, log steps 1, 2, 4), against initlab's ActivationStats on initlab's Llama with the same weights and batch."""
    from components.activation_stats import ActivationStats

    titan = torchtitan_model(["--initlab.scheme", "depth_aware", "--initlab.seed", "3"], tt_flavors.DEBUG_FLAVOR)
    cfg = Config(job=Job(seed=3), model=Model(flavor="debug", vocab_size=DEBUG_VOCAB, rope_scaling_factor=8.0),
                 init=Init(scheme="depth_aware"), training=Training(seq_len=SEQ))
    ours = build_local_model(cfg, DEBUG_VOCAB)[0]
    oracle = ActivationStats(ours)
    stats = tt_metrics.TorchtitanActivationStats(titan, accum_steps=2, should_log=lambda step: step == 1 or step % 2 == 0)
    batches = torchtitan_micro_batches(data_job_config(token_dir, 2, 4), 0, 1, 8)  # steps 1-4, 2 micro-batches each
    for step in (1, 2, 3, 4):
        for inputs, _labels in batches[2 * step - 2: 2 * step]:
            titan(inputs["input"]).sum().backward()  # no optimizer step: the weights stay initlab's
        values = stats.values_for(step)
        if step == 3:
            assert values == {}  # not a log step: nothing measured
            continue
        with oracle.capture(), torch.no_grad():
            ours(batches[2 * step - 2][0]["input"])  # the step's first micro-batch
        expected = oracle.compute()
        assert sorted(values) == sorted(expected) and len(expected) == 4 * 5 + 2  # residual incl. embedding; logits
        for tag, value in expected.items():
            assert values[tag] == pytest.approx(value, rel=1e-4), tag  # fp32, different attention/RoPE kernels
    titan.eval()
    titan(batches[0][0]["input"])  # eval forwards (validation) are not counted
    assert stats.forwards == 8


def test_activation_stats_after_a_resume_start_at_the_second_log_step(token_dir):
    titan = torchtitan_model(["--initlab.scheme", "mitchell"], tt_flavors.DEBUG_FLAVOR)
    stats = tt_metrics.TorchtitanActivationStats(titan, accum_steps=1, should_log=lambda step: step == 1 or step % 2 == 0)
    inputs = torchtitan_micro_batches(data_job_config(token_dir, 2, 2), 0, 1, 1)[0][0]["input"]
    with torch.no_grad():
        titan(inputs)  # the trainer's step 5 after resuming from step 4: counted as step 1
        assert stats.values_for(5) == {}  # 5 is not a log step anyway; the count is resynchronized
        titan(inputs)  # step 6
    assert stats.measured_step == 6 and len(stats.values_for(6)) == 22


def test_the_metrics_processor_hooks_the_model_when_the_trainer_hands_it_over():
    from torchtitan.distributed import ParallelDims

    processor = object.__new__(tt_metrics.InitlabMetricsProcessor)  # its __init__ reads CUDA device properties
    processor.job_config = parse_job_config(["--initlab.log_activation_stats", "--training.local_batch_size", "2",
                                             "--training.global_batch_size", "8"], tt_flavors.DEBUG_FLAVOR)
    processor.parallel_dims = ParallelDims(dp_replicate=1, dp_shard=2, cp=1, tp=1, pp=1, ep=1, etp=1, world_size=2)
    processor.model_parts = None  # as MetricsProcessor.__init__ sets it
    assert processor.activation_stats is None
    processor.model_parts = [torchtitan_model(["--initlab.scheme", "mitchell"], tt_flavors.DEBUG_FLAVOR)]
    assert processor.activation_stats.accum_steps == 2  # torchtitan's: 8 / (2 rows x 2 dp ranks)
    assert len(processor.activation_stats.probes) == 4 * 5 + 2
    with pytest.raises(ConfigError, match="^initlab.log_activation_stats needs one model part, got 2 "):
        processor.model_parts = [torch.nn.Linear(1, 1)] * 2
