"""pgolf: the OpenAI Parameter Golf record stack as a cached Snakemake DAG of stages."""

__version__ = "0.1.0"
