"""History entries and ArgsEscaped as BuildKit's Dockerfile frontend writes them."""

from __future__ import annotations

from pathlib import Path

from builder.steps.history import go_duration, go_quote, go_slice_q


def test_history_entries_read_as_buildkit_writes_them(context_of, build) -> None:
    result = build(context_of("history"), build_args={"GIVEN": "from-cli"})
    config = result.image.config
    ours = [h.created_by for h in config.history or ()][1:]  # after the base's own
    args = "|4 GLOBAL=from-global GIVEN=from-cli NOVALUE= EXTRA=x"
    assert ours == [
        # an ARG's entry holds the value it took: the global one, a --build-arg
        "ARG GLOBAL=from-global",
        "ARG GIVEN=from-cli",
        "ARG NOVALUE",
        "ENV MODE=prod",
        "EXPOSE map[80/tcp:{}]",
        # a RUN lists the stage's build args; one without value is empty
        "RUN |3 GLOBAL=from-global GIVEN=from-cli NOVALUE= /bin/sh -c echo one # buildkit",
        # no entry for ONBUILD; HEALTHCHECK is Go's %q of the config
        'HEALTHCHECK &{["CMD-SHELL" "wget -q localhost || exit 1"] "1m30s" "500ms" '
        '"2h0m0s" "0s" \'\\x03\'}',
        # a stage FROM a stage runs its ONBUILD trigger first, and lists its args first
        "RUN |3 GLOBAL=from-global GIVEN=from-cli NOVALUE= /bin/sh -c echo later # buildkit",
        "ARG EXTRA=x",
        "EXPOSE map[53/udp:{} 8000/tcp:{} 8001/tcp:{}]",  # this line's ports only
        "SHELL [/bin/sh -ec]",
        f"RUN {args} /bin/sh -ec echo two # buildkit",
        "COPY /etc/passwd /copied # buildkit",  # no --from, as BuildKit's
        'ENTRYPOINT ["printf" "%s\\t\\"%s\\"\\n" "café"]',
        'CMD ["x"]',
    ]
    # every CMD is ArgsEscaped in BuildKit's config, an ENTRYPOINT never
    assert config.config is not None and config.config.args_escaped is True


def test_go_formatting() -> None:
    assert [go_duration(ns) for ns in (0, 999, 1500, 2_500_000, 1_000_000_000,
                                       1_500_000_000, 90 * 10**9, 3600 * 10**9)] == [
        "0s", "999ns", "1.5µs", "2.5ms", "1s", "1.5s", "1m30s", "1h0m0s"]
    assert go_quote('a"b\\c\td\x1b\u00e9\u00a0\udcff') == '"a\\"b\\\\c\\td\\x1b\u00e9\\u00a0\\xff"'
    assert go_slice_q([]) == "[]"


def test_an_arg_declared_again_without_a_value_keeps_its_value_in_run_history(
        busybox_ref: str, build, tmp_path: Path) -> None:
    # BuildKit's RUN history reads each declared arg from the build state, where `ARG B`
    # without a value leaves B=1 (the RUN sees 1); pybuild wrote "B=".
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref} AS one\nARG B=1\nARG A B\n"
                                    "RUN echo \"$B\" > /b\nFROM one\nARG B\nRUN true\n")
    result = build(ctx, local=tmp_path / "out")
    runs = [h.created_by for h in result.image.config.history or ()
            if (h.created_by or "").startswith("RUN ")]
    assert runs == ['RUN |2 B=1 A= /bin/sh -c echo "$B" > /b # buildkit',
                    "RUN |2 B=1 A= /bin/sh -c true # buildkit"]
    assert (tmp_path / "out" / "b").read_text() == "1\n"
