# The submission: the records folder of the submission preset over every seed (the default target).


rule submission:
    input:
        unpack(submission_inputs),
        code=module_files("submission", "stats"),
    output:
        multiext(
            f"results/{{name}}/submission/{SUBMISSION_FOLDER}/",
            "submission.json",
            "README.md",
            "audit.json",
            "train_gpt.py",
            "requirements.txt",
            "tokenizer.model",
        ),
    log:
        "logs/submission/{name}.log",
    localrule: True
    conda:
        "../envs/pgolf.yaml"
    params:
        config=stage_config("run", "hardware", "submission"),
        out_dir=f"results/{{name}}/submission/{SUBMISSION_FOLDER}",
        data_dir=DATA_DIR,
    shell:
        "python -m pgolf.submission --config {params.config:q} --run-dir results/{wildcards.name:q} "
        "--data-dir {params.data_dir:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
