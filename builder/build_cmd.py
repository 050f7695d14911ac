"""``pybuild build``: docker build's words over :func:`builder.build.run_build`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from cas.location import default_storage_dir

from .build import BuildOptions, run_build, target_platforms
from .context import ContextError
from .dockerfile.errors import DockerfileError
from .fastpath import Recorder, progress_events
from .layers.errors import LayerError
from .outputs import ExportError, Output, OutputError, parse_output
from .progress import Progress
from .publish import PublishError
from .sandbox.userns import become_root
from .steps.common import BuildError

__all__ = ["build", "finished"]

# True once a build has finished and closed everything: ``python -m builder`` then exits
# without the interpreter's teardown (builder/__main__.py).
finished = False


def _kv(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        k, eq, val = v.partition("=")
        if not k:
            raise click.BadParameter(f"{v!r}: expected KEY=VALUE", param_hint=what)
        out[k] = val if eq else ""
    return out


def _build_args(values: tuple[str, ...]) -> dict[str, str]:
    """``--build-arg K=V``; a bare ``K`` takes $K, and is left out when $K is unset (so the
    Dockerfile's default stays), as docker build does."""
    out = {}
    for v in values:
        k, eq, val = v.partition("=")
        if not k:
            raise click.BadParameter(f"{v!r}: expected KEY=VALUE", param_hint="--build-arg")
        if eq:
            out[k] = val
        elif (env := os.environ.get(k)) is not None:
            out[k] = env
    return out


def _secrets(values: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    for v in values:
        fields = dict(f.partition("=")[::2] for f in v.split(","))
        sid, src = fields.get("id"), fields.get("src") or fields.get("source")
        if not sid or not src:
            raise click.BadParameter(f"{v!r}: use id=NAME,src=FILE", param_hint="--secret")
        if not Path(src).is_file():
            raise click.BadParameter(f"{src}: no such file", param_hint="--secret")
        out[sid] = Path(src)
    return out


def _ssh(values: tuple[str, ...]) -> dict[str, Path]:
    """``--ssh default`` ($SSH_AUTH_SOCK) or ``--ssh ID=SOCKET`` -> id -> agent socket."""
    out = {}
    for v in values:
        sid, eq, src = v.partition("=")
        if not sid:
            raise click.BadParameter(f"{v!r}: use default[=SOCKET] or ID=SOCKET",
                                     param_hint="--ssh")
        if not eq:
            src = os.environ.get("SSH_AUTH_SOCK", "")
            if not src:
                raise click.BadParameter(f"{v!r}: SSH_AUTH_SOCK is not set; start an agent "
                                         f"(ssh-agent) or give its socket: {sid}=SOCKET",
                                         param_hint="--ssh")
        try:
            is_socket = stat.S_ISSOCK(os.stat(src).st_mode)
        except OSError:
            raise click.BadParameter(f"{src}: no such agent socket", param_hint="--ssh") from None
        if not is_socket:
            raise click.BadParameter(f"{src} is not a socket: give an SSH agent's socket "
                                     "(key files are not supported)", param_hint="--ssh")
        out[sid] = Path(src)
    return out


def _outputs(values: tuple[str, ...], load: bool, tags: tuple[str, ...]) -> tuple[Output, ...]:
    """``--output`` values (and ``--load``), checked before anything is built."""
    try:
        outs = [parse_output(o) for o in values if o != ""]  # buildx skips empty ones
    except OutputError as exc:
        raise click.BadParameter(str(exc), param_hint="--output") from exc
    if load and not any(o.loads for o in outs):
        outs.append(Output("docker"))
    to_stdout = [o for o in outs if o.stdout]
    if len(to_stdout) > 1:
        raise click.BadParameter("only one output can go to stdout (dest=-)",
                                 param_hint="--output")
    if to_stdout and sys.stdout.isatty():
        raise click.BadParameter(f"refusing to write type={to_stdout[0].type} to the terminal: "
                                 "redirect stdout (> FILE) or give dest=FILE",
                                 param_hint="--output")
    for o in outs:
        archive = o.dest if o.type in ("tar", "oci", "docker") and o.tar else None
        if archive is not None and archive.is_dir():
            raise click.BadParameter(f"dest={archive} is a directory: give a file name for "
                                     "the archive (or tar=false to write a layout directory)",
                                     param_hint="--output")
        if archive is not None and not archive.absolute().parent.is_dir():
            raise click.BadParameter(f"dest={archive}: {archive.absolute().parent} is not a "
                                     "directory; create it first", param_hint="--output")
        if o.push and not (tags or o.names):
            raise click.BadParameter(f"type={o.type} pushes the image: name it with -t NAME "
                                     "or name=NAME", param_hint="--output")
    if any(o.loads for o in outs):
        from .engine import EngineError, engine_address

        try:
            engine_address()
        except EngineError as exc:
            raise click.BadParameter(str(exc), param_hint="--load") from exc
    return tuple(outs)


_ENTITLEMENTS = ("security.insecure",)
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


class Interrupted(Exception):
    """The build was stopped by a signal (SIGINT: Ctrl-C, SIGTERM: a CI runner)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}: the build stopped "
                         "and its running steps were killed")


def _run_until_signal(build: Coroutine[Any, Any, T]) -> T:
    """Run ``build``; SIGINT or SIGTERM cancels it -- every running step is killed and
    cleaned up on the way out (``builder.steps.run``) -- and raises :class:`Interrupted`."""

    received: list[int] = []

    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop(signum: int) -> None:
            if not received:
                received.append(signum)
                task.cancel()

        handled = []
        for signum in _STOP_SIGNALS:
            try:
                loop.add_signal_handler(signum, stop, signum)
            except (ValueError, RuntimeError):  # not the main thread: leave signals be
                continue
            handled.append(signum)
        try:
            return await build
        except BaseException:
            if received:
                raise Interrupted(received[0]) from None
            raise
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:  # before the event loop took SIGINT over
        raise Interrupted(signal.SIGINT) from None
    except asyncio.CancelledError:  # the signal came as the build returned
        if received:
            raise Interrupted(received[0]) from None
        raise


@click.command("build")
@click.argument("context", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-f", "--file", "dockerfile", type=click.Path(dir_okay=False, path_type=Path),
              help="The Dockerfile [default: CONTEXT/Dockerfile].")
@click.option("-t", "--tag", "tags", multiple=True, help="Name the image (repeatable).")
@click.option("--build-arg", "build_args", multiple=True, help="KEY=VALUE (repeatable).")
@click.option("--target", help="Build this stage (and what it needs) only.")
@click.option("--label", "labels", multiple=True, help="KEY=VALUE label (repeatable).")
@click.option("--no-cache", is_flag=True, help="Run every step; do not reuse cached layers.")
@click.option("--explain", is_flag=True, help="Say why each step missed the cache.")
@click.option("--network", type=click.Choice(["default", "none", "host"]), default="default",
              help="RUN steps' network unless RUN --network says otherwise.")
@click.option("--push", is_flag=True, help="Push the -t names to their registries.")
@click.option("--pull", is_flag=True,
              help="Always ask the registry for a newer version of each base image.")
@click.option("-o", "--output", "outputs", multiple=True,
              help="DIR | - | type=local,dest=DIR | type=tar[,dest=FILE] | "
                   "type=oci[,dest=FILE][,tar=false] | type=docker[,dest=FILE][,tar=false] | "
                   "type=image[,push=true] | type=registry (repeatable; as buildx).")
@click.option("--load", is_flag=True,
              help="Load the image into the Docker engine ($DOCKER_HOST); -o type=docker.")
@click.option("--secret", "secrets", multiple=True, help="id=NAME,src=FILE (repeatable).")
@click.option("--progress", "progress_mode", type=click.Choice(["auto", "plain", "json", "quiet"]),
              default="auto")
@click.option("--iidfile", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the image digest to this file.")
@click.option("--metadata-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write build metadata (JSON) to this file.")
@click.option("--compression", type=click.Choice(["gzip", "zstd"]), default="gzip")
@click.option("--source-date-epoch", type=int, default=None,
              help="Timestamps in the image [default: $SOURCE_DATE_EPOCH].")
@click.option("--storage", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Storage directory [default: $PYBUILD_STORAGE or ~/.local/share/pybuild].")
@click.option("--platform", default=None,
              help="Target platform(s) os/arch[/variant], comma-separated (two or more: an "
                   "image index) [default: this host's].")
@click.option("--differ", type=click.Choice(["auto", "overlay", "snapshot"]), default="auto",
              help="How RUN changes are captured: overlayfs, a snapshot diff, or overlayfs "
                   "where the kernel allows it (auto).")
@click.option("--ssh", "ssh", multiple=True,
              help="default[=SOCKET] or ID=SOCKET: an SSH agent for RUN --mount=type=ssh.")
@click.option("--allow", "allow", multiple=True, type=click.Choice(_ENTITLEMENTS),
              help="Grant an entitlement (security.insecure for RUN --security=insecure).")
def build(context: Path, dockerfile: Path | None, tags: tuple[str, ...],
          build_args: tuple[str, ...], target: str | None, labels: tuple[str, ...],
          no_cache: bool, explain: bool, network: str, push: bool, pull: bool,
          outputs: tuple[str, ...],
          secrets: tuple[str, ...], progress_mode: str, iidfile: Path | None,
          metadata_file: Path | None, compression: str, source_date_epoch: int | None,
          storage: Path | None, platform: str | None, differ: str, ssh: tuple[str, ...],
          allow: tuple[str, ...], load: bool) -> None:
    """Build an image from a Dockerfile and a context directory."""
    outs = _outputs(outputs, load, tags)
    if push and not tags:
        raise click.UsageError("--push needs at least one -t NAME to push to")
    if platform is not None:
        try:
            target_platforms(platform)
        except BuildError as exc:
            raise click.BadParameter(str(exc).partition(": ")[2], param_hint="--platform") \
                from exc
    become_root()  # as a non-root user: root of a user namespace (docs/rootless.md)
    opts = BuildOptions(
        context=context, storage=storage or default_storage_dir(), dockerfile=dockerfile,
        tags=tags, build_args=_build_args(build_args), target=target,
        labels=_kv(labels, "--label"), no_cache=no_cache, explain=explain, network=network,
        outputs=outs, secrets=_secrets(secrets), compression=compression,
        source_date_epoch=source_date_epoch, push=push, platform=platform, differ=differ,
        ssh=_ssh(ssh), allow=frozenset(allow), pull=pull)
    progress = Progress(progress_mode)
    recorder = None if outs or push or secrets or ssh or "," in (platform or "") \
        else Recorder.start()
    try:
        result = _run_until_signal(run_build(opts, progress))
    except (BuildError, DockerfileError, ContextError, PublishError, ExportError,
            LayerError) as exc:
        click.echo(f"ERROR: {exc}", err=True)
        sys.exit(1)
    except Interrupted as exc:
        click.echo(f"ERROR: {exc}", err=True)
        sys.exit(128 + exc.signum)
    digest = str(result.digest)
    if iidfile:
        iidfile.write_text(digest)
    if metadata_file:
        config = {} if result.index else {  # an index has no config (as buildx)
            "containerimage.config.digest": str(result.image.manifest.config.digest)}
        metadata_file.write_text(json.dumps({
            "containerimage.digest": digest, **config, "image.name": ",".join(tags),
        }, indent=2))
    if recorder is not None:
        recorder.finish(progress_events(progress), digest,
                        str(result.image.manifest.config.digest))
    if not any(o.stdout for o in outs):  # else stdout holds the archive and nothing else
        click.echo(digest)
    global finished
    finished = True
