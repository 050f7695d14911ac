"""The CLI over the client: pull, push, copy, images, rmi, login, logout (CliRunner)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import main
from registry.client.image_store import ImageStore

from .conftest import free_port
from .helpers import simple_image, store_image


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("PYBUILD_STORAGE", str(tmp_path / "default-storage"))
    return CliRunner()


def seed(storage: Path, ref: str) -> str:
    async def run() -> str:
        async with await ImageStore.open(storage) as images:
            return str(await store_image(images, ref, simple_image(60, (60_000,))))

    return asyncio.run(run())


def test_push_pull_images_rmi(runner: CliRunner, distribution: str, tmp_path: Path) -> None:
    ref = f"{distribution}/cli/{uuid.uuid4().hex[:8]}:v1"
    digest = seed(tmp_path / "a", ref)
    out = runner.invoke(main, ["push", ref, "--storage", str(tmp_path / "a"), "--json"])
    assert out.exit_code == 0, out.output
    events = [json.loads(line) for line in out.stdout.splitlines()]
    kinds = {e["event"] for e in events}
    assert {"start", "done", "summary", "result"} <= kinds
    result = events[-1]
    assert result["digest"] == digest and result["transferred"] > 40_000

    out = runner.invoke(main, ["pull", ref, "--storage", str(tmp_path / "b"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout.splitlines()[-1])["digest"] == digest

    out = runner.invoke(main, ["images", "--storage", str(tmp_path / "b"), "--json"])
    listed = json.loads(out.stdout)
    assert [(i["ref"], i["digest"]) for i in listed] == [(ref, digest)]
    table = runner.invoke(main, ["images", "--storage", str(tmp_path / "b")]).output.splitlines()
    # Docker's table: columns as wide as their widest cell plus 3, however long the name.
    width = len(ref) + 3
    assert table[0] == "REFERENCE".ljust(width) + "DIGEST".ljust(15) + "CREATED"
    assert table[1].startswith(ref.ljust(width) + digest.split(":")[1][:12] + "   ")
    assert table[1].endswith(" ago") and table[1] == table[1].rstrip()

    out = runner.invoke(main, ["rmi", ref, "--storage", str(tmp_path / "b")])
    assert out.exit_code == 0, out.output
    assert json.loads(runner.invoke(main, ["images", "--storage", str(tmp_path / "b"), "--json"]).stdout) == []
    out = runner.invoke(main, ["rmi", ref, "--storage", str(tmp_path / "b")])
    assert out.exit_code != 0 and "no such local image" in out.output
    gc = runner.invoke(main, ["storage", "gc", "--storage", str(tmp_path / "b"), "--grace", "0"])
    assert gc.exit_code == 0, gc.output


def test_push_and_pull_all_tags_as_docker_does(runner: CliRunner, distribution: str,
                                               tmp_path: Path) -> None:
    """``docker push -a REPO`` pushes every local tag of REPO, ``docker pull -a REPO`` every
    tag its registry lists, each with the progress and result of a single tag; a tag that
    fails is named, the others are copied, and the command fails."""
    from cas import Digest
    from cas.holders import image_holder

    repo = f"{distribution}/cli/{uuid.uuid4().hex[:8]}"
    a, b = tmp_path / "a", tmp_path / "b"

    async def put(ref: str, seed_no: int, drop_layer: bool = False) -> str:
        async with await ImageStore.open(a) as images:
            image = simple_image(seed_no, (40_000,))
            digest = str(await store_image(images, ref, image))
            if drop_layer:  # the image is named, but a blob of it is gone (a damaged store)
                layer = json.loads(image.manifest)["layers"][0]["digest"]
                await images.store.unlink(image_holder(ref), Digest.parse(layer))
            return digest

    one, two = asyncio.run(put(f"{repo}:v1", 61)), asyncio.run(put(f"{repo}:v2", 62))
    asyncio.run(put(f"{distribution}/cli/other:v1", 63))  # another repository: not pushed
    out = runner.invoke(main, ["push", "-a", repo, "--storage", str(a), "--json"])
    assert out.exit_code == 0, out.output
    results = [e for e in map(json.loads, out.stdout.splitlines()) if e["event"] == "result"]
    assert [(r["destination"].rsplit("/", 1)[1], r["digest"]) for r in results] == [
        (f"{repo.rsplit('/', 1)[1]}:v1", one), (f"{repo.rsplit('/', 1)[1]}:v2", two)]
    plain = runner.invoke(main, ["pull", "--all-tags", repo, "--storage", str(b)])
    assert plain.exit_code == 0, plain.output
    assert f"{repo}:v1: digest {one}" in plain.stderr and f"{repo}:v2: digest {two}" in plain.stderr
    listed = json.loads(runner.invoke(main, ["images", "--storage", str(b), "--json"]).stdout)
    assert [(i["ref"], i["digest"]) for i in listed] == [(f"{repo}:v1", one), (f"{repo}:v2", two)]

    tagged = runner.invoke(main, ["pull", "-a", f"{repo}:v1", "--storage", str(b)])
    assert tagged.exit_code == 1
    assert "a tag or digest cannot be given with --all-tags/-a" in tagged.output
    none = runner.invoke(main, ["push", "-a", f"{distribution}/cli/none", "--storage", str(a)])
    assert none.exit_code == 1 and "no local image of" in none.output

    asyncio.run(put(f"{repo}:v3", 64, drop_layer=True))
    assert runner.invoke(main, ["storage", "gc", "--storage", str(a), "--grace", "0"]).exit_code == 0
    failed = runner.invoke(main, ["push", "-a", repo, "--storage", str(a)])
    assert failed.exit_code == 1
    assert f"push --all-tags {repo}: 1 of 3 tags failed (v3: " in failed.stderr, failed.stderr
    tags = runner.invoke(main, ["pull", "-a", repo, "--storage", str(tmp_path / "c"), "-q"])
    assert tags.exit_code == 0, tags.output  # v3 never reached the registry
    listed = json.loads(runner.invoke(main, ["images", "--storage", str(tmp_path / "c"),
                                             "--json"]).stdout)
    assert [i["ref"] for i in listed] == [f"{repo}:v1", f"{repo}:v2"]


def test_plain_progress_and_copy_to_oci(runner: CliRunner, distribution: str, tmp_path: Path) -> None:
    ref = f"{distribution}/cli/{uuid.uuid4().hex[:8]}:v1"
    seed(tmp_path / "a", ref)
    assert runner.invoke(main, ["push", ref, "--storage", str(tmp_path / "a"), "-q"]).exit_code == 0
    out = runner.invoke(main, ["copy", f"docker://{ref}", f"oci:{tmp_path / 'layout'}:v1",
                               "--storage", str(tmp_path / "c")])
    assert out.exit_code == 0, out.output
    assert "pulled" in out.stderr and "transferred" in out.stderr
    assert (tmp_path / "layout" / "index.json").exists()


def test_errors_are_one_clear_line(runner: CliRunner, distribution: str, tmp_path: Path) -> None:
    out = runner.invoke(main, ["pull", f"{distribution}/cli/absent:v1", "--storage", str(tmp_path / "s")])
    assert out.exit_code == 1
    assert "MANIFEST_UNKNOWN" in out.output or "NAME_UNKNOWN" in out.output
    assert "Traceback" not in out.output
    out = runner.invoke(main, ["copy", "oci:/nonexistent/x", "local:a", "--storage", str(tmp_path / "s")])
    assert out.exit_code == 1 and "not an OCI layout" in out.output
    out = runner.invoke(main, ["pull", "x/UPPER:y"])
    assert out.exit_code != 0 and "invalid image reference" in out.output


def test_a_missing_tag_or_repository_is_named_with_what_the_registry_holds(
    runner: CliRunner, distribution: str, tmp_path: Path
) -> None:
    # As Docker says it ("manifest for REF not found"), with what to check: the tags the
    # repository has, or that the registry has no such repository.
    repo = f"{distribution}/cli/{uuid.uuid4().hex[:8]}"
    seed(tmp_path / "a", f"{repo}:v1")
    assert runner.invoke(main, ["push", f"{repo}:v1", "--storage", str(tmp_path / "a"), "-q"]).exit_code == 0
    out = runner.invoke(main, ["pull", f"{repo}:v2", "--storage", str(tmp_path / "s")])
    assert out.exit_code == 1
    assert f"manifest for {repo}:v2 not found" in out.stderr
    assert out.stderr.rstrip().endswith(f"{repo} has the tag v1: check the tag")
    out = runner.invoke(main, ["copy", f"{repo}x:v1", f"oci:{tmp_path / 'layout'}", "--storage", str(tmp_path / "s")])
    assert out.exit_code == 1
    assert out.stderr.rstrip().endswith(f"the registry has no image in repository {repo}x: check its name")
    assert not (tmp_path / "layout").exists()


@pytest.mark.parametrize("args,stdin", [(["--password-stdin"], "\n"), (["--password-stdin"], ""),
                                        (["-p", ""], None)])
def test_login_refuses_an_empty_password(runner: CliRunner, distribution: str, tmp_path: Path,
                                         args: list[str], stdin: str | None) -> None:
    """As docker login ("Password Required"): a CI job whose secret is unset
    (``echo "$PASSWORD" | pybuild login ...``) fails there, saving nothing."""
    out = runner.invoke(main, ["login", distribution, "-u", "me", *args], input=stdin)
    assert out.exit_code == 1
    assert out.stderr.startswith("Error: the password is empty")
    assert not (tmp_path / "docker" / "config.json").exists()


def test_login_and_logout(runner: CliRunner, distribution: str, tmp_path: Path) -> None:
    out = runner.invoke(main, ["login", distribution, "-u", "me", "--password-stdin"], input="pw\n")
    assert out.exit_code == 0, out.output
    config = json.loads((tmp_path / "docker" / "config.json").read_text())
    assert distribution in config["auths"]
    out = runner.invoke(main, ["logout", distribution])
    assert out.exit_code == 0, out.output
    assert distribution not in json.loads((tmp_path / "docker" / "config.json").read_text())["auths"]
    # Again: nothing to forget, and no failure (docker logout exits 0 too).
    out = runner.invoke(main, ["logout", distribution])
    assert out.exit_code == 0 and out.output == f"Not logged in to {distribution}\n", out.output


def test_a_blob_the_registry_lost_is_not_said_to_be_fixed_by_running_again(
    runner: CliRunner, distribution: str, tmp_path: Path
) -> None:
    # A registry that answers 404 for a blob its manifest names answers so again: the
    # advice was "run the command again".
    ref = f"{distribution}/cli/{uuid.uuid4().hex[:8]}:v1"
    seed(tmp_path / "a", ref)
    assert runner.invoke(main, ["push", ref, "--storage", str(tmp_path / "a"), "-q"]).exit_code == 0
    manifest = json.loads(runner.invoke(main, ["inspect", ref, "--storage", str(tmp_path / "a")]).stdout)[0]
    layer = manifest["Manifest"]["layers"][0]["digest"]
    name = ref.split("/", 1)[1].rsplit(":", 1)[0]
    request = urllib.request.Request(f"http://{distribution}/v2/{name}/blobs/{layer}", method="DELETE")
    assert urllib.request.urlopen(request, timeout=10).status == 202
    out = runner.invoke(main, ["pull", ref, "--storage", str(tmp_path / "b")])
    assert out.exit_code == 1
    assert f"blob {layer} from {ref.rsplit(':', 1)[0]}: GET " in out.stderr and "404 BLOB_UNKNOWN" in out.stderr
    assert out.stderr.rstrip().endswith("the registry has lost a blob the image's manifest names (asking again "
                                        "gets the same answer): push the image there again, or tell the "
                                        "registry's operator")
    assert "run the command again" not in out.stderr
    assert json.loads(runner.invoke(main, ["images", "--storage", str(tmp_path / "b"), "--json"]).stdout) == []


@pytest.mark.parametrize("args", [["-u", "me"], [], ["--password-stdin"]])
def test_login_does_not_prompt_through_a_pipe(runner: CliRunner, tmp_path: Path, args: list[str]) -> None:
    # As docker login ("Cannot perform an interactive login from a non TTY device"): the
    # prompt read the password from the pipe, echoed, with Python's GetPassWarning.
    host = f"127.0.0.1:{free_port()}"
    out = runner.invoke(main, ["login", host, *args], input="pw\n")
    assert out.exit_code == 2
    assert ("cannot ask for the user name or password: standard input is not a terminal; give -u USER "
            f"and --password-stdin (echo \"$PASSWORD\" | pybuild login {host} -u USER --password-stdin)") in out.stderr
    assert "Password" not in out.output and not (tmp_path / "docker").exists()


def test_login_to_a_web_server_that_is_no_registry_says_so_and_saves_nothing(
    runner: CliRunner, tmp_path: Path
) -> None:
    # A web server (or a wrong port) answers GET /v2/ with 404; a registry answers 200 or 401.
    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        out = runner.invoke(main, ["login", host, "-u", "me", "--password-stdin"], input="pw\n")
    finally:
        server.shutdown()
        server.server_close()
    assert out.exit_code == 1
    assert out.stderr.startswith(f"Error: {host} is not an OCI registry (GET http://{host}/v2/: HTTP 404")
    assert out.stderr.rstrip().endswith("a registry answers GET /v2/ with 200 or 401; check the host and port")
    assert not (tmp_path / "docker" / "config.json").exists()


def test_a_failed_command_run_with_json_ends_with_an_error_event_on_stdout(
    runner: CliRunner, tmp_path: Path
) -> None:
    storage = ["--storage", str(tmp_path / "s")]
    for args, code, words in (
        (["pull", "--json", f"127.0.0.1:{free_port()}/x:1"], 1, "cannot connect to registry"),
        (["push", "--json", "nosuch/local:image", "127.0.0.1:1/x:1"], 1, "no local image"),
        (["copy", "--json", "local:x:1", "containers-storage:foo"], 2, "unsupported transport"),
        (["pull", "--jobs", "0", "--json", "x:1"], 2, "--jobs"),
    ):
        out = runner.invoke(main, [*args, *storage])
        assert out.exit_code == code, out.output
        event = json.loads(out.stdout.splitlines()[-1])
        assert event["event"] == "error" and event["exit_code"] == code and words in event["message"]
        assert out.stderr.startswith(f"Error: {event['message']}")
        plain = runner.invoke(main, [a for a in args if a != "--json"] + storage)
        assert plain.exit_code == code and plain.stdout == ""


def test_a_listing_whose_reader_went_away_ends_quietly_as_other_clis_do(tmp_path: Path) -> None:
    seed(tmp_path / "s", "localhost/quiet:1")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "builder", "images", "--storage", str(tmp_path / "s")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head -0` does, before the table is written
    with proc.stderr:
        stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 141  # 128 + SIGPIPE
    assert stderr == b""
