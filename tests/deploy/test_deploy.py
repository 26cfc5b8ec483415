"""The shipped image and manifests are valid and agree with the code (issue 5).

There is no Docker engine and no cluster here, so everything is checked statically or by
emulation: hadolint on the Dockerfile, yamllint on deploy/, a small equivalent of
`kustomize build` whose output is validated against the Kubernetes 1.33 schemas, the
ConfigMap's configuration through `gateproxy check-config`, ports and paths in the
manifests against what a running gateproxy serves, and the image itself by building the
wheel from the `.dockerignore`d context into a fresh virtual environment and running the
Dockerfile's ENTRYPOINT and HEALTHCHECK commands against it.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kustomize"
BASE = KUSTOMIZE / "base"
OVERLAYS = sorted(p for p in (KUSTOMIZE / "overlays").iterdir() if p.is_dir())
BUILDS = [BASE, *OVERLAYS]
BAKED_CONFIG = DEPLOY / "gateproxy.yaml"
COMPOSE = DEPLOY / "compose.yaml"
SUPPORT = ROOT / "tests" / "support" / "deploy"
K8S_VERSION = "1.33.0"
SIDECAR = "gateproxy"
APP = "platform-server"
SECRET_ENV = "DOCKER_RUNNER_SHARED_SECRET"
# The admin token: from a Secret the operator creates (deploy/README.md), never shipped.
TOKEN_ENV = "GATEPROXY_ADMIN_TOKEN"
TOKEN_SECRET = {"name": "platform-server-gateproxy-admin", "key": "token", "optional": True}
# The variables gateproxy reads; cleared from the inherited environment so that a
# developer's shell cannot change what these tests see.
OWN_ENV = re.compile(r"^(GATEPROXY_|DOCKER_RUNNER_|PLATFORM_SERVER_URL$)")


def build_id(path: Path) -> str:
    return str(path.relative_to(KUSTOMIZE))


# --- tools --------------------------------------------------------------------------------


def tool(name: str) -> str:
    """A console script of the test extra: next to this interpreter first, then on PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        pytest.fail(f"{name} not found: install the test extra (pip install -e '.[test]')")
    return found


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not OWN_ENV.match(k)}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Loopback only: never through an HTTP_PROXY that the environment may set.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 3.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def answers(url: str, status: int) -> bool:
    try:
        return http_get(url, timeout=1.0)[0] == status
    except OSError:
        return False


@contextmanager
def running(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[
        subprocess.Popen[bytes]]:
    """Start a process we own and always end it (by its PID) when the block ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def log_tail(log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-40:])


# --- the configuration --------------------------------------------------------------------


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def baked_config() -> dict[str, Any]:
    data = read_yaml(BAKED_CONFIG)
    assert isinstance(data, dict)
    return data


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[
        str]:
    """`gateproxy check-config` from this checkout, with nothing inherited that it reads."""
    return subprocess.run(
        [sys.executable, "-m", "gateproxy", "check-config", "--config", str(path)],
        cwd=ROOT, env=clean_env(**(env or {})), capture_output=True, text=True, timeout=60,
        check=False)


def effective(path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The configuration as the code reads it (check-config prints it as YAML)."""
    done = check_config(path, env)
    assert done.returncode == 0, f"check-config failed:\n{done.stdout}\n{done.stderr}"
    data = yaml.safe_load(done.stdout)
    assert isinstance(data, dict), done.stdout
    return data


def url_port(url: str) -> int:
    match = re.fullmatch(r"https?://[^/:]+:(\d+)/?", url)
    assert match, f"{url}: expected scheme://host:port"
    return int(match.group(1))


def loopback_variant(config: dict[str, Any], proxy: int, admin: int,
                     shutdown_delay_ms: int | None = None) -> dict[str, Any]:
    """The same configuration on loopback and free ports, with nothing upstream.

    Paths, gated routes and admin settings stay as shipped: only where it listens and
    what it talks to change (as an operator's mounted file would).
    """
    out = copy.deepcopy(config)
    out["listen"] = {**out.get("listen", {}), "host": "127.0.0.1", "port": proxy}
    out["admin_port"] = admin
    out["upstream"] = {**out.get("upstream", {}), "url": f"http://127.0.0.1:{free_port()}"}
    for dep in out.get("dependencies", []):
        dep["base_url"] = f"http://127.0.0.1:{free_port()}"
    if shutdown_delay_ms is not None:
        out["shutdown_delay_ms"] = shutdown_delay_ms
    return out


# --- the Dockerfile -----------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def json_args(self) -> list[str] | None:
        """The exec (JSON array) form's arguments, or None for the shell form."""
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) \
            else None


@dataclass
class Stage:
    base: str
    alias: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            for pair in shlex.split(ins.args):
                key, sep, value = pair.partition("=")
                assert sep, f"Dockerfile:{ins.line}: use ENV key=value"
                out[key] = value
        return out


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]
    text: str

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Enough of the Dockerfile grammar for these checks: continuations, comments, stages."""
    text = path.read_text()
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append((start, pending + stripped))
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)",
                           lambda m: global_args.get(m.group(1) or m.group(2), ""), words[0])
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image, alias))
        elif not stages:
            assert keyword == "ARG", f"Dockerfile:{number}: only ARG may precede FROM"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args, number))
    return Dockerfile(global_args, stages, text)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(ROOT / "Dockerfile")


def healthcheck_argv(df: Dockerfile) -> tuple[list[str], dict[str, str]]:
    ins = df.final.last("HEALTHCHECK")
    assert ins is not None, "the final stage has no HEALTHCHECK"
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", ins.args))
    command = re.sub(r"^(--[a-z-]+=\S+\s+)*", "", ins.args)
    assert command.upper().startswith("CMD "), f"HEALTHCHECK must be `CMD [...]`: {ins.args}"
    argv = Instruction("CMD", command[4:].strip(), ins.line).json_args()
    assert argv, "HEALTHCHECK CMD must be in exec form (a JSON array): no shell, no curl"
    return argv, options


def entrypoint_argv(df: Dockerfile) -> list[str]:
    entry, cmd = df.final.last("ENTRYPOINT"), df.final.last("CMD")
    assert entry is not None, "the final stage needs an ENTRYPOINT"
    assert cmd is not None, "the final stage needs a CMD"
    entry_argv, cmd_argv = entry.json_args(), cmd.json_args()
    assert entry_argv is not None, "ENTRYPOINT in exec form, so that SIGTERM reaches gateproxy"
    assert cmd_argv is not None, "CMD must be in exec form"
    return [*entry_argv, *cmd_argv]


# --- .dockerignore: the build context, as the Docker builder computes it -------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1:end].replace("!", "^", 1) + "]"
            i = end
        else:
            out += re.escape(char)
        i += 1
    return re.compile(f"^{out}$")


@dataclass
class DockerIgnore:
    """Docker's rules: last matching pattern wins, `!` re-includes, a match on a parent
    directory covers everything below it (moby's patternmatcher)."""

    patterns: list[tuple[bool, re.Pattern[str], str]]

    @classmethod
    def load(cls, path: Path) -> DockerIgnore:
        patterns = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            text = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            patterns.append((exclusion, _pattern_regex(text), text))
        return cls(patterns)

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        matched = False
        for exclusion, regex, _ in self.patterns:
            if exclusion != matched:
                continue
            if any(regex.match(c) for c in candidates):
                matched = not exclusion
        return matched

    def may_reinclude_below(self, rel_dir: str) -> bool:
        """Whether a `!` pattern could match something inside an excluded directory."""
        depth = rel_dir.count("/") + 1
        for exclusion, _, text in self.patterns:
            if not exclusion:
                continue
            segments = text.split("/")
            if "**" in segments[:depth] or (len(segments) > depth and all(
                    fnmatch.fnmatchcase(d, s) for d, s in zip(rel_dir.split("/"), segments,
                                                               strict=False))):
                return True
        return False

    def context(self, root: Path) -> list[str]:
        """Every file of the build context, relative to root."""
        files: list[str] = []
        for directory, dirnames, filenames in os.walk(root):
            rel_dir = Path(directory).relative_to(root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir
            keep = []
            for name in sorted(dirnames):
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if not self.excluded(rel) or self.may_reinclude_below(rel):
                    keep.append(name)
            dirnames[:] = keep
            for name in sorted(filenames):
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if not self.excluded(rel):
                    files.append(rel)
        return files


def docker_context(destination: Path) -> Path:
    """Copy the files `docker build .` would send into destination."""
    rules = DockerIgnore.load(ROOT / ".dockerignore")
    for rel in rules.context(ROOT):
        target = destination / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return destination


def emulate_copy(stage: Stage, context: Path, fs_root: Path) -> None:
    """Apply a stage's `COPY <context paths> <dest>` instructions under fs_root."""
    workdir = "/"
    for ins in stage.instructions:
        if ins.keyword == "WORKDIR":
            workdir = os.path.join(workdir, ins.args)
        if ins.keyword != "COPY" or "--from" in ins.args:
            continue
        words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
        *sources, dest = words
        dest_path = fs_root / os.path.join(workdir, dest).lstrip("/")
        for source in sources:
            matches = sorted(context.glob(source.rstrip("/")))
            assert matches, (f"Dockerfile:{ins.line}: COPY {source}: not in the build "
                             "context (check .dockerignore)")
            for match in matches:
                if match.is_dir():
                    shutil.copytree(match, dest_path, dirs_exist_ok=True)
                elif dest.endswith("/") or len(sources) > 1:
                    dest_path.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(match, dest_path / match.name)
                else:
                    dest_path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(match, dest_path)


# --- a Kustomize-equivalent build ---------------------------------------------------------

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}
# Strategic-merge keys of the list fields these manifests patch (from the Kubernetes API).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name",
              "env": "name", "volumeMounts": "mountPath"}


def strategic_merge(base: Any, patch: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for name, value in patch.items():
            if value is None:
                out.pop(name, None)
            elif name in out:
                out[name] = strategic_merge(out[name], value, name)
            else:
                out[name] = value
        return out
    if isinstance(base, list) and isinstance(patch, list):
        merge_key = MERGE_KEYS.get(key)
        if key == "ports":
            merge_key = "containerPort" if any("containerPort" in p for p in base) else "port"
        if merge_key is None:
            return patch
        merged = list(base)
        for item in patch:
            index = next((n for n, old in enumerate(merged)
                          if old.get(merge_key) == item.get(merge_key)), None)
            if index is None:
                merged.append(item)
            else:
                merged[index] = strategic_merge(merged[index], item)
        return merged
    return patch


def api_group(resource: dict[str, Any]) -> str:
    version = str(resource["apiVersion"])
    return version.split("/")[0] if "/" in version else ""


def pod_specs(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = resource.get("spec", {})
    if resource["kind"] == "Pod":
        return [spec]
    template = spec.get("template", {}).get("spec")
    return [template] if isinstance(template, dict) else []


def set_images(resources: list[dict[str, Any]], images: list[dict[str, Any]]) -> None:
    for image in images:
        unknown = set(image) - {"name", "newName", "newTag", "digest"}
        assert not unknown, f"images: unsupported keys {unknown}"
        for resource in resources:
            for spec in pod_specs(resource):
                for container in spec.get("initContainers", []) + spec.get("containers", []):
                    name = re.split(r"[@]|:(?=[^/]*$)", container["image"])[0]
                    if name != image["name"]:
                        continue
                    ref = image.get("newName", name)
                    if "digest" in image:
                        ref += "@" + image["digest"]
                    elif "newTag" in image:
                        ref += ":" + str(image["newTag"])
                    container["image"] = ref


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """`kustomize build` for the features deploy/ uses; anything else fails loudly."""
    kfile = directory / "kustomization.yaml"
    assert kfile.is_file(), f"{directory}: no kustomization.yaml"
    spec = read_yaml(kfile)
    unknown = set(spec) - KUSTOMIZATION_KEYS
    assert not unknown, (f"{kfile}: {sorted(unknown)} not supported by this test's "
                         "Kustomize emulation; extend tests/deploy/test_deploy.py")
    assert spec.get("kind") == "Kustomization"
    resources: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        assert path.exists(), f"{kfile}: resource {entry} does not exist"
        if path.is_dir():
            resources += kustomize_build(path)
        else:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
            assert docs, f"{path}: no YAML document"
            for doc in docs:
                assert isinstance(doc, dict), f"{path}: not a mapping"
                assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path}: not an object"
            resources += docs
    ids = [(api_group(r), r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"])
           for r in resources]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"{kfile}: duplicate resources {duplicates}"
    for patch in spec.get("patches", []):
        assert set(patch) <= {"path", "target"}, f"{kfile}: unsupported patch {patch}"
        body = read_yaml(directory / patch["path"])
        target = patch.get("target") or {"kind": body["kind"], "name": body["metadata"]["name"]}
        hits = [n for n, r in enumerate(resources)
                if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]]
        assert hits, f"{kfile}: patch {patch['path']} matches no resource"
        for n in hits:
            resources[n] = strategic_merge(resources[n], body)
    set_images(resources, spec.get("images", []))
    return resources


@pytest.fixture(scope="module")
def builds() -> dict[str, list[dict[str, Any]]]:
    return {build_id(path): kustomize_build(path) for path in BUILDS}


def find(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> list[
        dict[str, Any]]:
    return [r for r in resources
            if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]


def one(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(resources, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def deployment(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return one(resources, "Deployment", APP)


def container(spec: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    found = [c for c in spec.get("initContainers" if init else "containers", [])
             if c["name"] == name]
    assert len(found) == 1, f"no {'init ' if init else ''}container named {name}"
    return found[0]


def sidecar(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return container(deployment(resources)["spec"]["template"]["spec"], SIDECAR, init=True)


def named_port(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    found = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    assert found, f"container {c['name']} has no port named {port}"
    return int(found[0])


def configmap_config(resources: list[dict[str, Any]], dest: Path) -> Path:
    """Write the gateproxy.yaml the sidecar mounts (by following its volume) into dest."""
    spec = deployment(resources)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = [m for m in sidecar(resources).get("volumeMounts", [])
              if "configMap" in volumes.get(m["name"], {})]
    assert len(mounts) == 1, "the sidecar must mount exactly one ConfigMap"
    name = volumes[mounts[0]["name"]]["configMap"]["name"]
    data = one(resources, "ConfigMap", name)["data"]
    assert "gateproxy.yaml" in data, f"ConfigMap {name} has no gateproxy.yaml key"
    dest.write_text(data["gateproxy.yaml"])
    return dest


def container_env(c: dict[str, Any]) -> dict[str, str]:
    """A container's environment, with every Secret reference replaced by a marker."""
    out: dict[str, str] = {}
    for item in c.get("env", []):
        if "value" in item:
            out[item["name"]] = str(item["value"])
        else:
            assert "secretKeyRef" in item.get("valueFrom", {}), item
            out[item["name"]] = "s3cret-from-the-Secret"
    return out


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ==========================================================================================
# The Dockerfile
# ==========================================================================================


def test_dockerfile_passes_hadolint() -> None:
    """hadolint at its strictest threshold: any finding, even style, fails."""
    done = subprocess.run([tool("hadolint"), "--no-color", "Dockerfile"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_ignores_are_explained() -> None:
    """No rule is silenced without a comment saying why (inline or in a config file)."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for n, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            above = lines[n - 1].strip() if n else ""
            why = f"Dockerfile:{n + 1}: explain the ignored rule in a comment just above"
            assert above.startswith("#"), why
            assert "hadolint" not in above, why
            assert len(above) > 10, why
    for name in (".hadolint.yaml", ".hadolint.yml"):
        config = ROOT / name
        if config.exists():
            for line in config.read_text().splitlines():
                if re.match(r"\s*-\s*(DL|SC)\d+", line):
                    assert "#" in line, f"{name}: explain `{line.strip()}` in a comment"


def test_dockerfile_builds_a_small_pinned_non_root_image(dockerfile: Dockerfile) -> None:
    """Pinned slim base, wheel built in a separate stage, numeric user, exec-form command."""
    df = dockerfile
    assert len(df.stages) >= 2, "multi-stage: build the wheel in one stage, run in another"
    for stage in df.stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?",
                            stage.base), f"base image not a pinned python slim: {stage.base}"
    assert len({s.base for s in df.stages}) == 1, (
        "the venv copied between stages needs the same Python: use one base image")
    build = df.stages[0]
    assert any("pip wheel --no-deps" in i.args for i in build.all("RUN"))
    final = df.final
    final_runs = " ".join(i.args for i in final.all("RUN"))
    for forbidden in ("pip install", "apt-get install", "gcc", "build-essential", "curl"):
        assert forbidden not in final_runs, f"the final stage must not run `{forbidden}`"
    copies = [i.args for i in final.all("COPY") if i.args.startswith("--from=")]
    assert any(f"--from={build.alias}" in c for c in copies), "final stage copies the build"
    user = final.last("USER")
    assert user is not None, "the final stage must set USER"
    assert re.fullmatch(r"\d+(:\d+)?", user.args), "USER must be numeric (runAsNonRoot)"
    assert int(user.args.split(":")[0]) != 0, "USER must not be root"
    assert entrypoint_argv(df) == ["gateproxy", "serve"]


def test_dockerfile_bakes_the_default_config(dockerfile: Dockerfile) -> None:
    """The image starts with a valid configuration and nothing mounted."""
    env = dockerfile.final.env()
    target = env.get("GATEPROXY_CONFIG")
    assert target == "/etc/gateproxy/gateproxy.yaml"
    copies = [shlex.split(i.args) for i in dockerfile.final.all("COPY")
              if not i.args.startswith("--from")]
    assert ["deploy/gateproxy.yaml", target] in copies, (
        "COPY deploy/gateproxy.yaml to $GATEPROXY_CONFIG")
    done = check_config(BAKED_CONFIG)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_ports_and_healthcheck_match_the_config(dockerfile: Dockerfile) -> None:
    """EXPOSE and the HEALTHCHECK URL follow the baked configuration's ports and prefix."""
    cfg = effective(BAKED_CONFIG)
    exposed = {int(p.split("/")[0]) for i in dockerfile.final.all("EXPOSE")
               for p in i.args.split()}
    assert exposed == {cfg["listen"]["port"], cfg["admin_port"]}
    argv, options = healthcheck_argv(dockerfile)
    assert Path(argv[0]).name.startswith("python"), "HEALTHCHECK runs Python (no curl)"
    assert not {"curl", "wget"} & set(" ".join(argv).split()), argv
    url = dockerfile.final.env().get("GATEPROXY_HEALTHCHECK_URL")
    assert url == f"http://127.0.0.1:{cfg['admin_port']}{cfg['admin_prefix']}/live"
    assert "GATEPROXY_HEALTHCHECK_URL" in " ".join(argv)
    timeout = int(options.get("timeout", "30s").rstrip("s"))
    assert "timeout=" in argv[-1], "urlopen must have its own timeout"
    assert timeout >= 2, "HEALTHCHECK --timeout must leave room for urlopen's timeout"


def test_dockerignore_sends_only_what_the_build_needs(
        dockerfile: Dockerfile, tmp_path: Path) -> None:
    """No secrets, venvs or tests in the context, and every COPY source present."""
    rules = DockerIgnore.load(ROOT / ".dockerignore")
    files = rules.context(ROOT)
    assert "pyproject.toml" in files
    assert "deploy/gateproxy.yaml" in files
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gateproxy").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert sources <= set(files), f"missing from the context: {sorted(sources - set(files))}"
    for rel in files:
        top = rel.split("/")[0]
        assert top not in {".git", ".venv", "tests", "bench", ".ci"}, rel
        assert "__pycache__" not in rel, rel
        assert not rel.endswith(".pyc"), rel
        assert not rel.startswith("deploy/kustomize"), rel
    # Every COPY from the context finds its sources (what breaks `docker build` first).
    context = docker_context(tmp_path / "context")
    for stage in dockerfile.stages:
        emulate_copy(stage, context, tmp_path / "fs")


# ==========================================================================================
# YAML and Kubernetes schemas
# ==========================================================================================


def test_yamllint_passes_on_deploy() -> None:
    """Every YAML file under deploy/, with deploy/.yamllint.yaml, warnings included."""
    done = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(DEPLOY / ".yamllint.yaml"),
         str(DEPLOY)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_manifest_file_is_used() -> None:
    """No manifest lies in deploy/kustomize without being applied by some kustomization."""
    used: set[Path] = set()
    for kfile in KUSTOMIZE.rglob("kustomization.yaml"):
        spec = read_yaml(kfile)
        used.add(kfile.resolve())
        for entry in spec.get("resources", []):
            used.add((kfile.parent / entry).resolve())
        for patch in spec.get("patches", []):
            used.add((kfile.parent / patch["path"]).resolve())
    files = {p.resolve() for p in KUSTOMIZE.rglob("*.yaml")}
    assert files <= used, f"not referenced by any kustomization: {sorted(files - used)}"


@pytest.mark.parametrize("directory", BUILDS, ids=build_id)
def test_kustomize_build_validates_against_kubernetes_1_33(directory: Path) -> None:
    """Strict schemas: an unknown or misspelt field fails, as `kubectl apply` would."""
    import jsonschema
    import kubernetes_validate

    resources = kustomize_build(directory)
    assert resources
    # Custom resources: kubernetes-validate has no schemas for them, so each is checked
    # against a strict subset of its CRD's schema kept in tests/support/deploy/.
    crd_schemas = {("monitoring.coreos.com/v1", kind):
                   json.loads((SUPPORT / f"{kind.lower()}-v1.schema.json").read_text())
                   for kind in ("ServiceMonitor", "PrometheusRule")}
    for resource in resources:
        key = (resource["apiVersion"], resource["kind"])
        where = f"{build_id(directory)}: {resource['kind']}/{resource['metadata']['name']}"
        if key in crd_schemas:
            errors = list(jsonschema.Draft202012Validator(crd_schemas[key]).iter_errors(
                resource))
            assert not errors, f"{where}: {[e.message for e in errors]}"
            continue
        try:
            kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{where}: no Kubernetes {K8S_VERSION} schema for {key}")


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_canonical(v) for v in value]
        if items and all(isinstance(i, dict) and "name" in i for i in items):
            items.sort(key=lambda i: str(i["name"]))
        return items
    return value


@pytest.mark.parametrize("directory", BUILDS, ids=build_id)
def test_emulated_build_equals_kubectl_kustomize(directory: Path) -> None:
    """The emulation is checked against the real thing wherever kubectl is installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (not on PyPI); the emulated build is validated "
                    "by the other tests")
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    real = [d for d in yaml.safe_load_all(done.stdout) if d]

    def order(r: dict[str, Any]) -> tuple[str, str]:
        return r["kind"], r["metadata"]["name"]

    ours = sorted(kustomize_build(directory), key=order)
    assert _canonical(sorted(real, key=order)) == _canonical(ours)


# ==========================================================================================
# The ConfigMap and check-config
# ==========================================================================================


def test_configmap_carries_the_baked_config(builds: dict[str, list[dict[str, Any]]],
                                            tmp_path: Path) -> None:
    """The image and the cluster run the same defaults unless someone means otherwise."""
    for name, resources in builds.items():
        text = configmap_config(resources, tmp_path / f"{name.replace('/', '-')}.yaml")
        assert text.read_text() == BAKED_CONFIG.read_text(), (
            f"{name}: the ConfigMap's gateproxy.yaml differs from deploy/gateproxy.yaml; "
            "run: python tests/support/deploy/sync_configmap.py")


@pytest.mark.parametrize("directory", BUILDS, ids=build_id)
def test_check_config_accepts_the_configmap_with_the_pod_env(
        directory: Path, tmp_path: Path) -> None:
    """The mounted file plus the sidecar's environment (as in the pod) is a valid config."""
    resources = kustomize_build(directory)
    path = configmap_config(resources, tmp_path / "gateproxy.yaml")
    env = container_env(sidecar(resources))
    done = check_config(path, env)
    assert done.returncode == 0, f"{build_id(directory)}:\n{done.stdout}\n{done.stderr}"
    assert env[SECRET_ENV] not in done.stdout + done.stderr, "the secret was printed"
    printed = yaml.safe_load(done.stdout)
    routes = printed["dependencies"][0]["gated_routes"]
    assert "/api/containers" in routes
    assert {"prefix": "/test/workspaces", "methods": ["POST"]} in routes


# ==========================================================================================
# No drift: what the manifests name is what the code serves
# ==========================================================================================


@pytest.mark.parametrize("directory", BUILDS, ids=build_id)
def test_sidecar_is_native_and_probes_the_admin_port(directory: Path, tmp_path: Path) -> None:
    """Native sidecar, and probes on the paths and port the configuration serves them on."""
    resources = kustomize_build(directory)
    cfg = effective(configmap_config(resources, tmp_path / "c.yaml"),
                    container_env(sidecar(resources)))
    spec = deployment(resources)["spec"]["template"]["spec"]
    proxy = sidecar(resources)
    assert proxy["restartPolicy"] == "Always", "native sidecar: restartPolicy Always"
    assert SIDECAR not in [c["name"] for c in spec["containers"]]
    assert named_port(proxy, "http") == cfg["listen"]["port"]
    assert named_port(proxy, "admin") == cfg["admin_port"]
    expected = {"startupProbe": "live", "livenessProbe": "live", "readinessProbe": "ready"}
    for probe, endpoint in expected.items():
        get = proxy[probe]["httpGet"]
        assert get["path"] == f"{cfg['admin_prefix']}/{endpoint}", probe
        assert named_port(proxy, get["port"]) == cfg["admin_port"], probe
    assert cfg["admin_prefix"] == "/_gateproxy"
    for c in spec["containers"]:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            assert port != cfg["admin_port"] or c["name"] == SIDECAR


@pytest.mark.parametrize("directory", BUILDS, ids=build_id)
def test_platform_server_sits_behind_the_proxy(directory: Path, tmp_path: Path) -> None:
    """Its port is gateproxy's upstream, and no Service reaches it but through gateproxy."""
    resources = kustomize_build(directory)
    cfg = effective(configmap_config(resources, tmp_path / "c.yaml"),
                    container_env(sidecar(resources)))
    spec = deployment(resources)["spec"]["template"]["spec"]
    app = container(spec, APP)
    env = container_env(app)
    upstream_port = url_port(cfg["upstream"]["url"])
    assert cfg["upstream"]["url"].startswith("http://127.0.0.1:"), "upstream on loopback"
    assert int(env["PORT"]) == upstream_port, "platform-server PORT != gateproxy upstream.url"
    dep = cfg["dependencies"][0]
    assert env["DOCKER_RUNNER_BASE_URL"] == dep["base_url"]
    assert env["DOCKER_RUNNER_OPTIONAL"].lower() == str(dep["optional"]).lower()
    assert "ports" not in app, "the platform-server's own port is not advertised"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert app[probe]["httpGet"]["port"] == upstream_port
    pod_labels = deployment(resources)["spec"]["template"]["metadata"]["labels"]
    proxy = sidecar(resources)
    for service in find(resources, "Service"):
        if not selects(service["spec"].get("selector", {}), pod_labels):
            continue
        name = service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            target = named_port(proxy, port.get("targetPort", port["port"]))
            assert target != upstream_port, f"Service {name} exposes the platform-server"
            if service["spec"].get("clusterIP") == "None":
                assert target == cfg["admin_port"], "the headless Service is for scraping only"
            else:
                assert target == cfg["listen"]["port"], f"{name} must target the proxy port"
    assert one(resources, "Service", APP)["spec"]["type"] == "ClusterIP"


@pytest.mark.parametrize("directory", BUILDS, ids=build_id)
def test_network_policy_admits_the_proxy_ports_only(directory: Path, tmp_path: Path) -> None:
    """The platform-server binds 0.0.0.0: the policy is what keeps 3010 inside the pod."""
    resources = kustomize_build(directory)
    cfg = effective(configmap_config(resources, tmp_path / "c.yaml"),
                    container_env(sidecar(resources)))
    pod_labels = deployment(resources)["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in find(resources, "NetworkPolicy")
                if selects(p["spec"]["podSelector"].get("matchLabels", {}), pod_labels)]
    assert policies, "a NetworkPolicy must select the platform-server pods"
    ports = set()
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("ports"), "an ingress rule without ports opens every port"
            ports |= {int(p["port"]) for p in rule["ports"]}
    assert ports == {cfg["listen"]["port"], cfg["admin_port"]}


def test_production_overlay_reads_the_admin_token_from_an_optional_secret(
        builds: dict[str, list[dict[str, Any]]]) -> None:
    """The token comes from the operator's Secret; `optional`, so pods start without it
    (and then accept maintenance from the loopback only). The README creates that Secret."""
    entries = [e for e in sidecar(builds["overlays/production"]).get("env", [])
               if e["name"] == TOKEN_ENV]
    assert len(entries) == 1, f"the production gateproxy container needs {TOKEN_ENV}"
    assert set(entries[0]) == {"name", "valueFrom"}, "a reference only, never a value"
    assert entries[0]["valueFrom"] == {"secretKeyRef": TOKEN_SECRET}
    readme = (DEPLOY / "README.md").read_text().replace("\\\n", " ")
    created = {(name, key) for name, flags in re.findall(
        r"create secret generic ([\w.-]+)((?:\s+--from-literal=[\w.-]+=\S+)+)", readme)
        for key in re.findall(r"--from-literal=([\w.-]+)=", flags)}
    assert (TOKEN_SECRET["name"], TOKEN_SECRET["key"]) in created, (
        "deploy/README.md must give the command that creates the token's Secret")


def test_no_manifest_carries_an_admin_token_or_a_secret(
        builds: dict[str, list[dict[str, Any]]]) -> None:
    """Secrets are the operator's: no Secret object, no literal token, anywhere."""
    for name, resources in builds.items():
        assert not find(resources, "Secret"), f"{name}: ships a Secret"
        for resource in resources:
            for spec in pod_specs(resource):
                for c in spec.get("initContainers", []) + spec.get("containers", []):
                    for entry in c.get("env", []):
                        if entry["name"] != TOKEN_ENV:
                            continue
                        where = f"{name}: {c['name']}: {TOKEN_ENV}"
                        assert c["name"] == SIDECAR, f"{where}: only gateproxy reads it"
                        assert "value" not in entry, f"{where}: a literal token"
                        assert "secretKeyRef" in entry.get("valueFrom", {}), where
    token = read_yaml(COMPOSE)["services"][SIDECAR].get("environment", {})
    assert token.get(TOKEN_ENV, None) is None, "compose passes the token through by name"


def admin_rules(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The NetworkPolicy ingress rules that admit gateproxy's admin port."""
    proxy = sidecar(resources)
    admin = named_port(proxy, "admin")
    return [rule for policy in find(resources, "NetworkPolicy")
            for rule in policy["spec"].get("ingress", [])
            if any(named_port(proxy, p["port"]) == admin for p in rule.get("ports", []))]


@pytest.mark.parametrize("directory", BUILDS, ids=build_id)
def test_network_policy_admits_the_admin_port_from_labelled_namespaces_only(
        directory: Path) -> None:
    """No `from` (or a `{}` peer, or an empty namespaceSelector) would admit every pod of
    every namespace; kubelet probes need no peer (the node's traffic is always allowed)."""
    rules = admin_rules(kustomize_build(directory))
    assert rules, "no NetworkPolicy rule admits the admin port"
    for rule in rules:
        peers = rule.get("from")
        assert peers, "the admin port's rule needs a `from`"
        for peer in peers:
            assert peer, "an empty peer `{}` admits everyone"
            assert set(peer) <= {"namespaceSelector", "podSelector"}, (
                f"peers are labelled namespaces, not {sorted(set(peer))}")
            labels = peer.get("namespaceSelector", {}).get("matchLabels") or {}
            assert labels, "a namespaceSelector without matchLabels admits every namespace"
            assert all(key and value for key, value in labels.items()), labels


def test_admin_access_label_is_the_one_the_docs_set(
        builds: dict[str, list[dict[str, Any]]]) -> None:
    """The operator runs the README's `kubectl label namespace`: it must set the label the
    policy selects, and no stale key may linger in the README or the policy's comment."""
    labels = {f"{key}={value}" for rule in admin_rules(builds["base"])
              for peer in rule["from"]
              for key, value in peer["namespaceSelector"]["matchLabels"].items()}
    assert len(labels) == 1, labels
    (label,) = labels
    key = label.partition("=")[0]
    for path in (DEPLOY / "README.md", BASE / "networkpolicy.yaml"):
        text = path.read_text()
        commands = set(re.findall(r"kubectl(?: -n \S+)? label namespace \S+ (\S+=\S+)", text))
        assert commands == {label}, f"{path.name}: label commands {commands}, policy {label}"
        keys = set(re.findall(r"gateproxy\.agyn\.io/[\w.-]+", text))
        assert keys == {key}, f"{path.name}: label keys {keys}, policy {key}"


@pytest.mark.parametrize("directory", BUILDS, ids=build_id)
def test_pod_is_hardened_and_drains_in_time(directory: Path, tmp_path: Path,
                                            dockerfile: Dockerfile) -> None:
    """The issue's securityContext, and a grace period longer than gateproxy's drain."""
    resources = kustomize_build(directory)
    cfg = effective(configmap_config(resources, tmp_path / "c.yaml"),
                    container_env(sidecar(resources)))
    spec = deployment(resources)["spec"]["template"]["spec"]
    proxy = sidecar(resources)
    app = container(spec, APP)
    pre_stop = app.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    budget = pre_stop + (cfg["shutdown_delay_ms"] + cfg["shutdown_grace_ms"]) / 1000
    assert spec["terminationGracePeriodSeconds"] > budget
    assert spec["enableServiceLinks"] is False, "service links would inject DOCKER_RUNNER_PORT"
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    user = dockerfile.final.last("USER")
    assert user is not None
    uid = int(user.args.split(":")[0])
    for c in (proxy, app):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert "add" not in sc["capabilities"], c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
        assert "memory" in c["resources"]["limits"], c["name"]
        assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), c["name"]
    assert proxy["securityContext"]["runAsUser"] == uid, "the image's USER"
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_dir = str(Path(dockerfile.final.env()["GATEPROXY_CONFIG"]).parent)
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    assert "configMap" in volumes[mounts[config_dir]["name"]], "ConfigMap over /etc/gateproxy"
    assert "subPath" not in mounts[config_dir], "subPath mounts never see ConfigMap updates"
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    for c in (proxy, app):
        secret = [e for e in c.get("env", []) if e["name"] == SECRET_ENV]
        assert len(secret) == 1, c["name"]
        assert "secretKeyRef" in secret[0].get("valueFrom", {}), "the secret comes from a Secret"


@pytest.mark.parametrize("directory", BUILDS, ids=build_id)
def test_scraping_targets_the_metrics_endpoint(directory: Path, tmp_path: Path) -> None:
    """Annotations and ServiceMonitor point at admin_port + admin_prefix + /metrics."""
    resources = kustomize_build(directory)
    cfg = effective(configmap_config(resources, tmp_path / "c.yaml"),
                    container_env(sidecar(resources)))
    metrics = f"{cfg['admin_prefix']}/metrics"
    annotations = deployment(resources)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == cfg["admin_port"]
    assert annotations["prometheus.io/path"] == metrics
    for monitor in find(resources, "ServiceMonitor"):
        services = [s for s in find(resources, "Service")
                    if selects(monitor["spec"]["selector"]["matchLabels"],
                               s["metadata"].get("labels", {}))]
        assert len(services) == 1, "the ServiceMonitor must select exactly one Service"
        ports = {p["name"]: p for p in services[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["path"] == metrics
            target = ports[endpoint["port"]]["targetPort"]
            assert named_port(sidecar(resources), target) == cfg["admin_port"]


def test_production_overlay_scales_and_limits_disruption(
        builds: dict[str, list[dict[str, Any]]]) -> None:
    """HPA owns replicas, the PDB selects the pods, rollouts keep capacity."""
    resources = builds["overlays/production"]
    dep = deployment(resources)
    assert "replicas" not in dep["spec"], "the HPA owns replicas"
    hpa = one(resources, "HorizontalPodAutoscaler", APP)
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", APP)
    assert 1 < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(resources, "PodDisruptionBudget", APP)
    assert selects(pdb["spec"]["selector"]["matchLabels"],
                   dep["spec"]["template"]["metadata"]["labels"])
    assert find(resources, "ServiceMonitor"), "the production overlay has a ServiceMonitor"
    assert find(resources, "PrometheusRule"), "the production overlay has the alerts"
    strategy = deployment(builds["base"])["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0, "a rollout never drops below the replica count"


def package_version() -> str:
    """The version as the code reports it (`gateproxy --version` prints `gateproxy X.Y.Z`)."""
    done = subprocess.run([sys.executable, "-m", "gateproxy", "--version"], cwd=ROOT,
                          env=clean_env(), capture_output=True, text=True, timeout=60,
                          check=True)
    return (done.stdout + done.stderr).split()[-1]


def test_image_tag_is_the_package_version() -> None:
    """The manifests deploy the image of the code in this checkout."""
    version = package_version()
    images = {i["name"]: i for i in read_yaml(BASE / "kustomization.yaml")["images"]}
    assert str(images[SIDECAR]["newTag"]) == version, "bump the image tag with the version"


@pytest.mark.parametrize("directory", BUILDS, ids=build_id)
def test_probe_and_scrape_paths_are_served(directory: Path, tmp_path: Path) -> None:
    """Run gateproxy with the ConfigMap's settings and ask it every path the manifests use.

    Ports are remapped to free loopback ports (the manifests' ports are compared with the
    configuration by the tests above); paths and admin settings stay as shipped.
    """
    resources = kustomize_build(directory)
    shipped = read_yaml(configmap_config(resources, tmp_path / "shipped.yaml"))
    proxy_port, admin_port = free_port(), free_port()
    config = tmp_path / "gateproxy.yaml"
    config.write_text(yaml.safe_dump(loopback_variant(shipped, proxy_port, admin_port)))
    ports = {int(shipped["listen"]["port"]): proxy_port, int(shipped["admin_port"]): admin_port}
    proxy = sidecar(resources)
    urls = [f"http://127.0.0.1:{ports[named_port(proxy, p['httpGet']['port'])]}"
            f"{p['httpGet']['path']}"
            for p in (proxy["startupProbe"], proxy["livenessProbe"], proxy["readinessProbe"])]
    annotations = deployment(resources)["spec"]["template"]["metadata"]["annotations"]
    metrics = (f"http://127.0.0.1:{ports[int(annotations['prometheus.io/port'])]}"
               f"{annotations['prometheus.io/path']}")
    env = clean_env(**{k: v for k, v in container_env(proxy).items()
                       if k in {SECRET_ENV, "GATEPROXY_LOG_FORMAT", "GATEPROXY_LOG_LEVEL"}})
    log = tmp_path / "gateproxy.log"
    argv = [sys.executable, "-m", "gateproxy", "serve", "--config", str(config)]
    with running(argv, env, ROOT, log) as proc:
        # Readiness follows the start: with `workers: auto`, until a worker listens.
        wait_until(lambda: proc.poll() is not None or all(answers(u, 200) for u in urls),
                   30, "gateproxy to answer its startup, liveness and readiness probes")
        assert proc.poll() is None, f"gateproxy exited:\n{log_tail(log)}"
        for url in urls:
            assert http_get(url)[0] == 200, f"{url}\n{log_tail(log)}"
        status, headers, body = http_get(metrics)
        assert status == 200, metrics
        assert headers["Content-Type"].startswith("text/plain"), headers
        assert b"# TYPE" in body
        # The Service's port: gated routes answer 503 themselves while docker-runner is away.
        wait_until(lambda: answers(f"http://127.0.0.1:{proxy_port}/api/containers", 503), 10,
                   "the gate to close")
        status, _, body = http_get(f"http://127.0.0.1:{proxy_port}/api/containers")
        assert json.loads(body) == {"error": {"code": "docker_runner_not_ready",
                                              "message": "docker-runner not ready"}}
        # With admin_port set, the admin paths are not answered on the proxy's port.
        assert http_get(f"http://127.0.0.1:{proxy_port}{shipped['admin_prefix']}/live")[0] != 200


# ==========================================================================================
# Compose and the README
# ==========================================================================================


def _published(entry: str) -> tuple[str | None, int, int]:
    parts = entry.split(":")
    host_ip = parts[0] if len(parts) == 3 else None
    return host_ip, int(parts[-2]), int(parts[-1])


def test_compose_matches_the_image_and_config() -> None:
    """The single-machine setup has the pod's shape: shared netns, only proxy ports out."""
    cfg = baked_config()
    compose = read_yaml(COMPOSE)
    services = compose["services"]
    proxy, app = services[SIDECAR], services[APP]
    assert (COMPOSE.parent / proxy["build"]["context"] / proxy["build"]["dockerfile"]).is_file()
    published = [_published(p) for p in proxy["ports"]]
    assert {c for _, _, c in published} == {cfg["listen"]["port"], cfg["admin_port"]}
    for host_ip, _, container_port in published:
        if container_port == cfg["admin_port"]:
            assert host_ip == "127.0.0.1", "admin port published on loopback only"
    for name, service in services.items():
        assert "ports" not in service or name == SIDECAR, f"{name} publishes ports"
    assert app["network_mode"] == f"service:{SIDECAR}", "platform-server in gateproxy's netns"
    assert app["depends_on"][SIDECAR]["condition"] == "service_healthy"
    assert int(app["environment"]["PORT"]) == url_port(cfg["upstream"]["url"])
    assert app["environment"]["DOCKER_RUNNER_BASE_URL"] == cfg["dependencies"][0]["base_url"]
    grace = int(str(proxy["stop_grace_period"]).rstrip("s"))
    assert grace > (cfg["shutdown_delay_ms"] + cfg["shutdown_grace_ms"]) / 1000
    assert proxy["read_only"] is True
    for service in services.values():
        secret = service.get("environment", {}).get(SECRET_ENV)
        assert secret is None or secret.startswith("${"), "no literal secret in compose"


def test_compose_interpolates_with_no_variable_set() -> None:
    """Compose interpolates the whole file for every command: a required `${VAR:?}` (or
    `${VAR?}`) would make `docker compose down` fail until it is set. Every variable the
    file reads must have a default, except a secret passed through by name (no value)."""
    text = "\n".join(line.split(" #")[0] for line in COMPOSE.read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    for match in re.finditer(r"(?<!\$)\$\{([^}]*)\}|(?<!\$)\$([A-Za-z_]\w*)", text):
        expression = match.group(1) if match.group(1) is not None else match.group(2)
        assert re.fullmatch(r"[A-Za-z_]\w*:?-[^}]*", expression), (
            f"compose.yaml: ${{{expression}}} has no default (`${{VAR:-default}}`)")
    secrets = [s.get("environment", {}) for s in read_yaml(COMPOSE)["services"].values()]
    assert all(SECRET_ENV in env and env[SECRET_ENV] is None for env in secrets), (
        f"{SECRET_ENV} is passed through from the shell by name, never given a value")


def test_readme_covers_every_knob_the_manifests_set() -> None:
    """An operator finds every variable the manifests, compose file and image set."""
    readme = (DEPLOY / "README.md").read_text()
    names: set[str] = set()
    for path in BUILDS:
        for resource in kustomize_build(path):
            for spec in pod_specs(resource):
                for c in spec.get("initContainers", []) + spec.get("containers", []):
                    names |= {e["name"] for e in c.get("env", [])}
    names |= set(read_yaml(COMPOSE)["services"][SIDECAR].get("environment", {}))
    names |= set(parse_dockerfile(ROOT / "Dockerfile").final.env()) - {"PATH"}
    missing = sorted(n for n in names if n not in readme)
    assert not missing, f"deploy/README.md does not explain {missing}"
    for phrase in ("kubectl apply -k", "docker run", "docker compose", "terminationGracePeriod",
                   *(f"overlays/{p.name}" for p in OVERLAYS)):
        assert phrase in readme, phrase


# ==========================================================================================
# The image, emulated: wheel -> fresh venv -> ENTRYPOINT and HEALTHCHECK
# ==========================================================================================


def run_healthcheck(argv: list[str], env: dict[str, str], cwd: Path) -> int:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=30,
                          check=False).returncode


@pytest.mark.slow
def test_image_entrypoint_and_healthcheck_from_a_fresh_wheel_install(
        dockerfile: Dockerfile, tmp_path: Path) -> None:
    """What `docker build` + `docker run` would do, minus the container."""
    # Build stage: the context as .dockerignore leaves it, the stage's COPYs, the wheel.
    context = docker_context(tmp_path / "context")
    fs = tmp_path / "fs"
    emulate_copy(dockerfile.stages[0], context, fs)
    workdir = dockerfile.stages[0].last("WORKDIR")
    assert workdir is not None
    src = fs / workdir.args.lstrip("/")
    wheels = tmp_path / "wheels"
    pip_env = clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir",
                    str(wheels), str(src)], env=pip_env, check=True, capture_output=True,
                   timeout=300)
    (wheel,) = wheels.glob("gateproxy-*.whl")
    # The venv the final stage copies, with the same extra the Dockerfile installs.
    run_line = " ".join(i.args for i in dockerfile.stages[0].all("RUN"))
    extra = re.search(r"\[(\w+)\]", run_line)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    spec = f"{wheel}[{extra.group(1)}]" if extra else str(wheel)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", spec],
                          env=pip_env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # Final stage: its ENV (PATH first), the baked config replaced by a mounted variant on
    # free loopback ports, and GATEPROXY_PORT from the environment winning over the file.
    baked = context / "deploy" / "gateproxy.yaml"
    proxy_port, admin_port = free_port(), free_port()
    shipped = read_yaml(baked)
    variant = loopback_variant(shipped, free_port(), admin_port, shutdown_delay_ms=2000)
    mounted = tmp_path / "etc" / "gateproxy.yaml"
    mounted.parent.mkdir()
    mounted.write_text(yaml.safe_dump(variant))
    image_env = dockerfile.final.env()
    env = clean_env()
    for key, value in image_env.items():
        env[key] = value.replace("$PATH", env.get("PATH", ""))
    env["PATH"] = env["PATH"].replace("/opt/gateproxy/bin", str(venv / "bin"))
    admin = f"http://127.0.0.1:{admin_port}{shipped['admin_prefix']}"
    env.update(GATEPROXY_CONFIG=str(mounted), GATEPROXY_PORT=str(proxy_port),
               GATEPROXY_HEALTHCHECK_URL=f"{admin}/live")
    env[SECRET_ENV] = "not-a-real-secret"
    argv = entrypoint_argv(dockerfile)
    resolved = shutil.which(argv[0], path=env["PATH"])
    assert resolved == str(venv / "bin" / argv[0]), f"{argv[0]} resolves to {resolved}"
    version = subprocess.run([resolved, "--version"], env=env, capture_output=True,
                             text=True, timeout=60, check=True)
    assert package_version() in version.stdout + version.stderr
    check, _ = healthcheck_argv(dockerfile)
    workdir_final = tmp_path / "workdir"
    workdir_final.mkdir()
    log = tmp_path / "gateproxy.log"

    with running([resolved, *argv[1:]], env, workdir_final, log) as proc:
        wait_until(lambda: proc.poll() is not None
                   or run_healthcheck(check, env, workdir_final) == 0,
                   40, "the HEALTHCHECK to pass")
        assert proc.poll() is None, f"gateproxy exited:\n{log_tail(log)}"
        # The image runs `workers: auto`: ready once a worker listens on the proxy's port.
        wait_until(lambda: answers(f"{admin}/ready", 200), 20, "ready to answer 200")
        status, headers, _ = http_get(f"{admin}/status")
        assert status == 200, "status page (templates packaged in the wheel?)"
        assert headers["Content-Type"].startswith("text/html")
        status, _, body = http_get(f"http://127.0.0.1:{proxy_port}/api/containers")
        assert status == 503, body
        # SIGTERM: ready turns 503 while live (the HEALTHCHECK) still passes, then exit 0.
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: answers(f"{admin}/ready", 503), 2, "ready to turn 503")
        assert run_healthcheck(check, env, workdir_final) == 0
        code = proc.wait(timeout=(variant["shutdown_delay_ms"] + variant["shutdown_grace_ms"])
                         / 1000 + 10)
        assert code == 0, log_tail(log)
        assert run_healthcheck(check, env, workdir_final) != 0, "HEALTHCHECK fails when down"
