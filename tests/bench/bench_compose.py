"""The compose stack's costs: cold `up` to every service healthy (images built), the RAM of
each container (`docker stats`), and the images' sizes. One device, as tests/test_compose.py
runs it (a private Docker Engine, audio from a file, yggdrasil in the stack's network), then
the community hub alone (compose.yaml + hub.yaml: no audio, no Cow Radio); then carrying
every image (services/docker/carry.sh save, and load into a second, empty Docker Engine).

    sudo RECORDER_PAPAD_KIT=../shared/papad .venv/bin/python -m tests.bench.bench_compose

Prints one JSON document. Needs what tests/test_compose.py needs (root, docker.io, debootstrap).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

from tests import compose_harness as ch
from tests.clips import tone, write_wav

UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "kB": 1000, "MB": 1000**2,
         "GB": 1000**3}


def size(text: str) -> float:
    """'51.2MiB' -> MiB."""
    m = re.fullmatch(r"([0-9.]+)\s*([A-Za-z]+)", text.strip())
    assert m, text
    return float(m.group(1)) * UNITS[m.group(2)] / 1024**2


def main() -> None:
    out: dict = {}
    with ch.engine() as eng, tempfile.TemporaryDirectory() as tmp:
        ch.ensure_base(eng)
        out["build_s"] = round(ch.build(eng, {"PAPAD_SOURCE": str(ch.papad_source())}), 1)
        root = Path(tmp)
        clips = root / "clips"
        clips.mkdir()
        write_wav(clips / "tone.wav", tone(30.0))
        clips.chmod(0o755)
        (clips / "tone.wav").chmod(0o644)
        template = (ch.SERVICES / "recorder.compose.toml").read_text()
        for name, hub in (("device", False), ("hub", True)):
            stack = ch.Stack(eng, f"rpbench{name}", root / name, f"bench-{name}", 7, hub=hub)
            stack.write_config(template if hub else template.replace(
                'source = "USB"', 'source = "file:/clips/tone.wav"'), clips)
            try:
                start = time.monotonic()
                stack.up()
                stack.wait_healthy(timeout=900)
                out[f"{name}_up_to_healthy_s"] = round(time.monotonic() - start, 1)
                time.sleep(60)  # settled: papad's workers and Liquidsoap past their start
                stats = eng.run("stats", "--no-stream", "--format",
                                "{{.Name}}\t{{.MemUsage}}").stdout
                mem = {}
                for line in stats.splitlines():
                    cname, usage = line.split("\t")
                    mem[cname.removeprefix(f"rpbench{name}-").removesuffix("-1")] = round(
                        size(usage.split("/")[0]), 1)
                out[f"{name}_ram_mib"] = mem
                out[f"{name}_ram_total_mib"] = round(sum(mem.values()), 1)
            finally:
                stack.down(volumes=True)
        carry = ch.SERVICES / "docker/carry.sh"
        archive = root / "images.tar"
        start = time.monotonic()
        subprocess.run([str(carry), "save", str(archive)], env={
            **eng.env, "PAPAD_SOURCE": str(ch.papad_source())}, check=True)
        out["carry_save_s"] = round(time.monotonic() - start, 1)
        out["carry_archive_mb"] = round(archive.stat().st_size / 1e6)
        empty = ch.Engine(root / "empty-engine")
        try:
            empty.start()
            start = time.monotonic()
            subprocess.run([str(carry), "load", str(archive)], env=empty.env, check=True)
            out["carry_load_into_empty_engine_s"] = round(time.monotonic() - start, 1)
        finally:
            empty.stop()
        images = eng.run("image", "ls", "--format", "{{.Repository}}:{{.Tag}}\t{{.Size}}").stdout
        out["images_mb"] = {line.split("\t")[0]: line.split("\t")[1]
                            for line in images.splitlines() if not line.startswith("<none>")}
        df = eng.run("system", "df", "--format", "{{.Type}}\t{{.Size}}").stdout
        out["disk"] = dict(line.split("\t") for line in df.splitlines())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
