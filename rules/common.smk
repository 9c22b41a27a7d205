# Helpers shared by every rules file: config validation, wildcard constraints, stage inputs and params.
import json
from pathlib import Path

from snakemake.utils import validate

# One schema fragment per config section; a new stage adds its own file here without editing the others.
for fragment in sorted(
    Path(workflow.basedir, "workflow", "schemas").glob("*.schema.yaml")
):
    validate(config, schema=str(fragment))

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
DATA_DIR = f"resources/data/{DATASET}"
SUBMISSION_FOLDER = config["submission"]["folder"]
REPORT_FIGURES = ["loss", "size", "bpb", "presets"]
if CAPFIT_ENABLED:
    REPORT_FIGURES.append("capfit")
# ranks of every torchrun stage: one per GPU, or hardware.cpu_procs gloo ranks on the CPU (as pgolf.launch starts them)
RANKS = config["hardware"]["gpus"] or config["hardware"].get("cpu_procs", 1)


def stage_config(*sections):
    """The config sections a stage reads, as the JSON text its `--config` takes (sorted, so params compare stably)."""
    return json.dumps({s: config[s] for s in sections}, sort_keys=True)


def module_files(*modules):
    """Source files of a stage, listed as inputs so that a code edit re-runs the stage (small files compare by checksum)."""
    return [f"pgolf/{m.replace('.', '/')}.py" for m in modules]


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
        return {"docs": f"resources/hub/{DATASET}/docs.jsonl"}
    return {}


def docs_option():
    """`--docs PATH` for the hub's docs.jsonl; the local path and builtin text come from the config itself."""
    if config["data"]["source"] == "hf_docs":
        return f"--docs resources/hub/{DATASET}/docs.jsonl"
    return ""


def submission_presets():
    """Presets built for every seed: the submission's, then those listed in quant.build, then capfit when enabled."""
    presets = [config["submission"]["preset"]]
    built = config["quant"].get("build", []) + ([CAPFIT] if CAPFIT_ENABLED else [])
    return presets + [p for p in dict.fromkeys(built) if p not in presets]


def final_targets():
    """The default target: the submission folder, every built preset's eval.json for every seed, the report figures;
    with eval.artifact set, the sized and scored outside artifact instead."""
    if config["eval"].get("artifact"):
        return [f"results/{RUN}/artifact/eval.json"]
    return (
        [f"results/{RUN}/submission/{SUBMISSION_FOLDER}/submission.json"]
        + expand(
            "results/{name}/seed{seed}/quant/{preset}/eval.json",
            name=RUN,
            seed=config["run"]["seeds"],
            preset=submission_presets(),
        )
        + expand(f"results/{RUN}/report/{{figure}}.svg", figure=REPORT_FIGURES)
    )


def submission_inputs(wildcards):
    """What the records folder reads: every seed's train log, Hessian, size and eval outputs of the submission preset."""
    seeds = config["run"]["seeds"]
    run = f"results/{wildcards.name}"
    preset = config["submission"]["preset"]
    return {
        "audit": f"{DATA_DIR}/data_audit.json",
        "tokenizer": f"{DATA_DIR}/tokenizer.model",
        "train": expand(
            f"{run}/seed{{seed}}/train/{{f}}",
            seed=seeds,
            f=["summary.json", "log.jsonl", "hessians.json"],
        ),
        "quant": expand(
            f"{run}/seed{{seed}}/quant/{preset}/{{f}}",
            seed=seeds,
            f=["size.json", "eval.json", "train_gpt.py"],
        ),
    }


def quant_config(wildcards):
    """The quantize job's --config: this preset alone plus the GPU count, so other presets' edits leave it cached
    (the capfit preset comes from its preset.json, an input)."""
    hardware = {"gpus": config["hardware"]["gpus"]}
    if wildcards.preset == CAPFIT:
        return json.dumps({"hardware": hardware}, sort_keys=True)
    preset = config["quant"]["presets"][wildcards.preset]
    return json.dumps({"preset": preset, "hardware": hardware}, sort_keys=True)


def capfit_preset_file(wildcards):
    """{"preset_file": the capfit rule's preset.json} for the capfit preset, else nothing."""
    if wildcards.preset != CAPFIT:
        return {}
    return {
        "preset_file": f"results/{wildcards.name}/seed{wildcards.seed}/quant/{CAPFIT}/preset.json"
    }


def preset_file_option(wildcards, input):
    """`--preset-file PATH` for the capfit preset, whose settings are in a file; else nothing."""
    return f"--preset-file '{input.preset_file}'" if wildcards.preset == CAPFIT else ""


def capfit_config(wildcards):
    """The capfit job's --config (pgolf.capfit.stage_config): what the capfit preset's code job gets, plus
    quant.capfit and the base preset; editing another preset leaves it cached."""
    from pgolf.capfit import stage_config as capfit_stage_config

    return json.dumps(capfit_stage_config(config), sort_keys=True)


def package_sources():
    """Every module the submission script carries (pgolf.codepack decides which): an edit there re-writes it."""
    from pgolf.codepack import submitted_files

    root = Path(workflow.basedir)
    return [p.relative_to(root).as_posix() for p in submitted_files(root / "pgolf")]


def code_config(wildcards):
    """The code job's --config: the config without `quant`, plus this preset only, as pgolf.codepack narrows it."""
    from pgolf.codepack import narrow_config, with_preset

    # the capfit preset's settings come from preset.json (pgolf.codepack --preset-file)
    if wildcards.preset == CAPFIT:
        return json.dumps(
            narrow_config(with_preset(config, CAPFIT, {}), CAPFIT), sort_keys=True
        )
    return json.dumps(narrow_config(config, wildcards.preset), sort_keys=True)
