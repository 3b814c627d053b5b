"""The container images, checked without a container engine.

What is checked here, statically: each Dockerfile is multi-stage, builds the right package/binary
of the workspace with the locked dependencies, and its final stage is distroless (no shell, no
package manager), runs as the numeric non-root user 65532 (so that `runAsNonRoot` can be verified
by the kubelet) and starts the binary it copied, in exec form. (tests/e2e/static-checks.sh also
runs hadolint on them.)

What the static checks cannot show (that the binaries work as uid 65532 on a read-only root with
nothing but their shared libraries beside them) is shown at run time: test_e2e.py runs the
operator, the worker and mock-llm exactly that way (tests/e2e/podsim.py), and the last test here
runs each binary that way on its own.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib

import pytest

import podsim
from conftest import BIN_DIR, ROOT

IMAGES = {
    # Dockerfile: (cargo package, binary, port the image exposes)
    "worker/Dockerfile": ("inferscale-worker", "inferscale-worker", 8108),
    "operator/Dockerfile": ("inferscale-operator", "inferscale-operator", 8080),
    "tests/mock-llm/Dockerfile": ("mock-llm", "mock-llm", 8100),
}
RUNTIME_BASES = ("gcr.io/distroless/cc-debian12:nonroot", "gcr.io/distroless/static-debian12:nonroot")


@pytest.fixture(scope="module")
def metadata() -> dict:
    out = subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--locked"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_dockerfile(dockerfile, metadata):
    package, binary, port = IMAGES[dockerfile]
    path = ROOT / dockerfile
    image = podsim.parse_dockerfile(path)
    text = path.read_text()

    # Multi-stage: a Rust builder, then the distroless runtime.
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(froms) == 2, froms
    assert froms[0][0].startswith("rust:") and froms[0][1] == "build", froms
    assert image.base in RUNTIME_BASES, image.base

    # The builder: this package's binary, release profile, the committed lock file.
    m = re.search(r"cargo build --release --locked -p (\S+) --bin (\S+)", text)
    assert m and m.groups() == (package, binary), m and m.groups()
    pkgs = {p["name"]: p for p in metadata["packages"]}
    assert package in pkgs and binary in {t["name"] for t in pkgs[package]["targets"] if "bin" in t["kind"]}
    # Every workspace member is in the build context (cargo needs them all to load the workspace).
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    copied = re.findall(r"^COPY (?!--from)(\S+) ", text, re.M)
    assert set(members) <= set(copied), (members, copied)
    for src in copied:
        assert (ROOT / src).exists(), src
    rust_version = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    arg = re.search(r"^ARG RUST_VERSION=(\S+)", text, re.M).group(1)
    assert tuple(map(int, arg.split("."))) >= tuple(map(int, rust_version.split("."))), (arg, rust_version)

    # The runtime stage: nothing but the binary; non-root; exec-form entrypoint at the copied path.
    instructions = [ins for ins, _ in image.final_stage]
    assert set(instructions) <= {"FROM", "COPY", "USER", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL"}, instructions
    assert "RUN" not in instructions and "SHELL" not in instructions
    copies = [rest for ins, rest in image.final_stage if ins == "COPY"]
    assert copies == [f"--from=build /out/{binary} /usr/local/bin/{binary}"], copies
    assert image.entrypoint == [f"/usr/local/bin/{binary}"], image.entrypoint
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", image.user), f"USER must be numeric and non-root: {image.user}"
    assert f"EXPOSE {port}" in text


def test_runtime_libraries_are_in_the_distroless_cc_image():
    """The binaries link only what gcr.io/distroless/cc-debian12 ships (glibc, libgcc_s), e.g. no
    libssl (rustls) and no libstdc++."""
    allowed = {"linux-vdso.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2",
               "libpthread.so.0", "libdl.so.2", "librt.so.1"}
    for _, binary, _ in IMAGES.values():
        out = subprocess.run(["ldd", str(BIN_DIR / binary)], check=True, capture_output=True, text=True).stdout
        libs = {line.split()[0].rsplit("/", 1)[-1] for line in out.splitlines() if line.strip()}
        assert libs <= allowed, (binary, libs - allowed)


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_binary_runs_as_the_image_user_on_a_read_only_root(dockerfile, tmp_path):
    """`--help`/`--version` of each binary in podsim's distroless-like sandbox: uid 65532, read-only
    root holding only the binary and its libraries, no shell."""
    if not podsim.sandbox_available():
        pytest.skip("needs root and unshare (mount namespaces)")
    _, binary, _ = IMAGES[dockerfile]
    image = podsim.parse_dockerfile(ROOT / dockerfile)
    uid, gid = podsim._uid(image.user)
    spec = podsim.PodProcessSpec(image=image, binary=BIN_DIR / binary, argv=[*image.entrypoint, "--version"],
                                 env={}, mounts=[], uid=uid, gid=gid, groups=[gid], read_only_root=True, no_new_privs=True)
    proc = podsim.PodProcess(spec, tmp_path, wait_listen=False)
    assert proc.proc.wait(timeout=30) == 0, proc.logs()
    assert proc.stop() == 0
    out = "".join(proc.stdout)
    assert binary in out and "0.1.0" in out, out
    # And no shell inside: the sandbox's root has only the binary, libraries and /etc files.
    probe = podsim.PodProcessSpec(image=image, binary=BIN_DIR / binary, argv=["/bin/sh", "-c", "true"],
                                  env={}, mounts=[], uid=uid, gid=gid, groups=[gid], read_only_root=True, no_new_privs=True)
    shell = podsim.PodProcess(probe, tmp_path / "sh", wait_listen=False)
    assert shell.proc.wait(timeout=30) != 0, "a shell ran inside the sandbox"
