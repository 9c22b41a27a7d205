# Data: hub shards (download) or documents -> tokenizer -> tokenize; then the audit. The switch on data.source
# lives here alone, so every later rule reads resources/data/<ds>/{manifest.json,tokenizer.model} whatever the source.


if config["data"]["source"] == "hf_shards":

    rule download:
        input:
            code=module_files("download", "shards"),
        output:
            manifest="resources/data/{ds}/manifest.json",
            tokenizer="resources/data/{ds}/tokenizer.model",
        log:
            "logs/download/{ds}.log",
        retries: 3
        localrule: True
        conda:
            "../envs/pgolf.yaml"
        params:
            config=stage_config("data"),
        shell:
            "python -m pgolf.download --config {params.config:q} --out {output.manifest:q} > {log:q} 2>&1"

else:
    if config["data"]["source"] == "hf_docs":

        rule download:
            input:
                code=module_files("download"),
            output:
                docs="resources/hub/{ds}/docs.jsonl",
            log:
                "logs/download/{ds}.log",
            retries: 3
            localrule: True
            conda:
                "../envs/pgolf.yaml"
            params:
                config=stage_config("data"),
            shell:
                "python -m pgolf.download --config {params.config:q} --out {output.docs:q} > {log:q} 2>&1"

    rule tokenizer:
        input:
            unpack(document_inputs),
            code=module_files("tokenizer", "caseops", "sources"),
        output:
            "resources/data/{ds}/tokenizer.model",
        log:
            "logs/tokenizer/{ds}.log",
        conda:
            "../envs/pgolf.yaml"
        params:
            config=stage_config("data"),
            docs=docs_option(),
        shell:
            "python -m pgolf.tokenizer --config {params.config:q} {params.docs:q} --out {output:q} > {log:q} 2>&1"

    rule tokenize:
        input:
            unpack(document_inputs),
            tokenizer="resources/data/{ds}/tokenizer.model",
            code=module_files("tokenize", "tokenizer", "caseops", "sources", "shards"),
        output:
            "resources/data/{ds}/manifest.json",
        log:
            "logs/tokenize/{ds}.log",
        conda:
            "../envs/pgolf.yaml"
        threads: 64
        params:
            config=stage_config("data"),
            docs=docs_option(),
        shell:
            "python -m pgolf.tokenize --config {params.config:q} {params.docs:q} --tokenizer {input.tokenizer:q} "
            "--workers {threads} --out {output:q} > {log:q} 2>&1"


rule audit_data:
    input:
        manifest="resources/data/{ds}/manifest.json",
        code=module_files("audit", "shards"),
    output:
        "resources/data/{ds}/data_audit.json",
    log:
        "logs/audit_data/{ds}.log",
    conda:
        "../envs/pgolf.yaml"
    params:
        config=stage_config("data", "audit"),
    shell:
        "python -m pgolf.audit --config {params.config:q} --manifest {input.manifest:q} --out {output:q} > {log:q} 2>&1"
