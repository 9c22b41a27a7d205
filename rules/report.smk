# The report's figures: SVGs drawn by pgolf.report (matplotlib) from every seed's training log and every built
# preset's size and eval JSONs; `snakemake --report report.html` shows them with the captions in workflow/report/.
# Paths and the command come from pgolf/stages.py.


rule report:
    input:
        unpack(report_inputs),
        code=code_inputs("report"),
    output:
        loss=report_figure("loss", "Training"),
        size=report_figure("size", "Size"),
        bpb=report_figure("bpb", "Scores"),
        presets=report_figure("presets", "Presets"),
    log:
        "logs/report/{name}.log",
    localrule: True
    conda:
        "../envs/pgolf.yaml"
    params:
        **stage_files("report", "params"),
        seeds=config["run"]["seeds"],
        presets=submission_presets(),
    shell:
        stage_shell("report")


rule report_capfit:
    input:
        fits=capfit_reports,
        code=code_inputs("report_capfit"),
    output:
        report(
            STAGES.PATHS["capfit_figure"],
            caption="../workflow/report/capfit.rst",
            category="Presets",
        ),
    log:
        "logs/report/{name}-capfit.log",
    localrule: True
    conda:
        "../envs/pgolf.yaml"
    params:
        **stage_files("report_capfit", "params"),
        seeds=config["run"]["seeds"],
    shell:
        stage_shell("report_capfit")
