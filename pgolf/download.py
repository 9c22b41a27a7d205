"""Fetch the data from the Hugging Face hub: pre-tokenized shards (hf_shards) or raw documents (hf_docs).

    python -m pgolf.download --config CFG --out resources/data/<ds>/manifest.json   # data.source: hf_shards
    python -m pgolf.download --config CFG --out resources/hub/<ds>/docs.jsonl        # data.source: hf_docs

CFG (JSON text or file) holds the `data` section; the mode follows `data.source`, the hub settings are
`data.hf` (HubConfig). Files travel through the hub cache ($HF_HUB_CACHE, or `data.hf.cache_dir`), so
HF_HUB_OFFLINE=1 works from a filled cache, and are hard-linked (copied across file systems) into the output
folder. hf_shards checks every shard's header and size, the val byte sidecar's alignment and the tokenizer
before anything is written, then writes the manifest (format: pgolf.shards) with the resolved commit.

The first download of a dataset writes hub-lock.json beside its output: the repo, the resolved commit and every
fetched file's sha256. A later download (a re-run, a code edit, a deleted manifest) must resolve to the same
commit and the same checksums, or it stops with a message: `revision: main` moving on the hub never changes the
data silently. `data.hf.refresh: true` (or `--refresh`) accepts a new revision on purpose and rewrites the lock.
"""

import argparse
import contextlib
import json
import os
import shlex
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from .caseops import OPERATORS as CASEOPS_OPERATORS
from .cli import doc_summary, run_cli
from .errors import PgolfError
from .io import atomic_path, read_json, write_json
from .runlog import RunLog
from .shards import BOS_ID, file_sha256, read_header, read_shard, shard_name
from .stageconfig import from_dict, load_stage_config

TOKENIZER_NAME = "tokenizer.model"  # every data source yields resources/data/<ds>/tokenizer.model


@dataclass
class HubConfig:
    """`data.hf`: where the hub keeps the data (docs/record-stack.md §2.1)."""

    repo: str = "romeerp/parameter-golf-caseops-v1"
    revision: str = "main"
    shard_dir: str = "datasets/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
    tokenizer: str = "datasets/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
    train_shards: int | None = 80  # the first N train shards; None = all the repo holds
    caseops: bool = True  # the repo has the val byte sidecar and a CaseOps tokenizer
    docs_repo: str = "willdepueoai/parameter-golf"
    docs_revision: str = "main"
    docs_file: str = "datasets/docs_selected.jsonl"
    cache_dir: str | None = None  # None = huggingface_hub's cache ($HF_HOME/hub or $HF_HUB_CACHE)
    max_workers: int = 8
    refresh: bool = False  # accept a commit or checksums other than hub-lock.json's (then rewrite the lock)


LOCK_NAME = "hub-lock.json"


def allow_patterns(hub: HubConfig) -> list[str]:
    """What snapshot_download fetches: the first train shards by name, all val shards (+ sidecar), the tokenizer."""
    folder = hub.shard_dir.rstrip("/")
    if hub.train_shards is None:
        train = [f"{folder}/fineweb_train_*.bin"]
    else:
        train = [f"{folder}/{shard_name('train', i)}" for i in range(hub.train_shards)]
    val = [f"{folder}/fineweb_val_[0-9]*.bin"]  # the digit keeps fineweb_val_bytes_* out
    sidecar = [f"{folder}/fineweb_val_bytes_*.bin"] if hub.caseops else []
    return train + val + sidecar + [hub.tokenizer]


def no_hub_message(repo: str, revision: str, include: list[str], cache: str) -> str:
    from huggingface_hub import constants

    reason = "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else f"no connection to {constants.ENDPOINT}"
    fill = f"hf download {repo} --repo-type dataset --revision {revision} --include {shlex.join(include)}"
    return (
        f"{repo} (revision {revision}): the Hugging Face hub is out of reach ({reason}) and the hub cache {cache} "
        f"holds no complete copy. Get the data one of these ways: run this step on a machine with network access; "
        f"or fill a hub cache there with `{fill}`, copy it to {cache} (or point HF_HOME at it) and set "
        "HF_HUB_OFFLINE=1; or use a source that needs no hub: recipes/smoke.yaml (data.source: builtin) or "
        "data.source: local with data.local.path"
    )


@contextlib.contextmanager
def hub_errors(repo: str, revision: str, include: list[str], hub: HubConfig, key: str):
    """Turn huggingface_hub's failures into one PgolfError naming the repo and the config key to fix."""
    from huggingface_hub import constants, errors

    cache = hub.cache_dir or constants.HF_HUB_CACHE
    try:
        yield
    except errors.LocalEntryNotFoundError:  # offline or unreachable, and not (completely) in the cache
        raise PgolfError(no_hub_message(repo, revision, include, cache)) from None
    except errors.RevisionNotFoundError:
        raise PgolfError(
            f"{repo}: revision {revision!r} not found on {constants.ENDPOINT}; "
            f"set data.hf.{key}revision to a branch, tag or commit of the repo"
        ) from None
    except errors.RepositoryNotFoundError:
        raise PgolfError(
            f"{repo}: dataset repo not found on {constants.ENDPOINT} (or private/gated); check data.hf.{key}repo, "
            "or set HF_TOKEN for a private repo"
        ) from None
    except errors.EntryNotFoundError:
        keys = "data.hf.docs_file" if key else "data.hf.shard_dir and data.hf.tokenizer"
        raise PgolfError(f"{repo}@{revision}: {' '.join(include)} not in the repo; check {keys}") from None
    except Exception as e:  # the hub failing mid-way (HTTP, dropped connections), size checks, a full disk
        reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        raise PgolfError(
            f"{repo}@{revision}: download failed ({reason}); re-run to resume (finished files stay in {cache})"
        ) from None


def link_or_copy(src: Path, dst: Path):
    """Place `src` at `dst` atomically: a hard link to the cache blob (no second copy), a copy across devices."""
    src = src.resolve()  # the cache's snapshot entries are symlinks into blobs/
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def consecutive_shards(folder: Path, split: str, count: int | None) -> list[Path]:
    """fineweb_<split>_000000.bin, _000001.bin, ... as far as they exist (at most `count`)."""
    paths = []
    while count is None or len(paths) < count:
        path = folder / shard_name(split, len(paths))
        if not path.exists():
            break
        paths.append(path)
    return paths


class SnapshotCheck:
    """Validation of one downloaded snapshot; every failure names the repo file and the fix."""

    def __init__(self, snapshot: Path, hub: HubConfig):
        self.snapshot, self.hub = snapshot, hub
        self.where = f"{hub.repo}@{snapshot.name}"

    def fail(self, path: Path, problem: str, fix: str):
        repo_path = PurePosixPath(path.relative_to(self.snapshot)).as_posix()
        raise PgolfError(f"{self.where} {repo_path}: {problem}; {fix}")

    def shard_tokens(self, path: Path) -> int:
        try:
            return read_header(path)
        except PgolfError as e:
            problem = str(e).removeprefix(f"{path}: ")
            storage = self.snapshot.parent.parent  # the repo's folder in the hub cache
            self.fail(path, f"not a valid shard ({problem})", f"delete {storage} and re-run, or pin data.hf.revision")

    def shards(self) -> dict[str, list[Path]]:
        hub, folder = self.hub, self.snapshot / self.hub.shard_dir
        train = consecutive_shards(folder, "train", hub.train_shards)
        if not train or (hub.train_shards is not None and len(train) < hub.train_shards):
            self.fail(
                folder / shard_name("train", len(train)),
                f"missing: found {len(train)} of {hub.train_shards or 'all'} train shards",
                "check data.hf.shard_dir, or lower data.hf.train_shards to what the repo holds",
            )
        val = consecutive_shards(folder, "val", None)
        if not val:
            self.fail(folder / shard_name("val", 0), "missing: no val shard", "check data.hf.shard_dir")
        splits = {"train": train, "val": val}
        if hub.caseops:
            splits["val_bytes"] = [folder / shard_name("val_bytes", i) for i in range(len(val))]
            for path in splits["val_bytes"]:
                if not path.exists():
                    self.fail(
                        path,
                        "missing: no val byte sidecar",
                        "set data.hf.caseops: false for a repo without one (e.g. kevclark/parameter-golf)",
                    )
        return splits

    def tokenizer(self, vocab_size: int | None) -> tuple[Path, int]:
        import sentencepiece

        path = self.snapshot / self.hub.tokenizer
        if not path.exists():
            self.fail(path, "missing", "check data.hf.tokenizer (the .model path inside the repo)")
        try:
            sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as e:
            self.fail(path, f"not a SentencePiece model ({e})", "check data.hf.tokenizer")
        if sp.bos_id() != BOS_ID:
            self.fail(path, f"BOS id is {sp.bos_id()}, not {BOS_ID}", "use a tokenizer with <s> at id 1")
        if self.hub.caseops and tuple(sp.id_to_piece(i) for i in range(4, 8)) != CASEOPS_OPERATORS:  # ids 4..7
            self.fail(path, "lacks the four CaseOps operators at ids 4..7", "set data.hf.caseops: false for it")
        if vocab_size is not None and sp.vocab_size() != vocab_size:
            self.fail(path, f"vocabulary of {sp.vocab_size()} pieces", f"set data.vocab_size: {sp.vocab_size()}")
        return path, sp.vocab_size()

    def val(self, splits: dict[str, list[Path]], vocab_size: int) -> int:
        """Check val tokens (BOS first, ids in the vocabulary) and the sidecar's alignment; return the doc count."""
        docs = 0
        for i, path in enumerate(splits["val"]):
            tokens = read_shard(path)
            if i == 0 and (tokens.size == 0 or tokens[0] != BOS_ID):
                self.fail(path, f"does not start with BOS (id {BOS_ID})", "use shards that prepend BOS to every doc")
            if tokens.size and int(tokens.max()) >= vocab_size:
                self.fail(path, f"token id {int(tokens.max())} >= vocabulary {vocab_size}", "check data.hf.tokenizer")
            bos = tokens == BOS_ID
            docs += int(bos.sum())
            if "val_bytes" in splits:
                sidecar = splits["val_bytes"][i]
                counts = read_shard(sidecar)
                if counts.size != tokens.size:
                    self.fail(
                        sidecar,
                        f"{counts.size} byte counts for the {tokens.size} tokens of {path.name}",
                        "the sidecar must align 1:1 with its val shard; pin data.hf.revision to a consistent commit",
                    )
                if counts[bos].any():
                    self.fail(sidecar, "nonzero byte count at a BOS position", "pin data.hf.revision to a good commit")
        return docs


def check_lock(lock_path: Path, record: dict, refresh: bool, log: RunLog):
    """Refuse a download whose commit or file checksums differ from the first one's (hub-lock.json), unless
    `refresh`; then write the lock (files fetched now are added to those recorded before)."""
    lock = read_json(lock_path) if lock_path.exists() else None
    fix = (
        f"to accept it on purpose, run once with data.hf.refresh: true (or python -m pgolf.download --refresh), "
        f"which rewrites {lock_path}"
    )
    if lock is not None and not refresh:
        if not isinstance(lock, dict) or not isinstance(lock.get("files"), dict):
            raise PgolfError(f"{lock_path}: not a hub lock (no files); delete it to record this download as the first")
        pinned = f"{lock.get('repo')}@{lock.get('commit')}"
        if pinned != f"{record['repo']}@{record['commit']}":
            raise PgolfError(
                f"{record['repo']} (revision {record['revision']}) resolves to commit {record['commit']}, but this "
                f"dataset was first downloaded from {pinned} ({lock_path}): the hub's data changed. To keep the "
                f"first data, set data.hf.{record['key']}revision: {lock.get('commit')}; {fix}"
            )
        changed = sorted(n for n, sha in record["files"].items() if lock["files"].get(n, sha) != sha)
        if changed:
            raise PgolfError(
                f"{pinned} {changed[0]}: sha256 {record['files'][changed[0]][:16]}… differs from the first "
                f"download's {lock['files'][changed[0]][:16]}… at the same commit ({len(changed)} file(s) changed; "
                f"{lock_path}): the hub cache's copy is damaged; delete it from the cache and re-run, or {fix}"
            )
    files = {**(lock["files"] if lock and not refresh else {}), **record["files"]}
    entry = {k: record[k] for k in ("repo", "revision", "commit")}
    write_json(lock_path, {**entry, "files": files})
    if lock is not None and refresh and lock.get("commit") != record["commit"]:
        log.write({"event": "hub_lock_refreshed", "from": lock.get("commit"), **entry})


def download_shards(data: dict, hub: HubConfig, out: Path, log: RunLog):
    from huggingface_hub import snapshot_download

    patterns = allow_patterns(hub)
    include = [f"{hub.shard_dir.rstrip('/')}/*", hub.tokenizer]
    with hub_errors(hub.repo, hub.revision, include, hub, ""):
        snapshot = Path(
            snapshot_download(
                hub.repo,
                repo_type="dataset",
                revision=hub.revision,
                allow_patterns=patterns,
                cache_dir=hub.cache_dir,
                max_workers=hub.max_workers,
            )
        )
    commit = snapshot.name  # <cache>/datasets--<owner>--<name>/snapshots/<resolved commit>
    log.write({"event": "snapshot", "repo": hub.repo, "revision": hub.revision, "commit": commit})

    check = SnapshotCheck(snapshot, hub)
    splits = check.shards()
    tokens = {split: [check.shard_tokens(p) for p in paths] for split, paths in splits.items()}
    tokenizer, vocab_size = check.tokenizer(data.get("vocab_size"))
    val_docs = check.val(splits, vocab_size)

    folder = out.parent
    sources = [p for paths in splits.values() for p in paths] + [tokenizer]
    with ThreadPoolExecutor(hub.max_workers) as pool:  # hashlib releases the GIL: 16 GB hash in parallel
        source_digests = dict(zip(sources, pool.map(file_sha256, sources)))
    repo_files = {PurePosixPath(p.relative_to(snapshot)).as_posix(): d for p, d in source_digests.items()}
    record = {"repo": hub.repo, "revision": hub.revision, "commit": commit, "files": repo_files, "key": ""}
    check_lock(folder / LOCK_NAME, record, hub.refresh, log)
    placed = {split: [folder / p.name for p in paths] for split, paths in splits.items()}
    digests = {folder / TOKENIZER_NAME: source_digests[tokenizer]}
    for split, paths in splits.items():
        for src, dst in zip(paths, placed[split]):
            link_or_copy(src, dst)
            digests[dst] = source_digests[src]
    link_or_copy(tokenizer, folder / TOKENIZER_NAME)

    manifest = {
        "dataset": data["name"],
        "source": "hf_shards",
        "tokenizer": {"path": TOKENIZER_NAME, "sha256": digests[folder / TOKENIZER_NAME]},
        "vocab_size": vocab_size,
        "val_docs": val_docs,
        "bos_id": BOS_ID,
        "caseops": hub.caseops,
        "shards": {
            split: [{"path": p.name, "tokens": n, "sha256": digests[p]} for p, n in zip(placed[split], tokens[split])]
            for split in placed
        },
        "hub": {"repo": hub.repo, "revision": hub.revision, "commit": commit, "allow_patterns": patterns},
    }
    write_json(out, manifest)
    log.write(
        {
            "event": "manifest",
            "path": str(out),
            "train_shards": len(placed["train"]),
            "train_tokens": sum(tokens["train"]),
            "val_tokens": sum(tokens["val"]),
            "val_docs": val_docs,
        }
    )


def download_docs(hub: HubConfig, out: Path, log: RunLog):
    from huggingface_hub import hf_hub_download

    with hub_errors(hub.docs_repo, hub.docs_revision, [hub.docs_file], hub, "docs_"):
        path = Path(
            hf_hub_download(
                hub.docs_repo,
                hub.docs_file,
                repo_type="dataset",
                revision=hub.docs_revision,
                cache_dir=hub.cache_dir,
            )
        )
    commit = path.parents[len(PurePosixPath(hub.docs_file).parts) - 1].name
    with open(path, "rb") as f:
        first = f.readline()
    try:
        ok = isinstance(json.loads(first).get("text"), str)
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise PgolfError(
            f'{hub.docs_repo}@{commit} {hub.docs_file}: the first line is not a JSON object with a "text" string; '
            "check data.hf.docs_file (a JSONL of documents)"
        )
    record = {
        "repo": hub.docs_repo,
        "revision": hub.docs_revision,
        "commit": commit,
        "files": {hub.docs_file: file_sha256(path)},
        "key": "docs_",
    }
    check_lock(out.parent / LOCK_NAME, record, hub.refresh, log)
    link_or_copy(path, out)
    log.write({"event": "docs", "repo": hub.docs_repo, "commit": commit, "path": str(out), "bytes": out.stat().st_size})


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.download", description=doc_summary(__doc__))
    parser.add_argument("--config", required=True, help="resolved config (JSON text or file) with the data section")
    parser.add_argument("--out", required=True, type=Path, help="manifest.json (hf_shards) or docs.jsonl (hf_docs)")
    parser.add_argument(
        "--refresh",
        action="store_true",
        help=f"accept a commit or checksums other than {LOCK_NAME}'s (as data.hf.refresh: true)",
    )
    args = parser.parse_args(argv)
    config = load_stage_config(args.config)
    where = "--config" if args.config.strip().startswith("{") else args.config
    data = config.get("data")
    if not isinstance(data, dict) or "name" not in data:
        raise PgolfError(f"{where}: no data section with a name; pass the resolved config (pgolf.config resolve)")
    hub = from_dict(HubConfig, data.get("hf"), "data.hf")
    hub.refresh = hub.refresh or args.refresh
    log = RunLog("download", {"data": {**data, "hf": asdict(hub)}})
    source = data.get("source")
    if source == "hf_shards":
        download_shards(data, hub, args.out, log)
    elif source == "hf_docs":
        download_docs(hub, args.out, log)
    else:
        raise PgolfError(
            f"{where}: data.source is {source!r}; pgolf.download serves hf_shards and hf_docs "
            "(local and builtin documents go to the tokenize rule)"
        )


if __name__ == "__main__":
    run_cli(main)
