# Helpers shared by every rules file: config validation, wildcard constraints, stage inputs and params.
import json
from pathlib import Path

from snakemake.utils import validate

# One schema fragment per config section; a new stage adds its own file here without editing the others.
for fragment in sorted(
    Path(workflow.basedir, "workflow", "schemas").glob("*.schema.yaml")
):
    validate(config, schema=str(fragment))

DATASET = config["data"]["name"]
RUN = config["run"]["name"]
DATA_DIR = f"resources/data/{DATASET}"


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


def final_targets():
    """The default target: the data audit (later stages extend this to the submission)."""
    return [f"{DATA_DIR}/data_audit.json"]
