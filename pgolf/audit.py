"""Audit a tokenized dataset before anything trains on it: leaks, document boundaries, ids, sidecar.

    python -m pgolf.audit --config CFG --manifest resources/data/<ds>/manifest.json --out resources/data/<ds>/data_audit.json

Documents are the token runs that start at a BOS (id 1), followed across shard boundaries, and are hashed
by their ids, so the audit works on hub shards whose text is not at hand. The report always gives the
val/train overlap (count and a few examples); the command fails (after writing the report with
`passed: false`) when more than `audit.max_overlap_fraction` of val documents also occur in train (the
leak that disqualified two record submissions, docs/record-stack.md §1.2), when a split does not start with
BOS, when a token id is outside the vocabulary, when BOS counts disagree with the manifest's document
counts, or when the val byte sidecar is not aligned with the val tokens (same shards, same sizes, 0 on BOS).

The audit is also where data enters the DAG: it first checks every file's sha256 against the manifest (a changed
file is an error naming it). It reads every shard anyway and every later stage runs after it, so the check
costs one extra read here instead of one per GPU stage.
"""

import argparse
import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from .cli import doc_summary, run_cli
from .errors import PgolfError
from .io import write_json
from .runlog import RunLog
from .shards import BOS_ID, load_manifest, read_shard, shard_paths, tokenizer_path, verify_checksums
from .stageconfig import from_dict, load_stage_config

EXAMPLES = 5
HEAD_IDS = 32  # ids kept per val document for the examples


@dataclasses.dataclass
class AuditConfig:
    max_overlap_fraction: float = 0.001
    strict: bool = False  # the submission rule fails when a check of its audit.json fails (pgolf.submission)


def _documents(paths):
    """(document index, blake2b digest, token count, first ids as uint16 bytes) per document, streamed by shard."""
    index, digest, length, head = -1, None, 0, b""
    for path in paths:
        tokens = read_shard(path)
        bounds = np.concatenate(([0], np.flatnonzero(tokens == BOS_ID), [tokens.size]))
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            if a < b and tokens[a] == BOS_ID:  # a new document
                if digest is not None:
                    yield index, digest.digest(), length, head
                index, digest, length, head = index + 1, hashlib.blake2b(digest_size=16), 0, b""
                a += 1
            if a < b and digest is not None:  # (a split that does not start with BOS is reported elsewhere)
                part = np.ascontiguousarray(tokens[a:b])
                digest.update(part)
                if len(head) < 2 * HEAD_IDS:
                    head += part[: HEAD_IDS - len(head) // 2].tobytes()
                length += b - a
    if digest is not None:
        yield index, digest.digest(), length, head


def _split_stats(paths, vocab_size: int, problems: list, split: str) -> dict:
    tokens = max_id = 0
    for i, path in enumerate(paths):
        shard = read_shard(path)
        if i == 0 and shard.size and shard[0] != BOS_ID:
            problems.append(f"{path}: the {split} split starts with id {shard[0]}, not BOS ({BOS_ID})")
        tokens += shard.size
        if shard.size:
            max_id = max(max_id, int(shard.max()))
    if max_id >= vocab_size:
        problems.append(f"{split}: token id {max_id} is outside the vocabulary (size {vocab_size})")
    return {"shards": len(paths), "tokens": tokens, "max_id": max_id}


def _sidecar_stats(val_paths, byte_paths, problems: list) -> dict:
    if not byte_paths:
        return {"present": False}
    if len(byte_paths) != len(val_paths):
        problems.append(f"val_bytes: {len(byte_paths)} sidecar shards for {len(val_paths)} val shards")
        return {"present": True, "aligned": False}
    total = 0
    aligned = True
    for val_path, byte_path in zip(val_paths, byte_paths):
        tokens, counts = read_shard(val_path), read_shard(byte_path)
        if tokens.size != counts.size:
            problems.append(f"{byte_path}: {counts.size} entries for the {tokens.size} tokens of {val_path.name}")
            aligned = False
            continue
        if counts[tokens == BOS_ID].any():
            problems.append(f"{byte_path}: nonzero byte counts on BOS tokens of {val_path.name}")
            aligned = False
        total += int(counts.sum(dtype=np.int64))
    return {"present": True, "aligned": aligned, "bytes": total}


def _preview(manifest_path, ids: list) -> str | None:
    """The start of a document as text, when the manifest's tokenizer is at hand."""
    try:
        import sentencepiece as spm

        from . import caseops

        sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path(manifest_path)))
        text = sp.decode(ids)
        try:
            text = caseops.decode(text)
        except caseops.CaseOpsError:
            pass  # cut inside a case run or not a CaseOps tokenizer: show the transformed text
        return text
    except (OSError, RuntimeError, KeyError, PgolfError):
        return None


def audit(manifest_path, cfg: AuditConfig) -> dict:
    manifest = load_manifest(manifest_path)
    verified_bytes = verify_checksums(manifest_path)
    vocab_size = int(manifest["vocab_size"])
    paths = {split: shard_paths(manifest_path, split) for split in ("train", "val", "val_bytes")}
    problems = []
    if not paths["val"] or not paths["train"]:
        raise PgolfError(f"{manifest_path}: needs both val and train shards; re-run the data stage that writes it")
    splits = {split: _split_stats(paths[split], vocab_size, problems, split) for split in ("val", "train")}

    val_docs, val_lengths = {}, {}
    for index, digest, length, head in _documents(paths["val"]):
        val_docs.setdefault(digest, (index, head))
        val_lengths[index] = length
    splits["val"].update(docs=len(val_lengths), empty_docs=sum(n == 0 for n in val_lengths.values()))
    overlapping, examples, train_docs, empty = set(), [], 0, 0
    for index, digest, length, head in _documents(paths["train"]):
        train_docs += 1
        empty += length == 0
        if digest in val_docs and val_docs[digest][0] not in overlapping:
            overlapping.add(val_docs[digest][0])
            if len(examples) < EXAMPLES:
                val_index, val_head = val_docs[digest]
                ids = np.frombuffer(val_head, np.uint16).tolist()
                examples.append(
                    {
                        "val_doc": val_index,
                        "train_doc": index,
                        "tokens": length,
                        "head_ids": ids,
                        "preview": _preview(manifest_path, ids),
                    }
                )
    splits["train"].update(docs=train_docs, empty_docs=empty)

    for split in ("val", "train"):
        stated = manifest.get(f"{split}_docs")
        if stated is not None and stated != splits[split]["docs"]:
            problems.append(
                f"{split}: {splits[split]['docs']:,} BOS-delimited documents but the manifest says {stated:,}"
            )
    fraction = len(overlapping) / max(1, splits["val"]["docs"])
    if fraction > cfg.max_overlap_fraction:
        problems.append(
            f"{len(overlapping):,} of {splits['val']['docs']:,} val documents ({fraction:.2%}) also occur in train, "
            f"above audit.max_overlap_fraction {cfg.max_overlap_fraction}: a train/val leak (e.g. train shards "
            "exported with a smaller val_docs than the scored val set); rebuild the data with data.val_docs "
            "equal to the val set"
        )
    sidecar = _sidecar_stats(paths["val"], paths["val_bytes"], problems)
    return {
        "manifest": str(manifest_path),
        "dataset": manifest.get("dataset"),
        "vocab_size": vocab_size,
        "checksums": {"verified_bytes": verified_bytes},
        "val": splits["val"],
        "train": splits["train"],
        "overlap": {"val_docs": len(overlapping), "fraction": fraction, "examples": examples},
        "max_overlap_fraction": cfg.max_overlap_fraction,
        "val_bytes": sidecar,
        "problems": problems,
        "passed": not problems,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.audit", description=doc_summary(__doc__))
    parser.add_argument("--config", required=True, help="resolved config (JSON text or file) with `audit`")
    parser.add_argument("--manifest", required=True, help="resources/data/<ds>/manifest.json")
    parser.add_argument("--out", required=True, help="resources/data/<ds>/data_audit.json")
    args = parser.parse_args(argv)
    config = load_stage_config(args.config)
    log = RunLog("audit", config)
    report = audit(args.manifest, from_dict(AuditConfig, config.get("audit"), "audit"))
    log.write({"event": "done", **report})
    failed = failed_report_path(args.out)
    if not report["passed"]:
        # not the rule's output, which Snakemake deletes when the job fails: the report stays where we say it is
        write_json(failed, report)
        raise PgolfError(f"{args.manifest}: data audit failed (report in {failed}): " + "; ".join(report["problems"]))
    failed.unlink(missing_ok=True)
    write_json(args.out, report)


def failed_report_path(out) -> Path:
    """Where a failed audit's report goes: beside the output (data_audit.failed.json), which only a pass writes."""
    out = Path(out)
    return out.with_name(f"{out.stem}.failed{out.suffix}")


if __name__ == "__main__":
    run_cli(main)
