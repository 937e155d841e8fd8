"""integrations/torchtitan_ext.py: torchtitan 0.2.2's llama3, built through the registered TrainSpec and
initialized by the extension, against initlab's own init (tensor for tensor) and torchtitan's own
init_weights (call for call, for depth_aware); sharded draws on 2 FSDP2 ranks; one-line config errors."""

from __future__ import annotations

import pytest
import torch

import integrations.torchtitan_ext as ext
from components.build import build_local_model
from components.config import Config, ConfigError, Init, Job, Model, Training
from components.torchtitan_names import from_torchtitan, to_torchtitan
from components.weight_stats import WeightStats
from models import build_model, make_model_args
from models.common import layer_of, role_of
from tests.launch import torchrun
from tests.test_init_schemes import _record_calls, check_tensor

# torchtitan's "debugmodel" flavor: dim 256, 6 layers, 16 heads (= KV heads), vocab 2048, multiple_of 256.
DEBUGMODEL = dict(n_layers=6, dim=256, n_heads=16, n_kv_heads=16, multiple_of=256, vocab_size=2048)
SEQ = 64


def parse_job_config(extra: list[str], flavor: str = "debugmodel"):
    """torchtitan's JobConfig with the [initlab] table, as its trainer parses the command line."""
    from torchtitan.config import ConfigManager

    return ConfigManager().parse_args(["--job.custom_config_module", "integrations.torchtitan_ext", "--model.name",
                                       ext.TRAIN_SPEC_NAME, "--model.flavor", flavor, "--training.seq_len",
                                       str(SEQ), *extra])


def build_on_meta(job_config):
    """The model as torchtitan's trainer builds it: the registered spec's flavor args, updated, on meta."""
    from torchtitan.protocols.train_spec import get_train_spec

    spec = get_train_spec(job_config.model.name)
    args = spec.model_args[job_config.model.flavor]
    args.update_from_config(job_config)
    with torch.device("meta"):
        return spec.model_cls(args)


def torchtitan_model(extra: list[str]) -> torch.nn.Module:
    model = build_on_meta(parse_job_config(extra))
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
    initializer = ext.init_torchtitan_llama(model, args.initlab, args.initlab_seed, ext.initlab_args(args))
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
    titan = ext.torchtitan_weight_stats([torchtitan_model(["--initlab.scheme", "mitchell"])]).compute()
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
    single_stats = ext.torchtitan_weight_stats([torchtitan_model(flags)]).compute()
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

    job_config = ConfigManager().parse_args(["--model.name", ext.TRAIN_SPEC_NAME, "--model.flavor", "debugmodel"])
    with pytest.raises(ConfigError, match="^model.name = 'initlab_llama3' needs the \\[initlab\\] table; add "
                                          "--job.custom_config_module integrations.torchtitan_ext$"):
        build_on_meta(job_config)
