"""``pybuild tag``, ``pybuild inspect``, ``pybuild history``: local images, in Docker's words.

- ``tag SOURCE TARGET``: TARGET names the image SOURCE names (``docker tag``).
- ``inspect REF...``: a JSON array, one object per image: ``Name``, ``Digest``,
  ``MediaType``, ``Manifest`` and ``Config`` (the documents as stored, the config's
  ``history`` included) and ``Index`` when the name is an image index (``Manifest`` and
  ``Config`` are then ``--platform``'s).
- ``history REF``: ``docker history``'s table, newest step first (``--format 'table
  {{.ID}}\t{{.CreatedBy}}'`` for other columns, aligned as Docker aligns them).

``--format`` takes the part of Go templates these outputs need (:mod:`.templates`), and
prints values as Docker does; ``inspect`` objects carry ``docker image inspect``'s names
too (``Id``, ``RepoTags``, ``Os``, ``RootFS``...; ``.Config.Env`` for the config's
``config``), so ``docker inspect -f`` templates print the same lines.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import click

from cas import BlobUnknown, Digest
from cas.units import human_duration

from ..oci import Index, Manifest
from .cli import _ref, _run, _storage_option
from .image_store import ImageNotFound, ImageStore, select_platform
from .refs import familiar as _familiar
from .templates import FIELD, Fallback, Nil, render

__all__ = ["history", "images", "inspect", "tag"]

# What ``.Config.X`` is in ``docker image inspect`` when the OCI config's ``config`` lacks
# X (or holds null): the zero value of Docker's field (its ``DockerOCIImageConfig``).
_DOCKER_CONFIG_ZERO: dict[str, Any] = {
    "User": "", "ExposedPorts": Nil("map[]"), "Env": Nil("[]"), "Entrypoint": Nil("[]"),
    "Cmd": Nil("[]"), "Volumes": Nil("map[]"), "WorkingDir": "", "Labels": Nil("map[]"),
    "StopSignal": "", "ArgsEscaped": False, "Healthcheck": Nil("<nil>"), "OnBuild": Nil("[]"),
    "Shell": Nil("[]"),
}


def _docker_config(image: dict[str, Any]) -> Fallback:
    """``.Config.Env``, ``.Config.Cmd``...: Docker's names for the OCI config's ``config``
    (``.Config`` is the whole OCI config here, whose own keys are lower-case)."""
    inner = (image.get("Config") or {}).get("config") or {}

    def fallback(path: tuple[str, ...], name: str) -> Any:
        if path != ("Config",) or (name not in _DOCKER_CONFIG_ZERO and name not in inner):
            raise KeyError(name)
        value = inner.get(name)
        return _DOCKER_CONFIG_ZERO.get(name) if value is None else value

    return fallback


async def _lookup(images: ImageStore, text: str) -> tuple[str, Digest]:
    """The local image named ``text``, else the one whose ID it is (as Docker: the name
    first)."""
    ref = str(_ref(text))
    found = await images.resolve(ref)
    if found is None:
        by_id = await images.by_id(text)
        if len({image.digest for image in by_id}) > 1:
            raise ImageNotFound(f"{text} is the start of several images' IDs; give more of it "
                                "(pybuild images --no-trunc)")
        if not by_id:
            raise ImageNotFound(f"no local image {text} (see pybuild images; pybuild pull {text})")
        found = by_id[0]
        ref = found.ref
    return ref, found.digest


@click.command()
@click.argument("source")
@click.argument("target")
@_storage_option
def tag(source: str, target: str, storage: Path | None) -> None:
    """Name the local image SOURCE also TARGET."""
    parsed = _ref(target)
    if parsed.digest is not None:
        # as docker tag: a name by digest is the digest of the content, not a name to give
        raise click.BadParameter(f"{target}: refusing to create a tag with a digest "
                                 "reference; give NAME[:TAG]", param_hint="TARGET")
    dst = str(parsed)

    async def run() -> None:
        async with await ImageStore.open(storage) as images:
            _, digest = await _lookup(images, source)
            media_type, _, raw = await images.manifest(digest)
            await images.put(dst, raw, media_type)

    _run(run())


async def _describe(images: ImageStore, text: str, platform: str | None) -> dict[str, Any]:
    ref, digest = await _lookup(images, text)
    media_type, obj, raw = await images.manifest(digest)
    out: dict[str, Any] = {"Name": ref, "Digest": str(digest), "MediaType": media_type}
    if isinstance(obj, Index):
        out["Index"] = json.loads(raw)
        entry = select_platform(obj, platform)
        media_type, obj, raw = await images.manifest(entry.digest)
        out["Manifest"] = json.loads(raw)
    else:
        out["Manifest"] = json.loads(raw)
    if not isinstance(obj, Manifest):
        raise ImageNotFound(f"{text}: nested indexes are not supported")
    config = json.loads(await images.store.read_bytes(obj.config.digest))
    out["Config"] = config
    # docker image inspect's own names for what the documents hold
    tags = [i.ref for i in await images.list() if i.digest == digest] or [ref]
    rootfs = config.get("rootfs") or {}
    out.update({"Id": str(obj.config.digest), "RepoTags": [_familiar(t) for t in tags],
                "Created": config.get("created", ""), "Author": config.get("author", ""),
                "Architecture": config.get("architecture", ""), "Os": config.get("os", ""),
                **({"Variant": config["variant"]} if config.get("variant") else {}),
                "RootFS": {"Type": rootfs.get("type", "layers"),
                           "Layers": rootfs.get("diff_ids") or []}})
    return out


@click.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--format", "-f", "template", default=None,
              help="Go-template subset ({{.Config.Env}}, {{.Id}}, {{json .Manifest}}) or json.")
@click.option("--platform", default=None, help="os/arch[/variant] to pick from an index.")
@click.option("--type", "kind", type=click.Choice(["image"]), default="image",
              help="As docker inspect --type: local images are all there is to inspect.")
@click.option("--size", "-s", is_flag=True,
              help="Accepted for docker's sake (it sizes containers, not images).")
@_storage_option
def inspect(refs: tuple[str, ...], template: str | None, platform: str | None, kind: str,
            size: bool, storage: Path | None) -> None:
    """Print local images' manifests and configs (history included) as JSON."""

    async def run() -> tuple[list[dict[str, Any]], list[str]]:
        found, missing = [], []
        async with await ImageStore.open(storage, reading=True) as images:
            for r in refs:
                try:
                    found.append(await _describe(images, r, platform))
                except ImageNotFound as exc:
                    missing.append(str(exc))
        return found, missing

    # As docker inspect: the images found are printed (``[]`` if none), then an error
    # for each one that is not, and the exit status is 1.
    found, missing = _run(run())
    if template is None:
        click.echo(json.dumps(found, indent=4))
    else:
        for one in found:
            click.echo(render(template, one, _docker_config(one)))
    if missing:
        raise click.ClickException("; ".join(missing))


def human_size(size: float) -> str:
    """Docker's ``units.HumanSizeWithPrecision(size, 3)`` (decimal units)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.3g}{units[i]}"


def _parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


# docker history's default table, and the headers of its fields
_HISTORY_TABLE = "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
_HEADERS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
            "CreatedBy": "CREATED BY", "Size": "SIZE", "Comment": "COMMENT"}


def render_rows(template: str, rows: list[dict[str, str]], headers: dict[str, str] = _HEADERS,
                default: str = _HISTORY_TABLE) -> list[str]:
    """Rows through ``template``; a ``table`` template gets a header line (``headers``
    names the fields' columns) and its tab-separated cells aligned as Docker's tabwriter
    aligns them (each column as wide as its widest cell plus 3, at least 10; the last
    cell as it is). A bare ``table`` is ``default``; ``json`` is one object per line."""
    # as Docker's formatter: a typed \t or \n is a tab or a newline
    template = template.replace("\\t", "\t").replace("\\n", "\n")
    if not template.startswith("table"):
        return [render(template, row) for row in rows]
    body = template[len("table"):].strip() or default[len("table "):]
    header = FIELD.sub(lambda m: headers.get(m.group(2), m.group(2).upper()), body)
    lines = [header.split("\t")] + [render(body, row).split("\t") for row in rows]
    columns = max(len(cells) for cells in lines)
    widths = [max([len(cells[i]) + 3 for cells in lines if i < len(cells) - 1] + [10])
              for i in range(columns - 1)]
    return ["".join(cell.ljust(widths[i]) if i < len(cells) - 1 else cell
                    for i, cell in enumerate(cells)) for cells in lines]


def history_rows(manifest: dict[str, Any], config: dict[str, Any], image_id: str,
                 now: float, human: bool, trunc: bool) -> list[dict[str, str]]:
    """One row per history entry, newest first, with ``docker history``'s fields."""
    layers = [d.get("size", 0) for d in manifest.get("layers") or ()]
    rows = []
    entries = list(config.get("history") or ())
    sizes = []
    for h in entries:  # each non-empty entry made the next layer
        sizes.append(0 if h.get("empty_layer") or not layers else layers.pop(0))
    for i, (h, size) in enumerate(reversed(list(zip(entries, sizes)))):
        created = _parse_time(h.get("created"))
        if created is None:
            since = at = "N/A"
        else:
            at = created.astimezone().isoformat(timespec="seconds").replace("+00:00", "Z")
            # as docker's CreatedSince: the RFC 3339 time when not --human
            since = human_duration(now - created.timestamp()) + " ago" if human else at
        by = (h.get("created_by") or "").replace("\t", " ")
        if trunc and len(by) > 45:
            by = by[:44] + "…"
        rows.append({"ID": image_id if i == 0 else "<missing>", "CreatedSince": since,
                     "CreatedAt": at, "CreatedBy": by,
                     "Size": human_size(size) if human else str(size),
                     "Comment": h.get("comment") or ""})
    return rows


@click.command()
@click.argument("ref")
@click.option("--human", "-H", type=click.BOOL, default=True, show_default=True,
              help="Sizes and dates in human-readable form.")
@click.option("--no-trunc", is_flag=True, help="Do not shorten CREATED BY.")
@click.option("--quiet", "-q", is_flag=True, help="Only the image ID.")
@click.option("--format", "template", default=None,
              help="Go-template subset over ID, CreatedSince, CreatedAt, CreatedBy, Size, "
                   "Comment ({{.CreatedBy}}; 'table ...' for aligned columns), or json.")
@click.option("--platform", default=None, help="os/arch[/variant] to pick from an index.")
@_storage_option
def history(ref: str, human: bool, no_trunc: bool, quiet: bool, template: str | None,
            platform: str | None, storage: Path | None) -> None:
    """Show how local image REF was made, newest step first (as docker history).

    SIZE is the size of the step's layer blob as stored (compressed)."""

    async def run() -> dict[str, Any]:
        async with await ImageStore.open(storage, reading=True) as images:
            return await _describe(images, ref, platform)

    image = _run(run())
    config_digest = Digest.parse(image["Manifest"]["config"]["digest"])
    image_id = config_digest.encoded[:12] if not no_trunc else str(config_digest)
    rows = history_rows(image["Manifest"], image["Config"], image_id, time.time(), human,
                        not no_trunc)
    if quiet:
        for row in rows:
            click.echo(row["ID"])
        return
    for line in render_rows(template or _HISTORY_TABLE, rows):
        click.echo(line)


# pybuild images' table (docker images' fields, the digest standing for IMAGE ID as in
# Docker's containerd image store), and its fields' column names
IMAGES_TABLE = "table {{.Reference}}\t{{.ID}}\t{{.CreatedSince}}"
IMAGES_HEADERS = {"Reference": "REFERENCE", "Repository": "REPOSITORY", "Tag": "TAG",
                  "ID": "DIGEST", "Digest": "DIGEST", "CreatedSince": "CREATED",
                  "CreatedAt": "CREATED AT"}


async def config_created(images: ImageStore, image: Any) -> float:
    """When the local image (:class:`.image_store.LocalImage`) says it was made, as
    ``docker images`` shows it: its config's ``created`` (for an index, this machine's
    platform's); when the image holds none, when it was stored here."""
    try:
        _, obj, _ = await images.manifest(image.digest)
        if isinstance(obj, Index):
            _, obj, _ = await images.manifest(select_platform(obj, None).digest)
        if isinstance(obj, Manifest):
            config = json.loads(await images.store.read_bytes(obj.config.digest))
            created = _parse_time(config.get("created")) if isinstance(config, dict) else None
            if created is not None:
                return created.timestamp()
    except (BlobUnknown, ImageNotFound, ValueError):
        pass  # an index without this platform's image, a config that is not JSON
    return float(image.created)


def image_rows(found: list[Any], now: float, trunc: bool,
               created: dict[Digest, float] | None = None) -> list[dict[str, str]]:
    """One row per local image name (:class:`.image_store.LocalImage`), with
    ``docker images``' fields: ``Repository``, ``Tag`` (``<none>`` for a name by digest
    alone), ``ID`` (the digest's first 12 hex digits; whole without ``trunc``),
    ``Digest``, ``CreatedSince``, ``CreatedAt`` (from ``created``, by image digest, as
    :func:`config_created` gives it; else when the image was stored), and ``Reference``
    (the whole name)."""
    rows = []
    for image in found:
        ref = _ref(image.ref)
        when = (created or {}).get(image.digest, image.created)
        at = datetime.datetime.fromtimestamp(when).astimezone()
        rows.append({
            "Reference": _familiar(image.ref), "Repository": _familiar(ref.repository),
            "Tag": ref.tag or "<none>",
            "ID": image.digest.encoded[:12] if trunc else str(image.digest),
            "Digest": str(image.digest),
            # as go-units' HumanDuration: "56 years ago", and a time to come is
            # "Less than a second ago"
            "CreatedSince": f"{human_duration(now - when)} ago",
            "CreatedAt": at.strftime("%Y-%m-%d %H:%M:%S %z %Z"),
        })
    return rows


def matches(ref: str, pattern: str) -> bool:
    """Whether local image name ``ref`` is one ``docker images PATTERN`` lists:
    ``REPOSITORY`` (any tag) or ``REPOSITORY:TAG``, the repository as typed or normalised
    (``app``, ``docker.io/library/app``), ``*`` matching within a path component."""
    import fnmatch

    parsed = _ref(ref)
    tagged = ":" in pattern.rsplit("/", 1)[-1]
    names = {parsed.repository, _familiar(parsed.repository)}
    if tagged:
        names = {f"{n}:{parsed.tag}" for n in names if parsed.tag}
    return any(fnmatch.fnmatchcase(n, pattern) and n.count("/") == pattern.count("/")
               for n in names)


def _image_filters(values: tuple[str, ...]) -> tuple[list[str], bool]:
    """``--filter`` values as docker images takes them: ``(reference patterns, dangling)``."""
    references: list[str] = []
    dangling = False
    for value in values:
        key, sep, arg = value.partition("=")
        if key == "reference" and sep and arg:
            references.append(arg)
        elif key == "dangling" and arg.lower() in ("true", "1", "false", "0"):
            dangling = arg.lower() in ("true", "1")
        else:
            raise click.BadParameter(
                f"invalid filter {value!r}: pybuild images takes reference=PATTERN and "
                "dangling=true|false", param_hint="'--filter'")
    return references, dangling


@click.command()
@click.argument("pattern", required=False, metavar="[REPOSITORY[:TAG]]")
@click.option("--quiet", "-q", is_flag=True, help="Only the digests (IDs).")
@click.option("--no-trunc", is_flag=True, help="Whole digests.")
@click.option("--format", "template", default=None,
              help="Go-template subset over Repository, Tag, ID, Digest, CreatedSince, "
                   "CreatedAt, Reference ('table ...' for aligned columns), or json.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array instead of a table.")
@click.option("--filter", "-f", "filters", multiple=True, metavar="KEY=VALUE",
              help="As docker images: reference=PATTERN (repeatable: any of them), "
                   "dangling=true|false.")
@click.option("--all", "-a", "show_all", is_flag=True,
              help="Accepted for docker's sake: there are no intermediate images to hide.")
@click.option("--digests", is_flag=True,
              help="Accepted for docker's sake: the table shows digests already.")
@_storage_option
def images(pattern: str | None, quiet: bool, no_trunc: bool, template: str | None,
           as_json: bool, filters: tuple[str, ...], show_all: bool, digests: bool,
           storage: Path | None) -> None:
    """List local images."""
    references, dangling = _image_filters(filters)

    async def run() -> tuple[list[Any], dict[Digest, float]]:
        async with await ImageStore.open(storage, reading=True) as store:
            listed = await store.list()
            return listed, {i.digest: await config_created(store, i) for i in listed}

    # every local image has a name: none dangles
    found, created = ([], {}) if dangling else _run(run())
    if pattern is not None:
        found = [i for i in found if matches(i.ref, pattern)]
    if references:
        found = [i for i in found if any(matches(i.ref, r) for r in references)]
    if as_json:
        click.echo(json.dumps([{"ref": i.ref, "digest": str(i.digest), "mediaType": i.media_type,
                                "size": i.size, "created": i.created} for i in found], indent=2))
        return
    rows = image_rows(found, time.time(), trunc=not no_trunc, created=created)
    if quiet:  # as docker images -q: one ID per name (an image named twice, twice)
        for row in rows:
            click.echo(row["ID"])
        return
    # Aligned as Docker's tables: each column as wide as its widest cell plus 3 (at least
    # 10), the last one as it is; CREATED as docker images says it ("2 hours ago").
    for line in render_rows(template or IMAGES_TABLE, rows, IMAGES_HEADERS, IMAGES_TABLE):
        click.echo(line)
