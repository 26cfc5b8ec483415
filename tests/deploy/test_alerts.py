"""The shipped alerts are valid, unit-tested, and fire on what a real gateproxy exposes.

deploy/prometheus/gateproxy-alerts.yaml is the single source of the rules; the production
overlay's PrometheusRule is written from it (tests/support/deploy/sync_rules.py). promtool,
from Debian's `prometheus` package (.ci/run installs it), checks both, runs the unit tests
in gateproxy-alerts.test.yaml, and then evaluates the rules over scrapes of a real
gateproxy process: so an alert cannot refer to a series or a label gateproxy does not have.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateproxy.demo.standins import StandIn, docker_runner, platform_server
from tests.support.deploy import sync_rules
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "gateproxy-alerts.yaml"
UNIT_TESTS = ROOT / "deploy" / "prometheus" / "gateproxy-alerts.test.yaml"
PROMETHEUS_RULE = sync_rules.TARGET
# Series the rules read that gateproxy does not expose itself, and who does.
EXTERNAL_SERIES = {
    "up": "Prometheus, for every scrape target",
}
# Identifiers in PromQL that are not series: operators, keywords, and what follows `by` etc.
_KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
             "group_right", "offset", "inf", "nan"}
STEPS = 16  # scrapes of the real process, one per (compressed) minute of rule evaluation
TARGET_LABELS = {"job": "gateproxy", "instance": "gateproxy:9901"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is not installed (Debian package prometheus; CI installs it)")
    return found


def run_promtool(*args: str, stdin: str | None = None,
                 cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], input=stdin, cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules() if "alert" in rule]


def series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (enough PromQL for these rules)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, start = match.group(), match.start()
        if text[match.end():].lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function or an aggregation, or an operator
        if start > 0 and text[start - 1].isdigit():
            continue  # the unit of a duration (`offset 5m`) or an exponent
        names.add(word)
    return names


# ==========================================================================================
# The rules as files
# ==========================================================================================


def test_prometheusrule_is_written_from_the_rules_file() -> None:
    """One source of truth: the overlay's PrometheusRule carries the rules file's groups."""
    assert PROMETHEUS_RULE.read_text() == sync_rules.render(), (
        "the PrometheusRule differs from deploy/prometheus/gateproxy-alerts.yaml: "
        "run python tests/support/deploy/sync_rules.py")
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert resource["spec"] == yaml.safe_load(RULES.read_text())


def test_promtool_checks_the_rules_file_and_the_prometheusrule(tmp_path: Path) -> None:
    done = run_promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    # The PrometheusRule's spec is itself a rules file: check the one the overlay ships.
    spec = tmp_path / "prometheusrule-spec.yaml"
    spec.write_text(yaml.safe_dump(yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]))
    done = run_promtool("check", "rules", str(spec))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_the_rules_cover_what_operators_need() -> None:
    """Dependency down, retries exhausted, the platform-server down, gated rate, 5xx, and
    the process not ready."""
    exprs = {rule["alert"]: rule["expr"] for rule in rules()}
    assert "gateproxy_dependency_up" in exprs["GateproxyDependencyDown"]
    assert "gateproxy_probes_total" in exprs["GateproxyRetriesExhausted"]
    assert "gateproxy_gated_requests_total" in exprs["GateproxyGatedRequestsHigh"]
    assert 'status_class="5xx"' in exprs["GateproxyUpstreamErrors"]
    assert "gateproxy_ready" in exprs["GateproxyNotReady"]
    assert "gateproxy_upstream_up" in exprs["GateproxyUpstreamDown"]
    for rule in rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_promtool_unit_tests_pass() -> None:
    done = run_promtool("test", "rules", UNIT_TESTS.name, cwd=UNIT_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    checks = [check for case in cases for check in case.get("alert_rule_test", [])]
    for name in alert_names():
        mine = [check for check in checks if check["alertname"] == name]
        assert any(check.get("exp_alerts") for check in mine), f"{name}: no firing case"
        assert any(not check.get("exp_alerts") for check in mine), f"{name}: no quiet case"


def test_unit_tests_fail_when_an_alert_is_removed(tmp_path: Path) -> None:
    """Each alert's firing case really depends on it (a test that cannot fail is none)."""
    promtool()
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    document = yaml.safe_load(RULES.read_text())
    for name in alert_names():
        broken = {"groups": [{**group, "rules": [r for r in group["rules"]
                                                 if r.get("alert") != name]}
                             for group in document["groups"]]}
        (tmp_path / RULES.name).write_text(yaml.safe_dump(broken))
        done = run_promtool("test", "rules", UNIT_TESTS.name, cwd=tmp_path)
        assert done.returncode != 0, f"the unit tests pass without {name}"
        assert name in done.stdout + done.stderr


def test_series_names_are_read_from_expressions() -> None:
    """The parser the real-scrape test relies on finds selectors and nothing else."""
    expr = ('sum by (namespace, job) (rate(a_total{status_class="5xx"}[5m])) / '
            'sum without (x) (increase(b_total[10m])) > 0.05 and on (pod) c == 0 or up')
    assert series_names(expr) == {"a_total", "b_total", "c", "up"}


# ==========================================================================================
# The rules against a real gateproxy
# ==========================================================================================


@asynccontextmanager
async def gateproxy_process(tmp_path: Path, cfg: dict[str, Any]) -> AsyncIterator[
        tuple[int, int, Path]]:
    """A real `gateproxy serve` on port 0; yields its proxy and admin ports and its log."""
    config_file = tmp_path / "gateproxy.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "gateproxy.log"
    env = {k: v for k, v in os.environ.items()
           if not re.match(r"^(GATEPROXY_|DOCKER_RUNNER_|PLATFORM_SERVER_URL$)", k)}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateproxy", "serve", "--config", str(config_file),
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        listening = await wait_log(log, "listening", proc)
        yield int(listening["port"]), int(listening["adminPort"]), log
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def log_events(log: Path) -> list[dict[str, Any]]:
    """The JSON log lines written so far."""
    return [json.loads(line) for line in log.read_text(errors="replace").splitlines()
            if line.startswith("{")]


async def wait_log(log: Path, event: str, proc: asyncio.subprocess.Process | None = None,
                   timeout: float = 15.0) -> dict[str, Any]:
    """The first log line of `event`, waiting for it while the process runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in log_events(log) if line.get("event") == event]
        if found:
            return found[0]
        if proc is not None and proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    pytest.fail(f"no {event!r} log event; log lines: {log_events(log)[-20:]}")


def base_config(upstream_url: str, runner_url: str, **retry: int) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin_port": 0,
        "upstream": {"url": upstream_url},
        "log": {"format": "json", "level": "INFO"},
        "shutdown_delay_ms": 0,
        "dependencies": [{
            "name": "docker-runner",
            "base_url": runner_url,
            "gated_routes": ["/api/containers"],
            "probe_interval_ms": 200,
            "retry": {"base_delay_ms": 20, "max_delay_ms": 50, "jitter_ms": 0, **retry},
        }],
    }


Traffic = Callable[[aiohttp.ClientSession, int], Awaitable[None]]


async def record_scrapes(port: int, admin_port: int, traffic: Traffic) -> list[str]:
    """STEPS scrapes of /_gateproxy/metrics, each after one round of `traffic`."""
    scrapes = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for _ in range(STEPS):
            await traffic(http, port)
            async with http.get(f"http://127.0.0.1:{admin_port}/_gateproxy/metrics") as resp:
                assert resp.status == 200
                scrapes.append(await resp.text())
    return scrapes


async def requests(http: aiohttp.ClientSession, port: int, path: str, count: int,
                   status: int) -> None:
    for _ in range(count):
        async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
            await resp.read()
            assert resp.status == status, path


def series_notation(name: str, labels: dict[str, str]) -> str:
    inner = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def as_input_series(scrapes: list[str]) -> list[dict[str, str]]:
    """The scrapes as promtool input series: scrape n is the sample at minute n, with the
    labels a scrape adds (job, instance), and `up` as Prometheus records it."""
    values: dict[str, list[str]] = {}
    for n, text in enumerate(scrapes):
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = series_notation(sample.name, {**sample.labels, **TARGET_LABELS})
                values.setdefault(key, ["_"] * len(scrapes))[n] = repr(float(sample.value))
    values[series_notation("up", TARGET_LABELS)] = ["1"] * len(scrapes)
    return [{"series": key, "values": " ".join(v)} for key, v in sorted(values.items())]


def firing_alerts(tmp_path: Path, scrapes: list[str],
                  expected: dict[str, str | None]) -> None:
    """Run the rules over the scrapes and check that exactly the `expected` alerts fire
    at the end, each with the `dependency` label given (None: the alert has none)."""
    shutil.copy(RULES, tmp_path / RULES.name)
    test = {
        "rule_files": [RULES.name],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": as_input_series(scrapes),
            "promql_expr_test": [{
                "expr": 'group by (alertname, dependency) (ALERTS{alertstate="firing"})',
                "eval_time": f"{len(scrapes) - 1}m",
                "exp_samples": [{"labels": series_notation("", {
                    "alertname": name, **({"dependency": dep} if dep else {})}), "value": 1}
                    for name, dep in sorted(expected.items())],
            }],
        }],
    }
    (tmp_path / "real.test.yaml").write_text(yaml.safe_dump(test, width=1000))
    done = run_promtool("test", "rules", "real.test.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_alerts_fire_on_a_real_gateproxy_with_the_dependency_down(
        tmp_path: Path) -> None:
    """docker-runner refuses connections, max_retries is reached, clients keep coming
    and the platform-server refuses them too (so gateproxy answers 502)."""
    promtool()
    cfg = base_config(f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}",
                      max_retries=3)
    # Requests wait for the refusing platform-server only briefly, to keep the test short.
    cfg["upstream"]["retry_connect_ms"] = 100

    async def traffic(http: aiohttp.ClientSession, port: int) -> None:
        # 70 gated requests a (compressed) minute: 1.2/s; 10 forwards, all 502.
        await requests(http, port, "/api/containers", 70, 503)
        await requests(http, port, "/api/threads", 10, 502)

    async with gateproxy_process(tmp_path, cfg) as (port, admin_port, log):
        exhausted = await wait_log(log, "retries_exhausted")
        assert exhausted["dependency"] == "docker-runner"
        scrapes = await record_scrapes(port, admin_port, traffic)

    last = scrapes[-1]
    done = run_promtool("check", "metrics", stdin=last)
    assert done.returncode == 0, done.stdout + done.stderr
    exposed = {s.name for f in text_string_to_metric_families(last) for s in f.samples}
    for rule in rules():
        for name in series_names(rule["expr"]):
            assert name in exposed or name in EXTERNAL_SERIES, (
                f"{rule['alert']} reads {name}, which gateproxy does not expose "
                f"(exposed: {sorted(n for n in exposed if n.startswith('gateproxy_'))})")
    firing_alerts(tmp_path, scrapes, {"GateproxyDependencyDown": "docker-runner",
                                      "GateproxyRetriesExhausted": "docker-runner",
                                      "GateproxyGatedRequestsHigh": "docker-runner",
                                      "GateproxyUpstreamDown": None,
                                      "GateproxyUpstreamErrors": None})


async def test_no_alert_fires_on_a_real_healthy_gateproxy(tmp_path: Path) -> None:
    """docker-runner ready, the platform-server answering: the same traffic raises nothing."""
    promtool()
    runner = StandIn(docker_runner())
    server = StandIn(platform_server())
    await runner.start()
    await server.start()

    async def traffic(http: aiohttp.ClientSession, port: int) -> None:
        await requests(http, port, "/api/containers", 70, 200)
        await requests(http, port, "/api/threads", 10, 200)

    try:
        async with gateproxy_process(tmp_path, base_config(server.url, runner.url)) as (
                port, admin_port, log):
            await wait_log(log, "dependency_up")
            scrapes = await record_scrapes(port, admin_port, traffic)
    finally:
        await server.stop()
        await runner.stop()
    firing_alerts(tmp_path, scrapes, {})
