"""A local HTTP server laid out like the Hugging Face hub, for testing the real download code offline.

    with HubServer({"owner/name": {"path/in/repo": b"bytes", ...}}) as hub:
        env["HF_ENDPOINT"] = hub.url      # huggingface_hub reads it at import time: use a subprocess

It serves what huggingface_hub (2.x) calls for dataset repos:
  GET  /api/datasets/<repo>/revision/<rev>         repo info: "sha" (the resolved commit) and "siblings"
  GET  /api/datasets/<repo>/tree/<rev>[/<path>]    the file listing snapshot_download filters by pattern
  HEAD|GET /datasets/<repo>/resolve/<rev>/<path>   X-Repo-Commit, ETag, Content-Length; LFS files (shards,
                                                   tokenizers, JSONL) answer 302 with X-Linked-Etag (their
                                                   sha256) and X-Linked-Size, like the hub
  HEAD|GET /cdn/<sha256>                           the blob store the LFS redirects point at
  GET  /api/agent-harnesses                        the client's best-effort user-agent registry (empty here)
The redirect goes to `localhost` while HF_ENDPOINT names `127.0.0.1`: a different origin, so the client
treats it as the hub's CDN (it reads the metadata from the 302 itself and drops auth), as it does for real.
Errors carry the hub's X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound). Each repo has one
branch, `main`, at a commit derived from its contents. `requests` records (method, path) of every call.
"""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".bin", ".model", ".jsonl", ".parquet")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, repo_id: str, files: dict[str, bytes]):
        self.repo_id = repo_id
        self.files = dict(files)
        digest = hashlib.sha1(repo_id.encode())
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + git_blob_sha1(self.files[path]).encode())
        self.commit = digest.hexdigest()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def resolve(self, revision: str) -> str | None:
        return self.commit if revision in ("main", self.commit) else None

    def tree_entry(self, path: str) -> dict:
        data = self.files[path]
        entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
        if self.is_lfs(path):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def tree(self, under: str, recursive: bool) -> list[dict]:
        prefix = f"{under}/" if under else ""
        entries, folders = [], set()
        for path in sorted(self.files):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(self.tree_entry(path))
        dirs = [{"type": "directory", "path": p, "oid": hashlib.sha1(p.encode()).hexdigest()} for p in sorted(folders)]
        return dirs + entries

    def info(self) -> dict:
        return {
            "_id": hashlib.sha1(self.repo_id.encode()).hexdigest()[:24],
            "id": self.repo_id,
            "author": self.repo_id.split("/")[0],
            "sha": self.commit,
            "lastModified": "2026-01-01T00:00:00.000Z",
            "private": False,
            "gated": False,
            "disabled": False,
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "siblings": [{"rfilename": p} for p in sorted(self.files)],
        }


class HubServer:
    """Threaded hub stand-in on a free port of 127.0.0.1; a context manager that starts and stops it."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = {repo_id: Repo(repo_id, files) for repo_id, files in repos.items()}
        self.blobs = {
            hashlib.sha256(data).hexdigest(): data for repo in self.repos.values() for data in repo.files.values()
        }
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cdn_url = f"http://localhost:{self.port}/cdn"
        self._thread = None

    def commit(self, repo_id: str) -> str:
        return self.repos[repo_id].commit

    def start(self):
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _handler_for(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            self._route(send_body=True)

        def do_HEAD(self):
            self._route(send_body=False)

        def _route(self, send_body: bool):
            url = urlsplit(self.path)
            hub.requests.append((self.command, url.path))
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if parts[:2] == ["api", "datasets"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                self._api(f"{parts[2]}/{parts[3]}", parts[4], parts[5], "/".join(parts[6:]), parse_qs(url.query))
            elif parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
                self._resolve(f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:]), send_body)
            elif parts == ["api", "agent-harnesses"]:
                body = json.dumps({"standardEnvVars": [], "harnesses": {}}).encode()
                self._reply(200, {"Content-Type": "application/json"}, body, send_body)
            elif parts[:1] == ["cdn"] and len(parts) == 2 and parts[1] in hub.blobs:
                data = hub.blobs[parts[1]]
                self._reply(200, {"ETag": f'"{parts[1]}"', "Content-Type": "application/octet-stream"}, data, send_body)
            else:
                self._reply(404, {"X-Error-Message": "Not Found"}, b"Not Found", send_body)

        def _repo_or_error(self, repo_id: str, revision: str, send_body: bool):
            repo = hub.repos.get(repo_id)
            if repo is None:
                headers = {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
                self._reply(401, headers, b'{"error": "Repository not found"}', send_body)
                return None, None
            commit = repo.resolve(revision)
            if commit is None:
                headers = {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id: " + revision}
                self._reply(404, headers, b'{"error": "Invalid rev id"}', send_body)
                return None, None
            return repo, commit

        def _api(self, repo_id, kind, revision, under, query):
            repo, _ = self._repo_or_error(repo_id, revision, True)
            if repo is None:
                return
            if kind == "revision":
                body = repo.info()
            else:
                recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
                body = repo.tree(under, recursive)
            self._reply(200, {"Content-Type": "application/json"}, json.dumps(body).encode(), True)

        def _resolve(self, repo_id, revision, path, send_body):
            repo, commit = self._repo_or_error(repo_id, revision, send_body)
            if repo is None:
                return
            if path not in repo.files:
                headers = {
                    "X-Error-Code": "EntryNotFound",
                    "X-Error-Message": "Entry not found",
                    "X-Repo-Commit": commit,
                }
                self._reply(404, headers, b'{"error": "Entry not found"}', send_body)
                return
            data = repo.files[path]
            headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_sha1(data)}"', "Accept-Ranges": "bytes"}
            if repo.is_lfs(path):
                sha256 = hashlib.sha256(data).hexdigest()
                headers.update(
                    {
                        "Location": f"{hub.cdn_url}/{sha256}",
                        "X-Linked-Etag": f'"{sha256}"',
                        "X-Linked-Size": str(len(data)),
                    }
                )
                self._reply(302, headers, b"", send_body)
            else:
                self._reply(200, {**headers, "Content-Type": "application/octet-stream"}, data, send_body)

        def _reply(self, status: int, headers: dict, body: bytes, send_body: bool):
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

    return Handler
