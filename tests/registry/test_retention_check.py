"""The check from the retention issue, with a real client (skopeo) against ``pybuild serve``:
30 image pushes, each overwriting ``app:latest`` and pushing ``app:<n>`` (a shared base
layer and a layer of its own), with a policy keeping the last 3 ``app:<n>``. After
``pybuild storage retention`` (and its gc), run while the registry serves and while
another push goes on, the store holds about what the kept images need, every kept tag
pulls whole, and the store checks clean."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from pathlib import Path

from testkit.clients import run, skopeo
from testkit.images import Image, make_image, make_layer, tar_files, write_oci_layout
from testkit.registries import pybuild_configured_registry

BUILDS = 30
KEEP = 3
LAYER_BYTES = 512 * 1024
GRACE = 5.0  # untagged delay and upload grace: the pushes below are seconds old


def storage_cmd(storage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "builder", "storage", *args, "--storage", str(storage)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def stats(storage: Path) -> dict[str, int]:
    return json.loads(storage_cmd(storage, "stats", "--json").stdout)


def image(rng: random.Random, base: bytes, n: int) -> Image:
    own = tar_files({"app/build": rng.randbytes(LAYER_BYTES), "app/n": str(n).encode()})
    return make_image([make_layer(base, level=1), make_layer(own, level=1)], mtime=n)


def push(addr: str, img: Image, layout: Path, *refs: str) -> None:
    write_oci_layout(img, layout)
    for ref in refs:
        run(skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{addr}/app:{ref}"))


def needed_bytes(images: list[Image]) -> int:
    blobs: dict[str, int] = {}
    for img in images:
        blobs[img.manifest_digest] = len(img.manifest)
        blobs.update({d: len(b) for d, b in img.blobs().items()})
    return sum(blobs.values())


def test_thirty_builds_keep_last_three_store_shrinks_and_kept_tags_pull_whole(tmp_path):
    rng = random.Random(14)
    base = tar_files({"base/lib": rng.randbytes(LAYER_BYTES)})
    settings = {"retention": {"untagged_delay": GRACE, "upload_grace": GRACE, "policies": [
        {"repositories": "app", "keep": [
            {"tags": "latest"},
            {"tags": "re:^[0-9]+$", "last": KEEP},
            {"tags": "race-*"},
        ]},
    ]}}
    config = tmp_path / "retention.yaml"
    config.write_text(json.dumps(settings))
    images = [image(rng, base, n) for n in range(BUILDS)]
    racer = image(rng, base, 1000)
    with pybuild_configured_registry(tmp_path / "reg", settings) as registry:
        for n, img in enumerate(images):
            push(registry.addr, img, tmp_path / f"layout-{n}", str(n), "latest")
        before = stats(registry.storage)
        # Dry run: lists the 27 tags and their images, changes nothing.
        dry = json.loads(storage_cmd(registry.storage, "retention", "--config", str(config),
                                     "--dry-run", "--json").stdout)
        assert dry["tags"] == BUILDS - KEEP and stats(registry.storage) == before
        threading.Event().wait(GRACE + 0.5)  # the 30 pushes are older than delay and grace now
        errors: list[BaseException] = []

        def race() -> None:
            try:
                push(registry.addr, racer, tmp_path / "layout-race", "race-1")
            except BaseException as exc:  # reported below
                errors.append(exc)

        pusher = threading.Thread(target=race)
        pusher.start()
        runs = []
        while pusher.is_alive() or not runs:  # collecting while the push goes on
            runs.append(json.loads(storage_cmd(registry.storage, "retention", "--config", str(config),
                                               "--json").stdout))
            if len(runs) >= 5:
                break
        pusher.join(timeout=300)
        assert not pusher.is_alive() and errors == []
        assert sum(r["tags"] for r in runs) == BUILDS - KEEP
        assert sum(r["manifests"] for r in runs) == BUILDS - KEEP
        assert sorted(run_["repository"] for r in runs for run_ in r["repositories"]) == ["app"]

        after = stats(registry.storage)
        kept = [*images[-KEEP:], racer]  # latest is the last build
        need = needed_bytes(kept)
        assert before["physical_bytes"] > 3 * need  # what 30 builds had cost
        assert after["physical_bytes"] <= need * 1.05 + 64 * 1024
        # On disk: the packs (their freed ranges punched out) and the metadata databases.
        assert after["disk_bytes"] <= need * 1.25 + 4 * 1024 * 1024
        assert after["disk_bytes"] < before["disk_bytes"] / 2

        tags = json.loads(run(skopeo("list-tags", "--tls-verify=false",
                                     f"docker://{registry.addr}/app")).stdout)["Tags"]
        assert sorted(tags) == sorted(["latest", "race-1", *(str(n) for n in range(BUILDS - KEEP, BUILDS))])
        for tag in tags:  # skopeo verifies every blob's digest as it copies
            run(skopeo("copy", "--src-tls-verify=false", f"docker://{registry.addr}/app:{tag}",
                       f"oci:{tmp_path / 'pulled'}:{tag}"))
        index = json.loads((tmp_path / "pulled" / "index.json").read_text())
        pulled = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
                  for m in index["manifests"]}
        assert pulled["latest"] == images[-1].manifest_digest
        assert pulled["race-1"] == racer.manifest_digest
        for n in range(BUILDS - KEEP, BUILDS):
            assert pulled[str(n)] == images[n].manifest_digest
        assert "clean" in storage_cmd(registry.storage, "fsck").stdout
