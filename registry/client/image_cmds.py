"""``pybuild tag``, ``pybuild inspect``, ``pybuild history``: local images, in Docker's words.

- ``tag SOURCE TARGET``: TARGET names the image SOURCE names (``docker tag``).
- ``inspect REF...``: a JSON array, one object per image: ``Name``, ``Digest``,
  ``MediaType``, ``Manifest`` and ``Config`` (the documents as stored, the config's
  ``history`` included) and ``Index`` when the name is an image index (``Manifest`` and
  ``Config`` are then ``--platform``'s).
- ``history REF``: ``docker history``'s table, newest step first (``--format 'table
  {{.ID}}\t{{.CreatedBy}}'`` for other columns, aligned as Docker aligns them).

``--format`` takes the part of Go templates these outputs need: ``{{.Field.Sub}}`` (a
string as it is, anything else as JSON), ``{{json .Field}}``, ``{{json .}}``, text between;
``--format json`` is ``{{json .}}`` (as in newer Docker).
"""

from __future__ import annotations

import datetime
import json
import re
import time
from pathlib import Path
from typing import Any

import click

from cas import Digest
from cas.units import human_duration

from ..oci import Index, Manifest
from .cli import _ref, _run, _storage_option
from .image_store import ImageNotFound, ImageStore, select_platform

__all__ = ["history", "inspect", "render", "tag"]

_FIELD = re.compile(r"\{\{\s*(json\s+)?\.([A-Za-z0-9_.]*)\s*\}\}")


def render(template: str, obj: Any) -> str:
    """``obj`` through the Go-template subset in the module docstring."""
    if template == "json":
        template = "{{json .}}"

    def field(m: re.Match[str]) -> str:
        value = obj
        for name in filter(None, m.group(2).split(".")):
            if not isinstance(value, dict) or name not in value:
                raise click.BadParameter(f"{m.group(0)}: no field {name!r} (fields: "
                                         f"{', '.join(value) if isinstance(value, dict) else 'none'})",
                                         param_hint="--format")
            value = value[name]
        if m.group(1) or not isinstance(value, str):
            return json.dumps(value)
        return value

    out = _FIELD.sub(field, template)
    if "{{" in out:
        raise click.BadParameter(f"{template!r}: only {{{{.Field}}}}, {{{{json .Field}}}} and "
                                 "{{json .}} are understood", param_hint="--format")
    return out


async def _lookup(images: ImageStore, text: str) -> tuple[str, Digest]:
    ref = str(_ref(text))
    found = await images.resolve(ref)
    if found is None:
        raise ImageNotFound(f"no local image {text} (see pybuild images; pybuild pull {text})")
    return ref, found.digest


@click.command()
@click.argument("source")
@click.argument("target")
@_storage_option
def tag(source: str, target: str, storage: Path | None) -> None:
    """Name the local image SOURCE also TARGET."""
    dst = str(_ref(target))

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
    out["Config"] = json.loads(await images.store.read_bytes(obj.config.digest))
    return out


@click.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--format", "-f", "template", default=None,
              help="Go-template subset ({{.Config.config.Env}}, {{json .Manifest}}) or json.")
@click.option("--platform", default=None, help="os/arch[/variant] to pick from an index.")
@_storage_option
def inspect(refs: tuple[str, ...], template: str | None, platform: str | None,
            storage: Path | None) -> None:
    """Print local images' manifests and configs (history included) as JSON."""

    async def run() -> list[dict[str, Any]]:
        async with await ImageStore.open(storage) as images:
            return [await _describe(images, r, platform) for r in refs]

    found = _run(run())
    if template is None:
        click.echo(json.dumps(found, indent=4))
        return
    for one in found:
        click.echo(render(template, one))


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


def render_rows(template: str, rows: list[dict[str, str]]) -> list[str]:
    """Rows through ``template``; a ``table`` template gets a header line and its
    tab-separated cells aligned as Docker's tabwriter aligns them (each column as wide as
    its widest cell plus 3, at least 10; the last cell as it is)."""
    # as Docker's formatter: a typed \t or \n is a tab or a newline
    template = template.replace("\\t", "\t").replace("\\n", "\n")
    if not template.startswith("table"):
        return [render(template, row) for row in rows]
    body = template[len("table"):].strip() or _HISTORY_TABLE[len("table "):]
    header = _FIELD.sub(lambda m: _HEADERS.get(m.group(2), m.group(2).upper()), body)
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
        async with await ImageStore.open(storage) as images:
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
