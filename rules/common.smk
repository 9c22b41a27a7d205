# Helpers shared by every rules file: config validation, wildcard constraints, stage inputs and params.
import functools
import hashlib
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# the stage table: standard library only, so parsing the workflow needs no torch
from pgolf import stages as STAGES
from pgolf.config import validate as validate_config

# One schema fragment per config section (workflow/schemas/), then what the schemas cannot say (unknown sections,
# NaN or infinite numbers, a budget within its Hessian reserve); an error names the key, its value and what is allowed.
validate_config(
    config,
    source="config.yaml + --configfile",
    schema_dir=Path(workflow.basedir, "workflow", "schemas"),
)

# quant.capfit.enabled adds the preset `capfit`, whose settings the capfit rule writes to a file (docs/capfit.md)
CAPFIT = "capfit"
CAPFIT_ENABLED = config["quant"].get("capfit", {}).get("enabled", False)
if CAPFIT in config["quant"]["presets"]:
    raise ValueError(
        f"config: quant.presets.{CAPFIT} is reserved for the preset the capfit rule chooses; rename that preset"
    )
PRESETS = list(config["quant"]["presets"]) + ([CAPFIT] if CAPFIT_ENABLED else [])
_unknown_presets = sorted(
    ({config["submission"]["preset"]} | set(config["quant"].get("build", [])))
    - set(PRESETS)
)
if _unknown_presets:
    raise ValueError(
        f"config: submission.preset / quant.build name {_unknown_presets}, which are not in quant.presets; "
        "add those presets or fix the names"
    )

DATASET = config["data"]["name"]
RUN = config["run"]["name"]
SUBMISSION_FOLDER = config["submission"]["folder"]
# GPUs a distributed (torchrun) job asks for, one place for every profile: hardware.gpus (gpu_request); single-GPU
# stages ask GPU_ONE (none on a CPU run). A SLURM profile sets neither `gpu` nor `gres` itself (tests/test_profiles.py
# checks sbatch's flags).
GPUS = config["hardware"]["gpus"]
GPU_ONE = min(GPUS, 1)
# ranks of every torchrun stage: one per GPU, or hardware.cpu_procs gloo ranks on the CPU (as pgolf.launch starts them)
RANKS = GPUS or config["hardware"].get("cpu_procs", 1)
PLACEHOLDER = "CHANGE_ME"


def gpu_request(rule_name):
    """The GPU resources of a distributed rule: hardware.gpus as `gpu` (sbatch --gpus=N, the whole job's count), or,
    where the profile spreads the rule over several nodes (set-resources RULE.nodes > 1), hardware.gpus per node as
    `gres` (--gres=gpu:N), the ranks each node's torchrun starts."""
    nodes = workflow.resource_settings.overwrite_resources.get(rule_name, {}).get(
        "nodes"
    )
    if GPUS and nodes is not None and int(getattr(nodes, "raw", nodes)) > 1:
        return {"gres": f"gpu:{GPUS}"}
    return {"gpu": GPUS}


def profile_placeholders():
    """Profile resources still holding a CHANGE_ME placeholder (the slurm profiles' account and partitions), as
    `default-resources.KEY=VALUE` / `set-resources.RULE.KEY=VALUE`."""
    settings = workflow.resource_settings
    found = [
        f"default-resources.{key}={resource.raw}"
        for key, resource in (settings.default_resources or {}).items()
        if PLACEHOLDER in str(getattr(resource, "raw", ""))
    ]
    for rule_name, resources in settings.overwrite_resources.items():
        found += [
            f"set-resources.{rule_name}.{key}={resource.raw}"
            for key, resource in resources.items()
            if PLACEHOLDER in str(getattr(resource, "raw", ""))
        ]
    return found


def refuse_placeholders():
    """Called by onstart (never in a dry run): no job is submitted while the profile has placeholders."""
    found = profile_placeholders()
    if found:
        raise WorkflowError(
            f"the profile still has placeholders: {', '.join(found)}; fill in your cluster's account and "
            "partitions in profiles/<profile>/config.yaml (or pass --default-resources / --set-resources) "
            "before submitting"
        )


if profile_placeholders() and not workflow.remote_exec:
    print(
        f"pgolf: the profile still has {PLACEHOLDER} placeholders ({', '.join(profile_placeholders())}); "
        "a dry run plans, a real run refuses to submit",
        file=sys.stderr,
    )


# Environment and launcher of the torchrun stages: offline hub, and for train/hessians the rule's threads split over
# ranks. stage_shell puts `exec` between the two.
LAUNCH = ("HF_HUB_OFFLINE=1", "{params.launch}")
OMP_LAUNCH = (
    "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$(( ({threads} + {params.ranks} - 1) / {params.ranks} ))",
    "{params.launch}",
)


def stage_config(*sections):
    """The config sections a stage reads."""
    return {s: config[s] for s in sections}


# Each stage's --config is a file named by its content (config_file), and the rule's params are that path plus one
# `KEY=VALUE` line per setting: a changed value re-runs exactly what it did when the params held the whole JSON, and
# a dry run's rerun reason names the setting, before and now, instead of printing the stage's config.
CONFIG_DIR = Path(".snakemake", "pgolf")


def config_file(stage, values):
    """Write `values` as the stage's --config file (once; a temp name, then a rename) and return its path, named by
    a hash of its content."""
    text = json.dumps(values, sort_keys=True, indent=1) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = CONFIG_DIR / f"{stage}-{digest}.json"
    if not path.exists():
        CONFIG_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return str(path)


def settings(values, prefix=""):
    """{dotted key: `KEY=VALUE`} for every leaf of a nested mapping (a list is one leaf, as JSON)."""
    found = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            found.update(settings(value, f"{dotted}."))
        else:
            found[dotted] = f"{dotted}={json.dumps(value, sort_keys=True)}"
    return found


def _param_names(keys):
    """Params names for settings, `setting<i>_<dotted key as an identifier>` (the index keeps them distinct)."""
    return {
        key: f"setting{i}_" + "".join(c if c.isalnum() else "_" for c in key)
        for i, key in enumerate(keys)
    }


def config_params(stage, values):
    """A rule's params for a stage whose config is fixed: `config` (its file) and one param per setting."""
    lines = settings(values)
    names = _param_names(lines)
    return {
        "config": config_file(stage, values),
        **{names[k]: line for k, line in lines.items()},
    }


def preset_config_params(stage, values_of):
    """config_params for a per-preset stage (quantize, code): `values_of(preset)` is a preset's config; the capfit
    preset's --config is the file the capfit rule writes (capfit_STAGE_config). The params are named by the union of
    the presets' settings; one a job's preset lacks (and every one of the capfit preset) repeats its config path,
    which the compared set of params holds anyway, so that adding or editing another preset changes nothing here.
    """
    keys = sorted(
        {k for p in config["quant"]["presets"] for k in settings(values_of(p))}
    )

    preset_file = functools.cache(lambda preset: config_file(stage, values_of(preset)))
    preset_settings = functools.cache(lambda preset: settings(values_of(preset)))

    def config_path(wildcards):
        if wildcards.preset == CAPFIT:
            return stage_path(
                f"capfit_{stage}_config", name=wildcards.name, seed=wildcards.seed
            )
        return preset_file(wildcards.preset)

    def setting(key):
        def value(wildcards):
            if wildcards.preset == CAPFIT:
                return config_path(wildcards)
            found = preset_settings(wildcards.preset)
            return found[key] if key in found else config_path(wildcards)

        return value

    names = _param_names(keys)
    return {"config": config_path, **{names[k]: setting(k) for k in keys}}


def _fixed(stage):
    """Wildcards a stage's paths take from the config: the dataset outside the data rules, the submission folder."""
    outputs = STAGES.STAGES[stage].outputs.values()
    per_dataset = any("{ds}" in STAGES.PATHS[key] for key in outputs)
    return {"folder": SUBMISSION_FOLDER, **({} if per_dataset else {"ds": DATASET})}


def stage_files(stage, section, protect=()):
    """A stage's inputs, outputs or params from pgolf.stages; outputs named in `protect` are protected()."""
    files = STAGES.files(stage, section, **_fixed(stage))
    return {k: protected(v) if k in protect else v for k, v in files.items()}


def stage_path(key, **wildcards):
    """One path of pgolf.stages.PATHS, config-fixed wildcards filled in."""
    return STAGES.path(key, **{"folder": SUBMISSION_FOLDER, "ds": DATASET, **wildcards})


def code_inputs(stage):
    """The stage's source files (its module's import closure, pgolf.stages.code_inputs), listed as inputs so
    that an edit to any module the stage can run re-runs it (small files compare by checksum).
    """
    return STAGES.code_inputs(stage, Path(workflow.basedir, "pgolf"))


def stage_shell(stage, prefix=("", "python"), drop=()):
    """The rule's shell command: `ENV exec LAUNCHER -m pgolf.<module> ARGS > LOG`, the arguments from pgolf.stages,
    `prefix` the (environment, launcher) pair. `exec` hands the job's shell over to the stage, so a SIGTERM sent to
    the job reaches the stage itself (whose launcher stops every rank cleanly). A long stage (pgolf.stages'
    `progress`) runs under pgolf.tee, which shows its log on the console as well and passes signals on.
    """
    env, launcher = prefix
    command = f"{launcher} {STAGES.shell_args(stage, drop)}"
    if STAGES.STAGES[stage].progress:
        return f"{env} exec python -m pgolf.tee {{log:q}} -- {command}".lstrip()
    return f"{env} exec {command} > {{log:q}} 2>&1".lstrip()


def data_audit_config():
    """The data audit's config: data and audit less `audit.strict`, which only the submission rule reads (so
    toggling it re-runs nothing upstream)."""
    audit = {k: v for k, v in config["audit"].items() if k != "strict"}
    return {"data": config["data"], "audit": audit}


def train_config():
    """The train stage's config: its sections plus the eval keys of the raw weights' last-step val
    (pgolf.train.RAW_VAL_KEYS), so that other eval settings do not re-run training."""
    window = (
        "seq_len",
        "batch_tokens",
        "sliding_stride",
        "truncate_tail",
        "val_docs_limit",
    )
    sections = {s: config[s] for s in ("model", "train", "hardware")}
    sections["eval"] = {k: config["eval"][k] for k in window}
    return sections


def torchrun(gpus=None):
    """Launcher prefix of the distributed stages (pgolf.launch): torchrun with one rank per GPU, `hardware.cpu_procs`
    gloo ranks on the CPU, or one torchrun per node inside a multi-node SLURM job."""
    hardware = config["hardware"]
    gpus = hardware["gpus"] if gpus is None else gpus
    return f"python -m pgolf.launch --gpus {gpus} --cpu-procs {hardware.get('cpu_procs', 1)} --"


def compile_cache_dir(wildcards):
    """torch.compile's caches of a run, next to its outputs and shared by its seeds (pgolf.compile_cache)."""
    return f"results/{wildcards.name}/compile_cache"


def document_inputs(wildcards):
    """Raw documents a tokenizer/tokenize job reads: the local corpus, the hub's docs.jsonl, or none (builtin)."""
    source = config["data"]["source"]
    if source == "local":
        return {"docs": config["data"]["local"]["path"]}
    if source == "hf_docs":
        return {"docs": stage_path("hub_docs")}
    return {}


def docs_drop():
    """The options a tokenizer/tokenize command leaves out: `--docs` names only the hub's docs.jsonl (the local
    path and builtin text come from the config itself)."""
    return () if config["data"]["source"] == "hf_docs" else ("--docs",)


def submission_presets():
    """Presets built for every seed: the submission's, then those listed in quant.build, then capfit when enabled."""
    presets = [config["submission"]["preset"]]
    built = config["quant"].get("build", []) + ([CAPFIT] if CAPFIT_ENABLED else [])
    return presets + [p for p in dict.fromkeys(built) if p not in presets]


def final_targets():
    """The default target: the submission folder, every built preset's eval.json for every seed, the report figures;
    with eval.artifact set, the sized and scored outside artifact instead."""
    if config["eval"].get("artifact"):
        return [stage_path("artifact_eval", name=RUN)]
    return (
        [stage_path("submission_json", name=RUN)]
        + expand(
            stage_path("eval", name=RUN),
            seed=config["run"]["seeds"],
            preset=submission_presets(),
        )
        + report_figures(RUN)
    )


def report_figures(name):
    """The report's figure files of a run."""
    figures = [
        f"{stage_path('report_dir', name=name)}/{figure}.svg"
        for figure in STAGES.REPORT_FIGURES
    ]
    return figures + (
        [stage_path("capfit_figure", name=name)] if CAPFIT_ENABLED else []
    )


def submission_inputs(wildcards):
    """What the records folder reads: every seed's train log, Hessian, size and eval outputs of the submission preset."""
    keys = {
        "train": ["train_summary", "train_log", "hessians_summary"],
        "quant": ["size", "eval", "script"],
    }
    fixed = {"name": wildcards.name, "preset": config["submission"]["preset"]}
    return {
        "audit": stage_path("data_audit"),
        "tokenizer": stage_path("tokenizer"),
        **{
            group: [
                stage_path(key, seed=seed, **fixed)
                for seed in config["run"]["seeds"]
                for key in group_keys
            ]
            for group, group_keys in keys.items()
        },
    }


def report_figure(figure, category):
    """One figure of the report rule, with its caption from workflow/report/."""
    return report(
        f"{STAGES.PATHS['report_dir']}/{figure}.svg",
        caption=f"../workflow/report/{figure}.rst",
        category=category,
    )


def report_inputs(wildcards):
    """What the report plots: every seed's training log, every built preset's size and eval JSONs."""
    seeds, presets = config["run"]["seeds"], submission_presets()
    return {
        "train": [stage_path("train_log", name=wildcards.name, seed=s) for s in seeds],
        "quant": [
            stage_path(key, name=wildcards.name, seed=s, preset=p)
            for s in seeds
            for p in presets
            for key in ("size", "eval")
        ],
    }


def quant_config(preset):
    """The quantize job's config: this preset alone plus the GPU count, so other presets' edits leave it cached."""
    return {
        "preset": config["quant"]["presets"][preset],
        "hardware": {"gpus": config["hardware"]["gpus"]},
    }


def capfit_inputs(stage):
    """For the capfit preset, the stage config the capfit rule wrote for `stage` (quantize or code); else none."""

    def inputs(wildcards):
        if wildcards.preset != CAPFIT:
            return {}
        return {
            "stage_config": stage_path(
                f"capfit_{stage}_config", name=wildcards.name, seed=wildcards.seed
            )
        }

    return inputs


def capfit_reports(wildcards):
    """What the capfit figure plots: every seed's capfit.json."""
    return [
        stage_path("capfit_report", name=wildcards.name, seed=s)
        for s in config["run"]["seeds"]
    ]


def capfit_config():
    """The capfit job's config (pgolf.capfit.stage_config): what the capfit preset's code job gets, plus
    quant.capfit, its base preset and the GPU count; editing another preset leaves it cached.
    """
    # no capfit job: leave pgolf.capfit (it imports torch, which parsing the workflow must not need) unread
    if not config["quant"].get("capfit", {}).get("enabled"):
        return {}
    from pgolf.capfit import stage_config as capfit_stage_config

    return capfit_stage_config(config)


def code_config(preset):
    """The code job's config: the sections run_all reads, with this preset only (pgolf.config.narrow_config)."""
    from pgolf.config import narrow_config

    return narrow_config(config, preset)
