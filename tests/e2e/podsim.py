"""Run a container of a Pod spec the way the kubelet would, without a container engine.

`PodProcess` takes a container from a (rendered) Pod template and starts the repository's binary
with exactly that container's args and env, its ConfigMap and Secret volumes materialised as files
at their mount paths, and its security context applied:

* a private mount namespace (`unshare --mount`) with a fresh tmpfs as the root file system that
  holds nothing but what a distroless image holds: the binary at the Dockerfile's ENTRYPOINT path,
  the shared libraries it links (ldd), /etc/passwd and /etc/group with `nonroot`, /dev nodes,
  /proc — and no shell;
* each volumeMount bind-mounted at its mountPath (read-only when the mount says so), emptyDirs as
  tmpfs; Secret files keep the volume's defaultMode and the pod's fsGroup as group, like the
  kubelet writes them;
* the root remounted read-only when readOnlyRootFilesystem is set;
* runAsUser/runAsGroup (falling back to the Dockerfile's USER), fsGroup as supplementary group,
  no_new_privs for allowPrivilegeEscalation: false; a non-root uid has no capabilities left.

The one deliberate difference is the network: processes share the host's network namespace, so a
caller overrides the listen address (e.g. with the worker's INFERSCALE_HOST/INFERSCALE_PORT) and
only 127.0.0.1 is used.

Without root (or where unshare is refused) `PodProcess` falls back to running the binary directly
with every mount path rewritten onto a temporary directory (in args and in the materialised
files); `mode` says which one ran, PODSIM_MODE=direct forces the fallback.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LISTEN = re.compile(r"listening on (http://\S+)")


# --- Dockerfiles -----------------------------------------------------------------------------


@dataclass
class Image:
    """What a Dockerfile's final stage says about how its process runs."""

    dockerfile: Path
    entrypoint: list[str]
    cmd: list[str]
    user: str
    base: str
    final_stage: list[tuple[str, str]]  # (instruction, rest) of the last stage


def parse_dockerfile(path: Path) -> Image:
    lines: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        instr, _, rest = buf.partition(" ")
        lines.append((instr.upper(), rest.strip()))
        buf = ""
    starts = [i for i, (ins, _) in enumerate(lines) if ins == "FROM"]
    final = lines[starts[-1]:]
    entry = cmd = []
    user = "root"
    for ins, rest in final:
        if ins == "ENTRYPOINT":
            entry = json.loads(rest)
        elif ins == "CMD":
            cmd = json.loads(rest)
        elif ins == "USER":
            user = rest
    return Image(path, entry, cmd, user, final[0][1].split()[0], final)


# --- Kubernetes objects --------------------------------------------------------------------------


def kubectl_json(*args: str) -> dict:
    out = subprocess.run(["kubectl", *args, "-o", "json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


@dataclass
class Mount:
    path: str  # mountPath in the container
    source: Path | None  # host directory with the volume's files; None for an emptyDir (tmpfs)
    read_only: bool


@dataclass
class PodProcessSpec:
    image: Image
    binary: Path  # the repository's build of the image's ENTRYPOINT
    argv: list[str]  # full argv inside the container (ENTRYPOINT/command + args)
    env: dict[str, str]
    mounts: list[Mount]
    uid: int
    gid: int
    groups: list[int]
    read_only_root: bool
    no_new_privs: bool
    notes: list[str] = field(default_factory=list)


def _uid(user: str) -> tuple[int, int]:
    u, _, g = user.partition(":")
    named = {"root": 0, "nonroot": 65532, "nobody": 65534}
    uid = int(u) if u.isdigit() else named[u]
    gid = int(g) if g.isdigit() else (named[g] if g else uid)
    return uid, gid


def resolve_pod(
    pod_spec: dict,
    container_name: str,
    namespace: str,
    image: Image,
    binary: Path,
    workdir: Path,
    pod_name: str = "e2e-pod",
    extra_env: dict[str, str] | None = None,
    replace_args: dict[str, str] | None = None,
) -> PodProcessSpec:
    """Turns a Pod template's container into what is needed to run it here.

    Reads each ConfigMap/Secret volume the container mounts from the API server (admin
    credentials, like the kubelet) and writes its files below `workdir`.
    `replace_args` maps an argument prefix (e.g. `--metrics-addr=`) to a replacement argument.
    """
    container = next(c for c in pod_spec["containers"] if c["name"] == container_name)
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    psc = pod_spec.get("securityContext", {})
    csc = container.get("securityContext", {})
    img_uid, img_gid = _uid(image.user)
    uid = csc.get("runAsUser", psc.get("runAsUser", img_uid))
    gid = csc.get("runAsGroup", psc.get("runAsGroup", img_gid))
    fs_group = psc.get("fsGroup")
    groups = sorted({gid, *( [fs_group] if fs_group is not None else []), *psc.get("supplementalGroups", [])})
    notes: list[str] = []
    if (csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True) and uid == 0:
        raise AssertionError("runAsNonRoot is set but the container would run as uid 0")

    mounts: list[Mount] = []
    for vm in container.get("volumeMounts", []):
        vol = volumes[vm["name"]]
        if vm.get("subPath"):
            raise AssertionError(f"volumeMount {vm['name']} uses subPath, which podsim does not emulate")
        ro = bool(vm.get("readOnly", False))
        if "emptyDir" in vol:
            mounts.append(Mount(vm["mountPath"], None, False))
            continue
        target = workdir / "volumes" / vm["name"]
        target.mkdir(parents=True, exist_ok=True)
        if "configMap" in vol:
            src = vol["configMap"]
            obj = kubectl_json("-n", namespace, "get", "configmap", src["name"])
            files = {k: v.encode() for k, v in obj.get("data", {}).items()}
            files.update({k: base64.b64decode(v) for k, v in obj.get("binaryData", {}).items()})
            default_mode = src.get("defaultMode", 0o644)
        elif "secret" in vol:
            src = vol["secret"]
            obj = kubectl_json("-n", namespace, "get", "secret", src["secretName"])
            files = {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}
            default_mode = src.get("defaultMode", 0o644)
        else:
            raise AssertionError(f"volume {vm['name']}: only configMap, secret and emptyDir volumes are emulated")
        items = src.get("items")
        selected = (
            {it["path"]: (files[it["key"]], it.get("mode", default_mode)) for it in items}
            if items
            else {k: (v, default_mode) for k, v in files.items()}
        )
        for rel, (content, mode) in selected.items():
            f = target / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(content)
            # The kubelet: the volume's mode, group fsGroup (owner root).
            if os.geteuid() == 0 and fs_group is not None:
                os.chown(f, 0, fs_group)
            os.chmod(f, mode)
        os.chmod(target, 0o755)
        mounts.append(Mount(vm["mountPath"], target, ro))

    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        ref = e.get("valueFrom", {})
        if "fieldRef" in ref:
            fp = ref["fieldRef"]["fieldPath"]
            env[e["name"]] = {"metadata.name": pod_name, "metadata.namespace": namespace}[fp]
        elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
            kind, r = ("secret", ref["secretKeyRef"]) if "secretKeyRef" in ref else ("configmap", ref["configMapKeyRef"])
            obj = kubectl_json("-n", namespace, "get", kind, r["name"])
            raw = obj.get("data", {})[r["key"]]
            env[e["name"]] = base64.b64decode(raw).decode() if kind == "secret" else raw
        else:
            raise AssertionError(f"env {e['name']}: unsupported valueFrom {ref}")
    if container.get("envFrom"):
        raise AssertionError("envFrom is not emulated")
    env.update(extra_env or {})

    entry = container.get("command") or image.entrypoint
    args = container.get("args") if "args" in container else (image.cmd if not container.get("command") else [])
    args = list(args or [])
    for prefix, replacement in (replace_args or {}).items():
        hits = [i for i, a in enumerate(args) if a.startswith(prefix)]
        if not hits:
            raise AssertionError(f"the container has no argument starting with {prefix!r}: {args}")
        for i in hits:
            notes.append(f"argument {args[i]!r} replaced by {replacement!r}")
            args[i] = replacement

    return PodProcessSpec(
        image=image,
        binary=binary,
        argv=[*entry, *args],
        env=env,
        mounts=mounts,
        uid=uid,
        gid=gid,
        groups=groups,
        read_only_root=bool(csc.get("readOnlyRootFilesystem", False)),
        no_new_privs=csc.get("allowPrivilegeEscalation") is False,
        notes=notes,
    )


# --- running -----------------------------------------------------------------------------------


def sandbox_available() -> bool:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "setpriv", "chroot", "ldd")):
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


def _libraries(binary: Path) -> list[str]:
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.append(parts[2])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
GROUP = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"


def _sandbox_script(spec: PodProcessSpec) -> str:
    q = shlex.quote
    lines = [
        "set -eu",
        'R="$1"; shift',
        'mount -t tmpfs -o mode=0755,size=32m rootfs "$R"',
        'mkdir -p "$R/etc" "$R/proc" "$R/dev" "$R/home/nonroot" "$R/usr/local/bin"',
        f'printf %s {q(PASSWD)} > "$R/etc/passwd"',
        f'printf %s {q(GROUP)} > "$R/etc/group"',
        'chown 65532:65532 "$R/home/nonroot"',
    ]
    for lib in _libraries(spec.binary):
        lines.append(f'mkdir -p "$R"{q(str(Path(lib).parent))} && cp -L {q(lib)} "$R"{q(lib)}')
    if Path("/etc/ssl/certs/ca-certificates.crt").exists():
        lines.append('mkdir -p "$R/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/"')
    for dev in ("null", "zero", "random", "urandom"):
        lines.append(f'touch "$R/dev/{dev}" && mount --bind /dev/{dev} "$R/dev/{dev}"')
    lines.append('mount -t proc proc "$R/proc"')
    exe = spec.image.entrypoint[0]  # where the image has its binary (argv[0] may name another program)
    lines.append(f'mkdir -p "$R"{q(str(Path(exe).parent))} && touch "$R"{q(exe)}')
    lines.append(f'mount --bind {q(str(spec.binary))} "$R"{q(exe)} && mount -o remount,bind,ro "$R"{q(exe)}')
    for m in spec.mounts:
        lines.append(f'mkdir -p "$R"{q(m.path)}')
        if m.source is None:
            lines.append(f'mount -t tmpfs -o mode=1777,size=64m emptydir "$R"{q(m.path)}')
        else:
            lines.append(f'mount --bind {q(str(m.source))} "$R"{q(m.path)}')
            if m.read_only:
                lines.append(f'mount -o remount,bind,ro "$R"{q(m.path)}')
    if spec.read_only_root:
        lines.append('mount -o remount,ro "$R"')
    envs = " ".join(q(f"{k}={v}") for k, v in {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/home/nonroot", **spec.env}.items())
    nnp = "--no-new-privs " if spec.no_new_privs else ""
    groups = ",".join(str(g) for g in spec.groups)
    setpriv, chroot = q(shutil.which("setpriv") or "setpriv"), q(shutil.which("chroot") or "chroot")
    lines.append(f'exec env -i {envs} {setpriv} {nnp}{chroot} --userspec={spec.uid}:{spec.gid} --groups={groups} "$R" "$@"')
    return "\n".join(lines) + "\n"


class PodProcess:
    """A running container process; stdout/stderr are collected for diagnostics."""

    def __init__(self, spec: PodProcessSpec, workdir: Path, wait_listen: bool, timeout: float = 30.0, force_mode: str | None = None):
        self.spec = spec
        # PODSIM_MODE=direct forces the fallback (to test it as root).
        self.mode = force_mode or os.environ.get("PODSIM_MODE") or ("sandbox" if sandbox_available() else "direct")
        workdir.mkdir(parents=True, exist_ok=True)
        if self.mode == "sandbox":
            rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=workdir))
            script = workdir / f"sandbox-{rootfs.name}.sh"
            script.write_text(_sandbox_script(spec))
            argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", str(script), str(rootfs), *spec.argv]
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        else:
            argv, env = self._direct(workdir)
        self.argv = argv
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._listen = threading.Event()
        self.url: str | None = None
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False), daemon=True).start()
        if wait_listen and not self._listen.wait(timeout):
            self.stop()
            raise RuntimeError(f"{spec.argv[0]} did not announce its address within {timeout}s:\n{self.logs()}")

    def _direct(self, workdir: Path) -> tuple[list[str], dict[str, str]]:
        """Fallback without a mount namespace: mount paths rewritten onto workdir/root."""
        root = workdir / "root"
        remap: list[tuple[str, str]] = []
        for m in self.spec.mounts:
            dst = root / m.path.lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if m.source is None:
                dst.mkdir(parents=True, exist_ok=True)
            elif not dst.exists():
                dst.symlink_to(m.source)
            remap.append((m.path, str(dst)))
        remap.sort(key=lambda p: -len(p[0]))
        mapping = dict(remap)
        # One pass, whole path prefixes only (so a rewritten path is never rewritten again).
        pattern = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(a) for a, _ in remap) + r")(?=/|$|[^\w.-])") if remap else None

        def rw(s: str) -> str:
            return pattern.sub(lambda m: mapping[m.group(1)], s) if pattern else s

        for m in self.spec.mounts:
            if m.source is not None:
                for f in m.source.rglob("*"):
                    if f.is_file():
                        try:
                            f.write_text(rw(f.read_text()))
                        except (UnicodeDecodeError, PermissionError):
                            pass
        argv = [str(self.spec.binary), *[rw(a) for a in self.spec.argv[1:]]]
        env = {"PATH": os.environ.get("PATH", ""), **{k: rw(v) for k, v in self.spec.env.items()}}
        return argv, env

    def _pump(self, stream, sink: list[str], watch: bool) -> None:
        for line in stream:
            sink.append(line)
            if watch and not self._listen.is_set():
                m = LISTEN.search(line)
                if m:
                    self.url = m.group(1)
                    self._listen.set()

    def logs(self, tail: int = 60) -> str:
        return "".join(self.stdout[-tail:]) + "".join(self.stderr[-tail:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def wait_for(what: str, predicate, timeout: float = 60.0, interval: float = 0.5):
    """Polls `predicate` until it returns a truthy value; fails with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - reported below if the deadline passes
            last_err = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_err})" if last_err else ""))
        time.sleep(interval)
