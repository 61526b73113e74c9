"""Models from a Hugging Face-style hub, into the standard HF cache layout, resumably."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("llmd.download")

DEFAULT_ENDPOINT = "https://huggingface.co"
_CHUNK = 1 << 20
_RETRIES = 5


class DownloadError(Exception):
    """A hub model could not be fetched or verified; the message says why."""


@dataclass(frozen=True)
class HubFile:
    """One file of a repo revision, as the hub's API describes it."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Resolved:
    """What `owner/repo:QUANT` means at one commit: the model's files and its mmproj."""

    repo: str
    commit: str
    model: tuple[HubFile, ...]
    mmproj: HubFile | None


@dataclass
class Progress:
    """Bytes done of bytes total, for status and events."""

    done: int = 0
    total: int = 0
    started: float = 0.0

    def rate(self, now: float) -> float:
        return self.done / (now - self.started) if now > self.started else 0.0


def parse_ref(ref: str) -> tuple[str, str]:
    """`owner/repo:QUANT` (or `owner/repo`) as (repo, quant)."""
    repo, _, quant = ref.partition(":")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo) or ".." in repo:
        raise DownloadError(f"not a hub model name: {ref!r} (expected owner/repo[:QUANT])")
    return repo, quant


def repo_dir(cache: Path, repo: str) -> Path:
    return cache / ("models--" + repo.replace("/", "--"))


def pick(siblings: list[HubFile], quant: str) -> tuple[tuple[HubFile, ...], HubFile | None]:
    """The files llama.cpp would pick for QUANT: the matching GGUF (all shards) and an mmproj."""
    ggufs = [f for f in siblings if f.name.lower().endswith(".gguf")]
    mmproj = sorted((f for f in ggufs if "mmproj" in f.name.lower()), key=lambda f: f.name)
    models = [f for f in ggufs if "mmproj" not in f.name.lower()]
    wanted = quant or "Q4_K_M"
    matching = [f for f in models if wanted.lower() in Path(f.name).name.lower()]
    if not matching and not quant and models:
        matching = models[:1]
    if not matching:
        have = ", ".join(sorted(f.name for f in models)) or "no GGUF files"
        raise DownloadError(f"no {wanted} GGUF in the repo (it has: {have})")
    first = sorted(matching, key=lambda f: f.name)[0]
    shard = re.search(r"-\d{5}-of-(\d{5})\.gguf$", first.name)
    if shard:
        prefix = first.name[: shard.start()]
        matching = [f for f in matching if f.name.startswith(prefix + "-")]
    else:
        matching = [first]
    return tuple(sorted(matching, key=lambda f: f.name)), (mmproj[0] if mmproj else None)


def find_cached(cache: Path, ref: str) -> tuple[str, str] | None:
    """(model path, mmproj path) of a hub model already in the cache at refs/main, else None."""
    repo, quant = parse_ref(ref)
    base = repo_dir(cache, repo)
    try:
        commit = (base / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = base / "snapshots" / commit
    files = [HubFile(str(p.relative_to(snapshot)), 0, "") for p in snapshot.rglob("*.gguf")
             if p.exists()]
    try:
        model, mmproj = pick(files, quant)
    except DownloadError:
        return None
    return str(snapshot / model[0].name), str(snapshot / mmproj.name) if mmproj else ""


def delete_cached(cache: Path, ref: str) -> list[Path]:
    """Remove `ref`'s files from the cache: its snapshot links, the blobs no other link
    uses, and its projector when no other model of the repo is left. Returns what was
    removed; raises DownloadError when `ref` is not in the cache."""
    repo, quant = parse_ref(ref)
    base = repo_dir(cache, repo)
    snapshots = base / "snapshots"
    links = [p for p in snapshots.rglob("*.gguf") if p.is_symlink() or p.is_file()]
    by_snapshot: dict[Path, list[HubFile]] = {}
    for p in links:
        snap = next(parent for parent in p.parents if parent.parent == snapshots)
        by_snapshot.setdefault(snap, []).append(HubFile(str(p.relative_to(snap)), 0, ""))
    doomed: list[Path] = []
    for snap, files in by_snapshot.items():
        try:
            model, mmproj = pick(files, quant)
        except DownloadError:
            continue
        doomed += [snap / f.name for f in model]
        others = [f for f in files if "mmproj" not in f.name.lower() and f not in model]
        if mmproj is not None and not others:
            doomed.append(snap / mmproj.name)
    if not doomed:
        raise DownloadError(f"{ref} is not in the cache")
    targets = {p: p.resolve() for p in doomed}
    removed = []
    for p in doomed:
        p.unlink()
        removed.append(p)
    still = {p.resolve() for p in snapshots.rglob("*") if p.is_symlink()}
    for blob in set(targets.values()) - still:
        if blob.is_file() and blob.parent == base / "blobs":
            blob.unlink()
            removed.append(blob)
    if not any(p for p in snapshots.rglob("*.gguf")):
        shutil.rmtree(base, ignore_errors=True)  # nothing of the repo left: refs and all
    return removed


_QUANT = re.compile(r"(?<![A-Za-z0-9])(I?Q\d_K_[SMLX]L?|I?Q\d_K|IQ\d_[A-Z]+|Q\d_\d|TQ\d_\d|"
                    r"MXFP4|BF16|F16|F32)(?![A-Za-z0-9])", re.IGNORECASE)


def scan_cache(cache: Path) -> dict[str, tuple[str, str]]:
    """Hub models already in the cache, named `owner/repo:QUANT` as llama.cpp names them."""
    found: dict[str, tuple[str, str]] = {}
    try:
        repos = sorted(p for p in cache.iterdir() if p.name.startswith("models--"))
    except OSError:
        return found
    for base in repos:
        parts = base.name.split("--")
        if len(parts) != 3:
            continue
        repo = f"{parts[1]}/{parts[2]}"
        try:
            snapshot = base / "snapshots" / (base / "refs" / "main").read_text().strip()
            names = [str(p.relative_to(snapshot)) for p in snapshot.rglob("*.gguf")]
        except (OSError, ValueError):
            continue
        for name in sorted(names):
            m = _QUANT.search(Path(name).name)
            if m and "mmproj" not in name.lower() and not re.search(r"-0000[2-9]-of-", name):
                ref = f"{repo}:{m.group(1).upper()}"
                cached = find_cached(cache, ref)
                if cached:
                    found.setdefault(ref, cached)
    return found


class Hub:
    """A hub's API and files, fetched with resume and verified by sha256."""

    def __init__(self, client: httpx.AsyncClient | None, endpoint: str, cache: Path,
                 token: str = "") -> None:
        self._client = client
        self._own = client is None
        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self.cache = cache
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._parts: dict[str, list[Path]] = {}  # ref -> the partial files its fetch writes
        self._writing: Counter[Path] = Counter()  # partial files a fetch has open now

    @property
    def client(self) -> httpx.AsyncClient:
        """The hub's HTTP client, made on first use: its TLS context takes ~50 ms to build."""
        if self._client is None:
            import httpx  # imported on first use: ~60 ms of a socket-activated start

            # A stalled hub must not hang a download forever; a slow one may take its time.
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(30, read=120))
        return self._client

    async def aclose(self) -> None:
        """Close the client if this Hub made it."""
        if self._own and self._client is not None:
            await self._client.aclose()
            self._client = None

    def cached(self, ref: str) -> tuple[str, str] | None:
        """(model path, mmproj path) of `ref` if it is already in the cache."""
        return find_cached(self.cache, ref)

    def delete(self, ref: str) -> list[Path]:
        """Remove `ref` from the cache; raises DownloadError when it is not there."""
        return delete_cached(self.cache, ref)

    async def resolve(self, ref: str) -> Resolved:
        """Ask the hub which files `owner/repo:QUANT` is, at the current commit of main."""
        import httpx

        repo, quant = parse_ref(ref)
        url = f"{self.endpoint}/api/models/{repo}/revision/main"
        try:
            response = await self.client.get(url, params={"blobs": "true"},
                                             headers=self._headers)
        except httpx.TransportError as exc:
            raise DownloadError(f"cannot reach the hub at {self.endpoint}: {exc!r}")
        if response.status_code in (401, 403, 404):
            raise DownloadError(f"hub has no model {repo!r} (or it needs a token): "
                                f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise DownloadError(f"hub answered HTTP {response.status_code} for {repo!r}")
        data = response.json()
        siblings = [HubFile(s["rfilename"], int((s.get("lfs") or s).get("size") or 0),
                            (s.get("lfs") or {}).get("sha256", ""))
                    for s in data.get("siblings", [])]
        model, mmproj = pick(siblings, quant)
        return Resolved(repo, data["sha"], model, mmproj)

    async def fetch(self, ref: str, progress: Progress) -> tuple[str, str]:
        """Download what `ref` names (resuming partial files); return (model, mmproj) paths."""
        resolved = await self.resolve(ref)
        files = [*resolved.model, *([resolved.mmproj] if resolved.mmproj else [])]
        progress.total = sum(f.size for f in files)
        progress.started = trio.current_time()
        base = repo_dir(self.cache, resolved.repo)
        snapshot = base / "snapshots" / resolved.commit
        self._parts[ref] = [base / "blobs" / (f.sha256 + ".incomplete") for f in files if f.sha256]
        check_space(base, files)
        for f in files:
            await self._fetch_file(resolved, f, base, snapshot, progress)
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / "main").write_text(resolved.commit)
        mmproj = str(snapshot / resolved.mmproj.name) if resolved.mmproj else ""
        return str(snapshot / resolved.model[0].name), mmproj

    def discard_partial(self, ref: str) -> list[Path]:
        """Remove the partial files `ref`'s fetch left (not those another fetch is writing).

        Only for a download cancelled on purpose: a stop of llmd keeps them to resume. Returns
        the files removed; raises nothing (a partial already gone is no error).
        """
        removed = []
        for part in self._parts.pop(ref, []):
            if self._writing[part]:
                continue  # another model names the same file and is still downloading it
            try:
                part.unlink()
            except OSError:
                continue
            removed.append(part)
        return removed

    async def _fetch_file(self, resolved: Resolved, f: HubFile, base: Path, snapshot: Path,
                          progress: Progress) -> None:
        import httpx

        if not f.sha256:
            raise DownloadError(f"hub gives no sha256 for {f.name}; refusing an unverifiable file")
        blobs = base / "blobs"
        blob = blobs / f.sha256
        link = snapshot / f.name
        if not blob.exists():
            blobs.mkdir(parents=True, exist_ok=True)
            part = blobs / (f.sha256 + ".incomplete")
            url = f"{self.endpoint}/{resolved.repo}/resolve/{resolved.commit}/{f.name}"
            before = progress.done
            self._writing[part] += 1
            try:
                for attempt in range(_RETRIES):
                    try:
                        await self._stream(url, part, f, progress, before)
                        break
                    except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
                        if attempt == _RETRIES - 1:
                            raise DownloadError(f"download of {f.name} kept failing: {exc!r}")
                        log.info("%s: connection lost (%r); resuming", f.name, exc)
                        await trio.sleep(0.2 * 2 ** attempt)
                await trio.to_thread.run_sync(_verify, part, f)
                os.replace(part, blob)  # visible only once whole and verified
            finally:
                self._writing[part] -= 1
        else:
            progress.done += f.size
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, link.parent))

    async def _stream(self, url: str, part: Path, f: HubFile, progress: Progress,
                      before: int) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have > f.size:
            have = 0  # longer than the file can be: not a prefix of it, start over
        headers = {**self._headers, **({"range": f"bytes={have}-"} if have else {})}
        async with self.client.stream("GET", url, headers=headers,
                                      follow_redirects=True) as response:
            if have and response.status_code == 416 and have == f.size:
                return
            if response.status_code == 200:
                have = 0  # no range asked, or the server ignored it: from the start
            elif response.status_code != 206 or not have:
                raise DownloadError(f"{f.name}: HTTP {response.status_code}")
            progress.done = before + have
            try:
                async with await trio.open_file(part, "r+b" if have else "wb") as out:
                    await out.seek(have)
                    await out.truncate()
                    async for chunk in response.aiter_bytes():
                        await out.write(chunk)
                        progress.done += len(chunk)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    part.unlink(missing_ok=True)
                    raise DownloadError(f"{f.name}: disk full in {part.parent}; "
                                        "partial file removed") from None
                raise


def check_space(base: Path, files: list[HubFile]) -> None:
    """Refuse a download that can't fit on the cache's filesystem before it starts."""
    blobs = base / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    needed = 0
    for f in files:
        if (blobs / f.sha256).exists():
            continue
        part = blobs / (f.sha256 + ".incomplete")
        needed += f.size - (part.stat().st_size if part.exists() else 0)
    st = os.statvfs(blobs)
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise DownloadError(f"disk full: {needed >> 20} MiB needed in {blobs}, "
                            f"{free >> 20} MiB free")


def _verify(part: Path, f: HubFile) -> None:
    size = part.stat().st_size
    if size != f.size:
        part.unlink()
        raise DownloadError(f"{f.name}: size {size} != {f.size} from the hub; partial file removed")
    digest = hashlib.sha256()
    with open(part, "rb") as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != f.sha256:
        part.unlink()
        raise DownloadError(f"{f.name}: sha256 mismatch (got {digest.hexdigest()[:12]}…, "
                            f"hub says {f.sha256[:12]}…); partial file removed")

