"""Config v1: every bad config is one clear `ConfigError` naming the file, the path inside
it and what was expected; `${VAR}` interpolation; secrets stay secret; discovery order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from router.config import (
    CONFIG_ENV,
    discover_config_path,
    embedded_path,
    load_config,
)
from router.errors import ConfigError

GOOD = """\
version: 1
providers:
  sim: {kind: simulated, options: {seed: 1}}
  claude: {kind: anthropic, api_key: "${ANTHROPIC_API_KEY}"}
deployments:
  - id: a
    provider: sim
    model: m
    price: {input_per_mtok: 1, output_per_mtok: 2}
  - id: b
    provider: sim
    model: m
    price: {input_per_mtok: 1, output_per_mtok: 2}
tasks:
  summarize: {candidates: [a, b], prefer: cost}
defaults: {task: summarize}
"""
SECRET = "sk-ant-api03-VERYSECRET"


def write(tmp_path: Path, text: str, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env or {})
    message = str(caught.value)
    assert message.startswith(f"{path}: ") or message.startswith(f"{path}:"), message
    return message


# Each bad config: (what is changed in GOOD, the exact message after "<file>: ").
BAD: dict[str, tuple[tuple[str, str], str]] = {
    "unknown key, with a suggestion": (
        ("id: a\n    provider: sim\n    model: m\n",
         "id: a\n    provider: sim\n    model: m\n    contxt_window: 5\n"),
        "deployments[0].contxt_window: unknown key 'contxt_window' (expected one of: "
        "capabilities, catalog, context_window, default_max_tokens, id, latency_prior, "
        "max_concurrency, max_output_tokens, model, options, price, provider, quality, rpm, tpm; "
        "did you mean 'context_window'?)"),
    "unknown top-level section": (
        ("defaults:", "resilence: {}\ndefaults:"),
        # (top-level sections grow as features land: only the known ones are pinned)
        "resilence: unknown key 'resilence' (expected one of: * defaults, deployments, "
        "providers, resilience, * tasks, version; did you mean 'resilience'?)"),
    "wrong type": (
        ("  - id: b\n    provider: sim\n    model: m\n",
         "  - id: b\n    provider: sim\n    model: m\n    context_window: big\n"),
        "deployments[1].context_window: Input should be a valid integer, unable to parse "
        "string as an integer (got 'big')"),
    "value out of range": (
        ("prefer: cost}", "prefer: cost, max_cost_usd: -1}"),
        "tasks.summarize.max_cost_usd: Input should be greater than 0 (got -1)"),
    "not one of a closed set": (
        ("prefer: cost}", "prefer: fastest}"),
        "tasks.summarize.prefer: Input should be 'cost', 'latency', 'quality' or 'balanced' "
        "(got 'fastest')"),
    "missing required key": (
        ("  - id: a\n    provider: sim\n    model: m\n", "  - id: a\n    provider: sim\n"),
        "deployments[0].model: required key is missing"),
    "dangling task -> deployment": (
        ("[a, b]", "[a, c]"),
        "tasks.summarize.candidates[1]: unknown deployment 'c' (expected one of: a, b)"),
    "dangling deployment -> provider": (
        ("  - id: b\n    provider: sim\n", "  - id: b\n    provider: simm\n"),
        "deployments[1].provider: unknown provider 'simm' (expected one of: claude, sim)"),
    "duplicate deployment id": (
        ("  - id: b\n", "  - id: a\n"),
        "deployments[1].id: duplicate id 'a' (already used by deployments[0])"),
    "unset variable without default": (
        ("prefer: cost}", "prefer: cost, system: 'Answer in ${ANSWER_LANG}'}"),
        "tasks.summarize.system: environment variable ANSWER_LANG is not set "
        "(expected it set, or a default: ${ANSWER_LANG:-value})"),
    "unknown catalog entry": (
        ("    model: m\n    price: {input_per_mtok: 1, output_per_mtok: 2}\n  - id: b",
         "    model: m\n    catalog: gpt-9\n  - id: b"),
        "deployments[0].catalog: no catalog entry 'gpt-9' (expected a price here, or a model "
        "of config/catalog.yaml such as claude-sonnet-4-5, claude-haiku-4-5, claude-opus-4-1, "
        "gpt-5)"),
    "no price and the model is not in the catalog": (
        ("    model: m\n    price: {input_per_mtok: 1, output_per_mtok: 2}\n  - id: b",
         "    model: m\n  - id: b"),
        "deployments[0].price: no catalog entry 'm' (expected a price here, or a model of "
        "config/catalog.yaml such as claude-sonnet-4-5, claude-haiku-4-5, claude-opus-4-1, "
        "gpt-5)"),
    "defaults.task unknown": (
        ("defaults: {task: summarize}", "defaults: {task: chat}"),
        "defaults.task: unknown task 'chat' (expected one of: summarize)"),
    "empty candidate list": (
        ("[a, b]", "[]"),
        "tasks.summarize.candidates: List should have at least 1 item after validation, "
        "not 0 (got list)"),
    "keyed provider without a key": (
        (', api_key: "${ANTHROPIC_API_KEY}"', ""),
        "providers.claude.api_key: required for kind anthropic "
        "(expected e.g. api_key: ${ANTHROPIC_API_KEY})"),
    "unknown provider kind": (
        ("kind: simulated", "kind: simulator"),
        "providers.sim.kind: Input should be 'simulated', 'anthropic', 'openai', "
        "'openai_compatible', 'openai_responses', 'ollama' or 'gemini' (got 'simulator')"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_message_names_file_path_and_expectation(tmp_path: Path, case: str) -> None:
    (old, new), expected = BAD[case]
    assert GOOD.count(old) == 1, f"fixture for {case!r} does not apply"
    message = error_of(tmp_path, GOOD.replace(old, new))
    # `* ` in an expectation stands for any further items of a list.
    pattern = re.escape(f"{tmp_path / 'fleet.yaml'}: {expected}").replace(
        re.escape("* "), "(?:[a-z_]+, )*")
    assert re.fullmatch(pattern, message), message


def test_the_unmodified_good_config_loads(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, GOOD), env={})
    assert loaded.source == str(tmp_path / "fleet.yaml")
    assert list(loaded.deployments) == ["a", "b"]
    assert loaded.config.tasks["summarize"].candidates == ["a", "b"]


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    text = GOOD.replace("prefer: cost}", "prefer: fastest, max_tokens: 0}")
    lines = error_of(tmp_path, text).splitlines()
    assert [line.split(": ", 2)[1] for line in lines] == [
        "tasks.summarize.prefer", "tasks.summarize.max_tokens"]


def test_invalid_yaml_reports_line_and_column(tmp_path: Path) -> None:
    text = "providers:\n  sim: {kind: simulated\ndeployments: []\n"
    message = error_of(tmp_path, text)
    assert message == f"{tmp_path / 'fleet.yaml'}:3:12: invalid YAML: expected ',' or '}}', " \
        "but got ':'"


def test_unquoted_variable_in_a_flow_mapping_is_invalid_yaml_with_its_position(
        tmp_path: Path) -> None:
    # `{api_key: ${X}}` is not YAML (a `{` inside a flow mapping): the error must point at it.
    text = GOOD.replace('api_key: "${ANTHROPIC_API_KEY}"', "api_key: ${ANTHROPIC_API_KEY}")
    assert ":4:" in error_of(tmp_path, text).split(" invalid YAML")[0]


@pytest.mark.parametrize(("text", "got"), [("- a\n- b\n", "list"), ("", "NoneType"),
                                           ("just text\n", "str")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    assert error_of(tmp_path, text).endswith(
        f": expected a mapping at the top level, got {got}")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"{path}: file not found")):
        load_config(path)


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: cannot read")):
        load_config(tmp_path)


# --- interpolation and secrets ----------------------------------------------------------------


def test_variables_interpolate_with_defaults(tmp_path: Path) -> None:
    text = GOOD.replace("prefer: cost}", "prefer: cost, system: '${TONE:-Be brief}. ${LANG2}'}")
    text = text.replace("  - id: b\n    provider: sim\n    model: m\n",
                        "  - id: b\n    provider: sim\n    model: m\n"
                        "    context_window: ${CTX:-4096}\n")
    loaded = load_config(write(tmp_path, text), env={"LANG2": "In French."})
    assert loaded.config.tasks["summarize"].system == "Be brief. In French."
    assert loaded.deployments["b"].context_window == 4096
    loaded = load_config(write(tmp_path, text),
                         env={"LANG2": "x", "TONE": "Be long", "CTX": "8192"})
    assert loaded.config.tasks["summarize"].system == "Be long. x"
    assert loaded.deployments["b"].context_window == 8192


def test_an_empty_default_is_allowed(tmp_path: Path) -> None:
    text = GOOD.replace("prefer: cost}", "prefer: cost, system: 'x${SUFFIX:-}'}")
    assert load_config(write(tmp_path, text), env={}).config.tasks["summarize"].system == "x"


def test_process_environment_is_used_when_no_env_is_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    loaded = load_config(write(tmp_path, GOOD))
    key = loaded.config.providers["claude"].api_key
    assert key is not None and key.get_secret_value() == SECRET


def test_api_key_is_a_secret_never_shown(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, GOOD), env={"ANTHROPIC_API_KEY": SECRET})
    provider = loaded.config.providers["claude"]
    assert provider.api_key is not None and provider.api_key.get_secret_value() == SECRET
    assert provider.api_key_env == "ANTHROPIC_API_KEY"
    for shown in (repr(loaded), str(loaded.config), repr(provider),
                  loaded.config.model_dump_json()):
        assert SECRET not in shown


def test_unset_key_variable_is_not_an_error_but_remembered(tmp_path: Path) -> None:
    # A fleet with one unconfigured vendor still loads; that provider's deployments are
    # excluded at routing time, naming the variable.
    provider = load_config(write(tmp_path, GOOD), env={}).config.providers["claude"]
    assert provider.api_key is None and provider.api_key_env == "ANTHROPIC_API_KEY"


@pytest.mark.parametrize("bad_key", [f"[{SECRET}]", f"{{k: {SECRET}}}"])
def test_api_key_is_never_echoed_in_an_error(tmp_path: Path, bad_key: str) -> None:
    text = GOOD.replace('api_key: "${ANTHROPIC_API_KEY}"', f"api_key: {bad_key}")
    message = error_of(tmp_path, text)
    assert SECRET not in message
    assert message.endswith(
        "providers.claude.api_key: Input should be a valid string (got <hidden>)")


def test_api_key_is_not_echoed_when_another_field_of_its_provider_is_wrong(
        tmp_path: Path) -> None:
    text = GOOD.replace('api_key: "${ANTHROPIC_API_KEY}"',
                        f"api_key: {SECRET}, base_ulr: http://x")
    message = error_of(tmp_path, text)
    assert "providers.claude.base_ulr: unknown key" in message and SECRET not in message


# --- discovery ----------------------------------------------------------------------------


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A working directory with ./router.yaml, an env-named config and an explicit one,
    each with a different deployment id."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    out = {}
    for name in ("explicit", "env", "local"):
        text = GOOD.replace("id: a", f"id: {name}").replace("[a, b]", f"[{name}, b]")
        out[name] = write(tmp_path if name != "local" else cwd, text,
                          "router.yaml" if name == "local" else f"{name}.yaml")
    return out


def first_deployment(path: str | Path | None = None) -> str:
    return next(iter(load_config(path, env={}).deployments))


def test_explicit_path_wins(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(places["env"]))
    assert discover_config_path(places["explicit"]) == places["explicit"]
    assert first_deployment(places["explicit"]) == "explicit"


def test_environment_variable_beats_local_file(places: dict[str, Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(places["env"]))
    assert first_deployment() == "env"


def test_local_router_yaml_beats_the_embedded_default(places: dict[str, Path]) -> None:
    assert discover_config_path() == Path("router.yaml")
    assert first_deployment() == "local"


def test_embedded_default_when_nothing_else(places: dict[str, Path]) -> None:
    places["local"].unlink()
    assert discover_config_path() == embedded_path("default.yaml")
    loaded = load_config(env={})
    assert loaded.source.endswith("default.yaml")
    assert {d.provider_kind for d in loaded.deployments.values()} == {"simulated"}


def test_environment_variable_naming_a_missing_file_is_an_error(
        places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(places["env"].with_name("gone.yaml")))
    with pytest.raises(ConfigError, match=re.escape("gone.yaml: file not found")):
        load_config()


def test_empty_environment_variable_is_ignored(places: dict[str, Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, "")
    assert first_deployment() == "local"


# --- the embedded default ------------------------------------------------------------------


def test_embedded_default_is_an_offline_fleet_with_routing_differences() -> None:
    loaded = load_config(embedded_path("default.yaml"), env={})
    deps = loaded.deployments
    assert len(deps) >= 3
    priors = {d.id: d.latency_prior.ttft_ms for d in deps.values()}
    prices = {d.id: d.price.output_per_mtok for d in deps.values()}
    # a fast cheap one and a slow strong one, with realistic prices
    fastest = min(priors, key=priors.__getitem__)
    assert fastest == min(prices, key=prices.__getitem__)
    strongest = max(deps.values(), key=lambda d: d.quality)
    assert strongest.latency_prior.ttft_ms == max(priors.values())
    assert all(0 < p < 100 for p in prices.values())
    cfg = loaded.config
    assert cfg.defaults.task in cfg.tasks
    assert {t.prefer for t in cfg.tasks.values()} >= {"cost", "latency", "quality"}


# --- documentation --------------------------------------------------------------------------


def _readme_configs() -> list[str]:
    readme = Path(__file__).resolve().parents[2] / "README.md"
    blocks = re.findall(r"```yaml\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)
    return [b for b in blocks if "deployments:" in b]


def test_readme_has_a_config_example() -> None:
    assert _readme_configs()


@pytest.mark.parametrize("block", _readme_configs())
def test_readme_config_examples_load(tmp_path: Path, block: str) -> None:
    # Users copy these: each must be valid YAML and a valid config, keys unset.
    loaded = load_config(write(tmp_path, block), env={})
    assert loaded.deployments


@pytest.mark.parametrize("name", ["default.yaml", "examples/multi-provider.yaml"])
def test_shipped_configs_load_without_keys(name: str) -> None:
    assert load_config(embedded_path(name), env={}).deployments


@pytest.mark.parametrize(("routing", "path"), [
    ("{quantile: 1.5}", "routing.quantile"),
    ("{half_life_s: 0}", "routing.half_life_s"),
    ("{explore: 0.9}", "routing.explore"),
    ("{budget_confidence: -1}", "routing.budget_confidence"),
    ("{explor: 0.1}", "routing.explor"),
])
def test_routing_errors_name_their_path(tmp_path: Path, routing: str, path: str) -> None:
    message = error_of(tmp_path, GOOD + f"routing: {routing}\n")
    assert f": {path}: " in message, message


def test_routing_section_is_read(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, GOOD + "routing: {quantile: 0.95, explore: 0, seed: 7}\n"),
                         env={})
    routing = loaded.config.routing
    assert (routing.quantile, routing.explore, routing.seed) == (0.95, 0.0, 7)
