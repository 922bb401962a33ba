"""Schemathesis against the server's own OpenAPI schema (``GET /openapi.json``).

Schemathesis reads the schema of a real running server and generates requests from it with
hypothesis: valid ones (positive mode) and ones that break it (negative mode). Half of the
generated ``POST /animate`` requests carry a real WAV in place of the generated ``audio`` bytes
(and keep each other field with even odds), so the other fields (style, format, face, face_id,
...) are fuzzed on the path that runs the model too, not only on the one that refuses the audio.

Every answer must pass:
- no 5xx (schemathesis' ``not_a_server_error``);
- the status code, response schema, headers and content type the schema documents;
- the error contract of docs/protocol.md: every error answer is an `ErrorBody` with a message,
  with a code that belongs to its status.
Runs are derandomized; the ``fuzz_long`` variant runs many more cases (docs/robustness.md).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from typing import Any, Final

import httpx
import numpy as np
import pytest
import schemathesis
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.protocol import ErrorBody
from tests.server.conftest import RunningServer

TIMEOUT_S: Final = 60.0
CI_EXAMPLES: Final = 100
"""Cases per generation mode in the default run (about ten seconds on two busy cores)."""
LONG_EXAMPLES: Final = 2_000
"""Cases per generation mode in the ``fuzz_long`` run."""

SCHEMA_CHECKS: Final = [not_a_server_error, status_code_conformance, response_headers_conformance]
BODY_CHECKS: Final = [content_type_conformance, response_schema_conformance]

# The codes each status may carry (docs/protocol.md, "Errors over HTTP").
ERROR_CODES_BY_STATUS: Final[dict[int, set[str]]] = {
    400: {"bad_audio", "bad_face", "bad_style", "bad_message"},
    401: {"unauthorized"},
    404: {"bad_face", "bad_message"},
    405: {"bad_message"},
    413: {"too_large"},
    422: {"bad_message"},
    503: {"busy", "shutting_down"},
}
# /readyz answers 503 with a status body, not an error body (docs/protocol.md).
NON_ERROR_BODY_PATHS: Final = {"/readyz"}


def _short_wav() -> bytes:
    """0.3 s of a quiet tone: real audio that costs the model a few milliseconds."""
    t = np.arange(4_800) / 16_000
    out = io.BytesIO()
    sf.write(out, (0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16_000, format="WAV")
    return out.getvalue()


SHORT_WAV: Final = _short_wav()


@pytest.fixture(scope="module")
def schema(server: RunningServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.http}/openapi.json")


class Tally:
    """What the run sent and got: operations called and status codes, for the report and for
    the check that the run reached every operation."""

    def __init__(self) -> None:
        self.statuses: Counter[tuple[str, int]] = Counter()

    def record(self, label: str, status: int) -> None:
        self.statuses[(label, status)] += 1

    @property
    def operations(self) -> set[str]:
        return {label for label, _ in self.statuses}

    def count(self, label: str, status: int) -> int:
        return self.statuses[(label, status)]

    def summary(self) -> str:
        return ", ".join(
            f"{label} {status}: {n}" for (label, status), n in sorted(self.statuses.items())
        )


def check_error_body(path: str, response: Any) -> None:
    """An error answer is an `ErrorBody` with a message, and a code its status may carry."""
    status = response.status_code
    if status < 400 or path in NON_ERROR_BODY_PATHS:
        return
    error = ErrorBody.model_validate_json(response.content).error
    assert error.message, f"{status} {error.code} has an empty message"
    assert error.code in ERROR_CODES_BY_STATUS.get(status, set()), (
        f"{path}: status {status} with code {error.code}: {error.message}"
    )


def run_schema_fuzz(schema: schemathesis.BaseSchema, mode: GenerationMode, examples: int) -> Tally:
    tally = Tally()

    @given(case=schema.as_strategy(mode), data=st.data())
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def example(case: schemathesis.Case, data: st.DataObject) -> None:
        form: dict[str, Any] | None = case.body if isinstance(case.body, dict) else None
        if form is not None and mode == GenerationMode.POSITIVE:
            # A form has no null: a client leaves an optional field out. Schemathesis would send
            # the text "None", which the server rightly refuses (422), hiding the valid path.
            for name in [name for name, value in form.items() if value is None]:
                del form[name]
        if (
            case.operation.path == "/animate"
            and form is not None
            and data.draw(st.booleans(), label="send real audio")
        ):
            form["audio"] = SHORT_WAV
            # Each other field stays with even odds, so some requests are valid as a whole and
            # the model runs with the generated values that remain.
            for name in sorted(set(form) - {"audio"}):
                if not data.draw(st.booleans(), label="keep the field"):
                    del form[name]
        response = case.call(timeout=TIMEOUT_S)
        tally.record(case.operation.label, response.status_code)
        case.validate_response(response, checks=[*SCHEMA_CHECKS, *BODY_CHECKS])
        check_error_body(case.operation.path, response)

    example()
    return tally


def assert_covered(schema: schemathesis.BaseSchema, tally: Tally, mode: GenerationMode) -> None:
    """The run reached every operation, and (valid requests) ran the model on /animate."""
    labels = {r.ok().label for r in schema.get_all_operations() if isinstance(r, Ok)}
    if mode == GenerationMode.POSITIVE:
        assert tally.operations == labels, f"never called: {labels - tally.operations}"
        assert tally.count("POST /animate", 200) > 0, tally.summary()
    else:
        # Negative mode only has something to break where an operation takes input.
        assert {"POST /animate", "POST /faces"} <= tally.operations, tally.summary()
    assert not any(status >= 500 for _, status in tally.statuses), tally.summary()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schema_fuzzing_finds_no_5xx_and_no_schema_violation(
    server: RunningServer, schema: schemathesis.BaseSchema, mode: GenerationMode
) -> None:
    tally = run_schema_fuzz(schema, mode, CI_EXAMPLES)
    print(f"{mode.value}: {sum(tally.statuses.values())} cases; {tally.summary()}")
    assert_covered(schema, tally, mode)
    assert httpx.get(f"{server.http}/readyz", timeout=TIMEOUT_S).status_code == 200


@pytest.mark.fuzz_long
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_long_schema_fuzzing_finds_no_5xx(
    server: RunningServer, schema: schemathesis.BaseSchema, mode: GenerationMode
) -> None:
    tally = run_schema_fuzz(schema, mode, LONG_EXAMPLES)
    print(f"{mode.value}: {sum(tally.statuses.values())} cases; {tally.summary()}")
    assert_covered(schema, tally, mode)


# --- answers the schema must describe (gaps the fuzzing found, now fixed) ---------------------


@pytest.fixture
def metrics_case(schema: schemathesis.BaseSchema) -> Iterator[schemathesis.Case]:
    yield schema["/metrics"]["GET"].Case()


def test_metrics_content_type_is_the_documented_one(
    server: RunningServer, metrics_case: schemathesis.Case
) -> None:
    response = metrics_case.call(timeout=TIMEOUT_S)
    assert response.status_code == 200
    metrics_case.validate_response(response, checks=[content_type_conformance])


def test_csv_answer_content_type_is_the_documented_one(
    server: RunningServer, schema: schemathesis.BaseSchema
) -> None:
    body: Any = {"audio": SHORT_WAV, "format": "csv"}  # files are bytes, beyond JSON's types
    case = schema["/animate"]["POST"].Case(body=body, media_type="multipart/form-data")
    response = case.call(timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"][0].startswith("text/csv")
    case.validate_response(response, checks=[content_type_conformance])
