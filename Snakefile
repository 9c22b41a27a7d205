# pgolf: an OpenAI Parameter Golf submission as a cached DAG of stages.
#   snakemake --cores 2 --configfile recipes/smoke.yaml        (CPU, minutes)
#   snakemake --workflow-profile profiles/local-8gpu            (the record recipe on one 8-GPU node)
import re

from snakemake.utils import min_version

min_version("9.12")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    ds=DATASET,
    name=RUN,
    seed="|".join(str(s) for s in config["run"]["seeds"]),
    preset="|".join(re.escape(p) for p in PRESETS),


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/quantize.smk"
include: "rules/capfit.smk"
include: "rules/package.smk"
include: "rules/evaluate.smk"
include: "rules/submission.smk"
include: "rules/report.smk"
include: "rules/artifact.smk"


onstart:
    refuse_placeholders()


rule all:
    default_target: True
    input:
        final_targets(),
    localrule: True
