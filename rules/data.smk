# Data: hub shards (download) or documents -> tokenizer -> tokenize; then the audit. The switch on data.source
# lives here alone, so every later rule reads resources/data/<ds>/{manifest.json,tokenizer.model} whatever the source.
# Paths and commands come from pgolf/stages.py.


if config["data"]["source"] == "hf_shards":

    rule download:
        input:
            code=code_inputs("download_shards"),
        output:
            **stage_files("download_shards", "outputs"),
        log:
            "logs/download/{ds}.log",
        retries: 3
        localrule: True
        conda:
            "../envs/pgolf.yaml"
        params:
            **config_params("data", stage_config("data")),
        shell:
            stage_shell("download_shards")

else:
    if config["data"]["source"] == "hf_docs":

        rule download:
            input:
                code=code_inputs("download_docs"),
            output:
                **stage_files("download_docs", "outputs"),
            log:
                "logs/download/{ds}.log",
            retries: 3
            localrule: True
            conda:
                "../envs/pgolf.yaml"
            params:
                **config_params("data", stage_config("data")),
            shell:
                stage_shell("download_docs")

    rule tokenizer:
        input:
            unpack(document_inputs),
            code=code_inputs("tokenizer"),
        output:
            **stage_files("tokenizer", "outputs"),
        log:
            "logs/tokenizer/{ds}.log",
        conda:
            "../envs/pgolf.yaml"
        params:
            **config_params("data", stage_config("data")),
        shell:
            stage_shell("tokenizer", drop=docs_drop())

    rule tokenize:
        input:
            unpack(document_inputs),
            **stage_files("tokenize", "inputs"),
            code=code_inputs("tokenize"),
        output:
            **stage_files("tokenize", "outputs"),
        log:
            "logs/tokenize/{ds}.log",
        conda:
            "../envs/pgolf.yaml"
        threads: 64
        params:
            **config_params("data", stage_config("data")),
        shell:
            stage_shell("tokenize", drop=docs_drop())


rule audit_data:
    input:
        **stage_files("audit_data", "inputs"),
        code=code_inputs("audit_data"),
    output:
        **stage_files("audit_data", "outputs"),
    log:
        "logs/audit_data/{ds}.log",
    conda:
        "../envs/pgolf.yaml"
    params:
        **config_params("audit_data", data_audit_config()),
    shell:
        stage_shell("audit_data")
