"""initlab's init schemes inside torchtitan 0.2.2's own trainer: a TrainSpec and an ``[initlab]`` config table.

Pinned to torchtitan 0.2.2 (its llama3 ``Transformer``, ``TrainSpec`` and ``ConfigManager``). Run from
the initlab repo root (so ``integrations`` imports), with torchtitan's usual command plus::

    --experimental.custom_import integrations.torchtitan.spec     # registers the TrainSpec
    --job.custom_config_module integrations.torchtitan.config     # adds the [initlab] table
    --model.name initlab_llama3 --initlab.scheme mitchell         # any initlab [init] option

``initlab_llama3`` is torchtitan's ``llama3`` TrainSpec (same flavors plus ``initlab_llama_1b``,
parallelize/pipeline functions, data, optimizer) whose model's ``init_weights`` draws every parameter the way
initlab's trainer does:
torchtitan's name is mapped to initlab's (components/torchtitan_names.py), whose role and layer pick
the scheme's distribution, and init_schemes/apply.py draws it in fixed row blocks seeded by
(seed, initlab name, block). The weights are therefore bitwise initlab's for the same scheme, options
and seed, on any number of FSDP/HSDP ranks. Tensor parallelism shards some weights along dim 1
(``wo``, ``w2``) or in strided blocks, which the block draw does not cover: such a placement is
refused with a one-line error rather than drawn differently. On torchtitan's log steps the metrics
also carry initlab's ``weight_std/<role>/layer_<NN>`` (components/weight_stats.py, the tags of
initlab's trainer), so both trainers' runs line up in one TensorBoard; ``[initlab] run_dir`` (on by default) also
writes them as an initlab run directory (metrics.jsonl + config.toml) that scripts/compare_runs.py reports next to
train.py's runs (metrics.py: InitlabRunLogger; config.py: initlab_run_config). With ``[initlab] dataset`` set,
torchtitan's trainer reads initlab's batches instead of its own data (data.py, InitlabDataLoader: step k's tokens
are bitwise initlab train.py's), for step-for-step comparisons. docs/torchtitan.md has the details.

Modules: ``config`` (the [initlab] table, the run in initlab's terms), ``flavors`` (initlab's llama shapes as
torchtitan flavors), ``spec`` (the TrainSpec, registered on import), ``metrics`` (statistics and metrics.jsonl),
``data`` (initlab's batches).
"""
