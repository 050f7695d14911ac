"""``pybuild tag``, ``inspect`` and ``history`` over the local store (CliRunner); against
Docker in ``tests/e2e/test_e2e_image_cmds.py``."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path

from click.testing import CliRunner

from builder.cli import main
from registry.client.image_store import ImageStore

from .helpers import make_image, make_index, random_bytes, store_image


def _seed_index(storage: Path, ref: str) -> tuple[str, str, str]:
    """An index of an amd64 and an arm64 image under ``ref``; returns the three digests."""
    amd = make_image([[random_bytes(20_000, 1)]], arch="amd64")
    arm = make_image([[random_bytes(20_000, 2)]], arch="arm64")
    index = make_index([(amd, "amd64"), (arm, "arm64")])

    async def run() -> str:
        async with await ImageStore.open(storage) as images:
            for image in (amd, arm):
                await store_image(images, "example.com/tmp:x", image)
            await images.remove("example.com/tmp:x")
            return str(await images.put(ref, index))

    return asyncio.run(run()), str(amd.digest), str(arm.digest)


def test_inspect_an_index_tag_it_and_read_its_history(tmp_path: Path) -> None:
    storage = str(tmp_path / "s")
    index, amd, arm = _seed_index(tmp_path / "s", "example.com/multi:1")
    runner = CliRunner()
    got = runner.invoke(main, ["inspect", "--storage", storage, "--platform", "linux/arm64",
                               "example.com/multi:1"])
    assert got.exit_code == 0, got.output
    doc = json.loads(got.output)[0]
    assert doc["Name"] == "example.com/multi:1" and doc["Digest"] == index
    assert [m["digest"] for m in doc["Index"]["manifests"]] == [amd, arm]
    assert doc["Config"]["architecture"] == "arm64"
    amd_doc = json.loads(runner.invoke(main, ["inspect", "--storage", storage, "--platform",
                                              "linux/amd64", "example.com/multi:1"]).output)[0]
    assert amd_doc["Config"]["architecture"] == "amd64"
    assert amd_doc["Manifest"]["config"] != doc["Manifest"]["config"]

    tagged = runner.invoke(main, ["tag", "--storage", storage, "example.com/multi:1",
                                  "example.com/multi:latest"])
    assert tagged.exit_code == 0, tagged.output
    again = runner.invoke(main, ["inspect", "--storage", storage, "--format", "{{.Digest}}",
                                 "example.com/multi"])
    assert again.output.strip() == index

    # no history entries: only the header
    history = runner.invoke(main, ["history", "--storage", storage, "example.com/multi:1"])
    assert history.exit_code == 0, history.output
    assert history.output.split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    bad = runner.invoke(main, ["inspect", "--storage", storage, "--format", "{{if .X}}",
                               "example.com/multi:1"])
    assert bad.exit_code == 2 and "only {{.Field}}" in bad.output
    wrong = runner.invoke(main, ["tag", "--storage", storage, "example.com/multi:1",
                                 "Not A Name"])
    assert wrong.exit_code == 2 and "Traceback" not in wrong.output


def test_the_image_store_writes_its_packs_with_direct_io(tmp_path: Path) -> None:
    # O_DIRECT where the filesystem allows it: a buffered pull spent more CPU copying
    # into the page cache than on SHA-256 (docs/client.md, "How bytes move").
    from cas.packs import FilesystemPacks

    async def check() -> None:
        async with await ImageStore.open(tmp_path / "store") as images:
            packs = images.store.packs
            assert isinstance(packs, FilesystemPacks) and packs.direct is True

    asyncio.run(check())


def test_values_print_as_docker_prints_them() -> None:
    from registry.client.templates import Nil, go_value, render

    assert go_value(["cat", "/app/run.txt"]) == "[cat /app/run.txt]"
    assert go_value({"b": "2", "a": "1"}) == "map[a:1 b:2]"
    assert go_value({"8080/tcp": {}, "53/udp": {}}) == "map[53/udp:{} 8080/tcp:{}]"
    assert go_value({}) == "map[]" and go_value([]) == "[]" and go_value(None) == "<nil>"
    assert go_value(True) == "true" and go_value(12) == "12" and go_value(Nil("[]")) == "[]"
    assert render("{{json .A}}|{{json .B}}", {"A": ["<a> & b"], "B": Nil("[]")}) == '["<a> & b"]|null'
    assert render("{{.A.X}}", {"A": {}}, lambda path, name: f"{'.'.join(path)}:{name}") == "A:X"


def test_inspect_answers_dockers_names(tmp_path: Path) -> None:
    storage = str(tmp_path / "s")
    index, _amd, _arm = _seed_index(tmp_path / "s", "example.com/multi:1")
    runner = CliRunner()
    fmt = ("{{.Id}}|{{.Os}}/{{.Architecture}}|{{.RepoTags}}|{{.Config.Cmd}}|{{json .Config.Cmd}}"
           "|{{.Config.Labels}}|{{.Config.WorkingDir}}|{{.RootFS.Type}}")
    got = runner.invoke(main, ["inspect", "--storage", storage, "--platform", "linux/arm64",
                               "--format", fmt, "example.com/multi:1"])
    assert got.exit_code == 0, got.output
    doc = json.loads(runner.invoke(main, ["inspect", "--storage", storage, "--platform",
                                          "linux/arm64", "example.com/multi:1"]).output)[0]
    assert doc["Id"] == doc["Manifest"]["config"]["digest"] and doc["Digest"] == index
    assert got.output == f"{doc['Id']}|linux/arm64|[example.com/multi:1]|[]|null|map[]||layers\n"
    wrong = runner.invoke(main, ["inspect", "--storage", storage, "--format", "{{.Config.Nope}}",
                                 "example.com/multi:1"])
    assert wrong.exit_code == 2 and "no field 'Nope'" in wrong.output


def test_images_takes_docker_images_arguments(tmp_path: Path) -> None:
    storage = str(tmp_path / "s")
    index, _, _ = _seed_index(tmp_path / "s", "docker.io/library/app:1")
    runner = CliRunner()

    def images(*args: str) -> list[str]:
        got = runner.invoke(main, ["images", "--storage", storage, *args])
        assert got.exit_code == 0, got.output
        return got.output.splitlines()

    for target in ("app:2", "docker.io/team/app:1", "example.com/team/web:v3"):
        assert runner.invoke(main, ["tag", "--storage", storage, "app:1", target]).exit_code == 0
    assert images("--format", "{{.Repository}}:{{.Tag}}") == \
        ["app:1", "app:2", "team/app:1", "example.com/team/web:v3"]
    assert images("app", "--format", "{{.Tag}}") == ["1", "2"]
    assert images("docker.io/library/app:2", "--format", "{{.Reference}}") == ["app:2"]
    assert images("team/*", "--format", "{{.Reference}}") == ["team/app:1"]
    assert images("example.com/*/*", "--format", "{{.Reference}}") == ["example.com/team/web:v3"]
    assert images("nothing") == ["REFERENCE   DIGEST    CREATED"]
    assert images("-q") == [index.split(":")[1][:12]] * 4  # one image, four names
    assert images("-q", "--no-trunc", "app:2") == [index]
    table = images("--format", r"table {{.Repository}}\t{{.Tag}}\t{{.ID}}", "app")
    assert table[0] == "REPOSITORY   TAG       DIGEST"
    assert table[1] == f"app          1         {index.split(':')[1][:12]}"
    row = json.loads(images("--format", "json", "app:1")[0])
    assert (row["Digest"], row["Tag"], row["CreatedSince"].endswith("ago")) == (index, "1", True)
    bad = runner.invoke(main, ["images", "--storage", storage, "--format", "{{.Size}}"])
    assert bad.exit_code == 2 and "no field 'Size'" in bad.output


def test_images_are_found_by_their_ids_as_docker_finds_them(tmp_path: Path) -> None:
    """The ID ``pybuild images`` shows (12 digits, or whole, with or without ``sha256:``)
    names the image to ``inspect``, ``history``, ``tag`` and ``rmi``; ``rmi`` of an ID with
    several names needs ``-f``, as ``docker rmi`` does."""
    storage = str(tmp_path / "s")
    index, _, _ = _seed_index(tmp_path / "s", "docker.io/library/app:1")
    runner = CliRunner()

    def pybuild(*args: str) -> str:
        got = runner.invoke(main, [*args, "--storage", storage])
        assert got.exit_code == 0, got.output
        return str(got.output)

    short = index.split(":")[1][:12]
    for image_id in (short, index, index.split(":")[1]):
        assert pybuild("inspect", "--format", "{{.Digest}}", image_id).strip() == index
    assert pybuild("history", "--platform", "linux/amd64", short).startswith("IMAGE")
    pybuild("tag", short, "app:2")
    refused = runner.invoke(main, ["rmi", short, "--storage", storage])
    assert refused.exit_code == 1
    assert "several names (docker.io/library/app:1, docker.io/library/app:2)" in refused.output
    assert "-f" in refused.output
    pybuild("rmi", "-f", short)
    assert pybuild("images", "-q") == ""
    missing = runner.invoke(main, ["rmi", short, "--storage", storage])
    assert missing.exit_code == 1 and f"no such local image: {short}" in missing.output


def _rmi(storage: str, *args: str) -> tuple[int, str, str]:
    """``pybuild rmi ARGS`` on ``storage``: its exit code, stdout and stderr."""
    got = CliRunner().invoke(main, ["rmi", *args, "--storage", storage])
    return got.exit_code, got.stdout, got.stderr


def test_rmi_by_digest_and_by_id_as_docker_rmi(tmp_path: Path) -> None:
    """``rmi NAME@DIGEST`` removes that reference (an image held by tag keeps its tags, as
    docker's reference by digest goes and its tags stay); ``rmi ID`` without ``-f`` removes
    one tag and references by digest of one repository (docker's isSingleReference); a
    name that fails does not stop the others, and each failure is named."""
    storage = str(tmp_path / "s")
    index, _, _ = _seed_index(tmp_path / "s", "docker.io/library/app:1")
    runner = CliRunner()

    def rmi(*args: str) -> tuple[int, str, str]:
        return _rmi(storage, *args)

    def names() -> list[str]:
        got = runner.invoke(main, ["images", "--format", "{{.Reference}}", "--storage", storage])
        return str(got.stdout).split()

    assert rmi(f"app@{index}") == (0, f"Untagged: app@{index}\n", "")
    assert names() == ["app:1"]
    other = "sha256:" + "0" * 64
    code, out, err = rmi(f"app@{other}", "app:1", f"other@{index}")
    assert (code, out) == (1, "Untagged: app:1\n")
    assert err == (f"Error: no such local image: app@{other} (see pybuild images --no-trunc); "
                   f"no such local image: other@{index} (see pybuild images --no-trunc)\n")
    assert names() == []

    _seed_index(tmp_path / "s", "docker.io/library/app:1")
    _seed_index(tmp_path / "s", f"docker.io/library/app@{index}")  # as a pull by digest names it
    assert rmi(index.split(":")[1][:12]) == (0, f"Untagged: app:1\nUntagged: app@{index}\n", "")
    assert names() == []


def test_rmi_of_a_reference_by_digest_goes_once_as_docker_rmi(tmp_path: Path) -> None:
    """``docker rmi app@DIGEST`` of an image a tag still names untags it once; again it is
    ``No such image`` (exit 1). Naming the image in the repository again (a pull by digest,
    a tag) gives the reference back."""
    storage = str(tmp_path / "s")
    index, _, _ = _seed_index(tmp_path / "s", "docker.io/library/app:1")
    gone = (1, "", f"Error: no such local image: app@{index} (see pybuild images --no-trunc)\n")
    assert _rmi(storage, f"app@{index}") == (0, f"Untagged: app@{index}\n", "")
    assert _rmi(storage, f"app@{index}") == gone
    _seed_index(tmp_path / "s", f"docker.io/library/app@{index}")  # as a pull by digest
    assert _rmi(storage, f"app@{index}") == (0, f"Untagged: app@{index}\n", "")
    assert _rmi(storage, f"app@{index}") == gone
    _seed_index(tmp_path / "s", "docker.io/library/app:2")
    assert _rmi(storage, f"app@{index}") == (0, f"Untagged: app@{index}\n", "")
    listed = CliRunner().invoke(main, ["images", "--format", "{{.Reference}}", "--storage", storage])
    assert listed.output.split() == ["app:1", "app:2"]  # the tags stay


def test_tag_refuses_a_name_by_digest(tmp_path: Path) -> None:
    """As docker tag: a digest names content, it is not given (``app@sha256:0...`` would
    name an image whose digest it is not)."""
    storage = str(tmp_path / "s")
    _seed_index(tmp_path / "s", "docker.io/library/app:1")
    target = "app@sha256:" + "0" * 64
    got = CliRunner().invoke(main, ["tag", "app:1", target, "--storage", storage])
    assert got.exit_code == 2
    assert (f"Invalid value for TARGET: {target}: refusing to create a tag with a digest "
            "reference; give NAME[:TAG]") in got.output
    listed = CliRunner().invoke(main, ["images", "--format", "{{.Reference}}", "--storage", storage])
    assert listed.output.split() == ["app:1"]


def test_inspect_prints_the_images_it_finds_and_fails_for_the_others(tmp_path: Path) -> None:
    """As docker inspect: ``inspect A MISSING`` prints A on stdout, names MISSING on
    stderr and exits 1; nothing found prints ``[]``."""
    storage = str(tmp_path / "s")
    index, _amd, _arm = _seed_index(tmp_path / "s", "example.com/multi:1")
    runner = CliRunner()
    got = runner.invoke(main, ["inspect", "--storage", storage, "--platform", "linux/arm64",
                               "example.com/multi:1", "example.com/missing:1"])
    assert got.exit_code == 1
    assert [doc["Digest"] for doc in json.loads(got.stdout)] == [index]
    assert got.stderr.splitlines() == ["Error: no local image example.com/missing:1 (see "
                                       "pybuild images; pybuild pull example.com/missing:1)"]
    none = runner.invoke(main, ["inspect", "--storage", storage, "example.com/missing:1"])
    assert none.exit_code == 1 and json.loads(none.stdout) == []
    ids = runner.invoke(main, ["inspect", "--storage", storage, "--platform", "linux/arm64",
                               "-f", "{{.Digest}}", "example.com/missing:1",
                               "example.com/multi:1"])
    assert ids.exit_code == 1 and ids.stdout == f"{index}\n"


def test_rmi_says_which_names_it_untagged_as_docker_rmi_does(tmp_path: Path) -> None:
    """``docker rmi A B`` prints ``Untagged: NAME`` for every name it removes (by name, or
    each name of an ID with -f; Docker Hub's names short, as ``images`` shows them), on
    stdout, also before failing for a missing one."""
    storage = str(tmp_path / "s")
    index, _, _ = _seed_index(tmp_path / "s", "docker.io/library/app:1")
    runner = CliRunner()

    def rmi(*args: str) -> tuple[int, str, str]:
        return _rmi(storage, *args)

    for name in ("app:2", "app:3", "app:4"):
        assert runner.invoke(main, ["tag", "--storage", storage, "app:1", name]).exit_code == 0
    assert rmi("app:2") == (0, "Untagged: app:2\n", "")  # as pybuild images names it
    code, out, err = rmi("docker.io/library/app:3", "nothere:1")
    assert code == 1 and out == "Untagged: app:3\n"
    assert "no such local image: nothere:1" in err
    other_registry = "localhost:5000/team/app:1"
    assert runner.invoke(main, ["tag", "--storage", storage, "app:1", other_registry]).exit_code == 0
    assert rmi(other_registry) == (0, f"Untagged: {other_registry}\n", "")
    short = index.split(":")[1][:12]
    assert rmi("-f", short) == (0, "Untagged: app:1\nUntagged: app:4\n", "")


def test_the_image_id_build_iidfile_writes_names_the_image(tmp_path: Path) -> None:
    """``--iidfile`` holds Docker's image ID, the config's digest (as buildx writes it):
    ``docker tag $(cat iid) app:2``, ``docker inspect``, ``docker rmi`` take it, whole or
    short, and so must pybuild's image commands."""
    from cas import Digest

    storage = str(tmp_path / "s")
    image = make_image([[random_bytes(5_000, 3)]])

    async def seed() -> str:
        async with await ImageStore.open(tmp_path / "s") as images:
            return str(await store_image(images, "example.com/app:1", image))

    manifest = asyncio.run(seed())
    image_id = str(Digest.of(image.config))
    assert image_id != manifest
    runner = CliRunner()

    def pybuild(*args: str) -> str:
        got = runner.invoke(main, [*args, "--storage", storage])
        assert got.exit_code == 0, got.output
        return str(got.stdout)

    assert pybuild("inspect", "--format", "{{.Digest}}", image_id).strip() == manifest
    pybuild("tag", image_id.split(":")[1][:12], "example.com/app:2")
    assert pybuild("rmi", "-f", image_id) == "Untagged: example.com/app:1\nUntagged: example.com/app:2\n"
    missing = runner.invoke(main, ["rmi", image_id, "--storage", storage])
    assert missing.exit_code == 1 and "no such local image" in missing.output


def test_images_takes_dockers_filters(tmp_path: Path) -> None:
    """``docker images -f reference=PATTERN`` (any of several), ``-f dangling=true``
    (``docker rmi $(docker images -qf dangling=true)``: pybuild has no unnamed image) and
    ``-a`` work; another filter is refused, naming those it takes."""
    storage = str(tmp_path / "s")
    image = make_image([[random_bytes(5_000, 4)]])

    async def seed() -> None:
        async with await ImageStore.open(tmp_path / "s") as images:
            for ref in ("docker.io/library/app:1", "docker.io/team/web:2", "example.com/x:3"):
                await store_image(images, ref, image)

    asyncio.run(seed())
    runner = CliRunner()

    def names(*args: str) -> list[str]:
        got = runner.invoke(main, ["images", "--storage", storage, "--format",
                                   "{{.Repository}}:{{.Tag}}", *args])
        assert got.exit_code == 0, got.output
        return str(got.stdout).split()

    assert names("-a") == ["app:1", "team/web:2", "example.com/x:3"]
    assert names("-f", "reference=app") == ["app:1"]
    assert names("--filter", "reference=team/*", "-f", "reference=example.com/x:3") == [
        "team/web:2", "example.com/x:3"]
    assert names("-f", "reference=app", "team/web") == []  # a pattern and a filter: both
    assert names("-f", "dangling=true") == []
    assert names("-f", "dangling=false") == names()
    bad = runner.invoke(main, ["images", "--storage", storage, "-f", "label=a"])
    assert bad.exit_code == 2
    assert "invalid filter 'label=a': pybuild images takes reference=PATTERN" in bad.output


def test_dockers_other_flags_are_taken(tmp_path: Path) -> None:
    """``images --digests``, ``rmi --no-prune``, ``inspect --type image -s`` and ``pull
    --disable-content-trust``, as scripts written for docker give them; what pybuild
    cannot do (content trust, containers) is refused, saying so."""
    storage = str(tmp_path / "s")
    index, _, _ = _seed_index(tmp_path / "s", "docker.io/library/app:1")
    runner = CliRunner()

    def pybuild(*args: str) -> tuple[int, str]:
        got = runner.invoke(main, [*args, "--storage", storage])
        return got.exit_code, str(got.output)

    assert pybuild("images", "--digests", "-q", "--no-trunc") == (0, index + "\n")
    assert pybuild("inspect", "--type", "image", "-s", "-f", "{{.Digest}}", "app:1") == (0, index + "\n")
    code, output = pybuild("inspect", "--type", "container", "app:1")
    assert code == 2 and "'container' is not 'image'" in output
    code, output = pybuild("pull", "--disable-content-trust=false", "127.0.0.1:1/app:1")
    assert code == 2 and "content trust (Notary signatures) is not supported" in output
    assert pybuild("rmi", "--no-prune", "app:1") == (0, "Untagged: app:1\n")


def test_images_says_when_the_config_says_the_image_was_made(tmp_path: Path) -> None:
    # as docker images: CREATED is the config's `created` (a SOURCE_DATE_EPOCH=0 build's
    # is 1970), not when the image came here; a time to come is "Less than a second ago"
    seeded = {"example.com/epoch:0": make_image([[random_bytes(1000, 1)]],
                                                created="1970-01-01T00:00:00Z"),
              "example.com/later:1": make_image([[random_bytes(1000, 2)]],
                                                created="2999-01-01T00:00:00.123456789Z"),
              "example.com/undated:1": make_image([[random_bytes(1000, 3)]])}

    async def seed() -> None:
        async with await ImageStore.open(tmp_path / "s") as images:
            for ref, image in seeded.items():
                await store_image(images, ref, image)
            # an index: this machine's platform's config says
            epoch = seeded["example.com/epoch:0"]
            await images.put("example.com/multi:1",
                             make_index([(epoch, "amd64"), (epoch, "arm64")]))

    asyncio.run(seed())
    got = CliRunner().invoke(main, ["images", "--storage", str(tmp_path / "s"), "--format",
                                    "{{.Reference}} {{.CreatedSince}} {{.CreatedAt}}"])
    assert got.exit_code == 0, got.output
    rows = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in got.output.splitlines()}
    years = datetime.datetime.now(datetime.UTC).year - 1970
    assert rows["example.com/epoch:0"].startswith(f"{years - 1} years ago ") \
        or rows["example.com/epoch:0"].startswith(f"{years} years ago ")
    assert rows["example.com/multi:1"] == rows["example.com/epoch:0"]
    local_1970 = datetime.datetime.fromtimestamp(0).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert local_1970 in rows["example.com/epoch:0"]
    assert rows["example.com/later:1"].startswith("Less than a second ago 2998-12-31") \
        or rows["example.com/later:1"].startswith("Less than a second ago 2999-01-01")
    assert rows["example.com/undated:1"].startswith("Less than a second ago ")
