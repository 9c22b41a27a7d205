# The report's figures: SVGs written by pgolf.report from every seed's training log and every built preset's
# size and eval JSONs; `snakemake --report report.html` shows them with the captions in workflow/report/.


rule report:
    input:
        train=expand(
            "results/{{name}}/seed{seed}/train/log.jsonl", seed=config["run"]["seeds"]
        ),
        quant=expand(
            "results/{{name}}/seed{seed}/quant/{preset}/{f}",
            seed=config["run"]["seeds"],
            preset=submission_presets(),
            f=["size.json", "eval.json"],
        ),
        code=module_files("report"),
    output:
        loss=report(
            "results/{name}/report/loss.svg",
            caption="../workflow/report/loss.rst",
            category="Training",
        ),
        size=report(
            "results/{name}/report/size.svg",
            caption="../workflow/report/size.rst",
            category="Size",
        ),
        bpb=report(
            "results/{name}/report/bpb.svg",
            caption="../workflow/report/bpb.rst",
            category="Scores",
        ),
        presets=report(
            "results/{name}/report/presets.svg",
            caption="../workflow/report/presets.rst",
            category="Presets",
        ),
    log:
        "logs/report/{name}.log",
    localrule: True
    conda:
        "../envs/pgolf.yaml"
    params:
        seeds=config["run"]["seeds"],
        presets=submission_presets(),
    shell:
        "python -m pgolf.report --run-dir results/{wildcards.name} --seeds {params.seeds} "
        "--presets {params.presets} --out-dir $(dirname {output.loss}) > {log} 2>&1"


rule report_capfit:
    input:
        fits=expand(
            "results/{{name}}/seed{seed}/quant/capfit/capfit.json",
            seed=config["run"]["seeds"],
        ),
        code=module_files("report"),
    output:
        report(
            "results/{name}/report/capfit.svg",
            caption="../workflow/report/capfit.rst",
            category="Presets",
        ),
    log:
        "logs/report/{name}-capfit.log",
    localrule: True
    conda:
        "../envs/pgolf.yaml"
    params:
        seeds=config["run"]["seeds"],
    shell:
        "python -m pgolf.report --run-dir results/{wildcards.name} --seeds {params.seeds} --capfit "
        "--out-dir $(dirname {output}) > {log} 2>&1"
