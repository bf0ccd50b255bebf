"""BentoML entry point of the fraud-scoring service: ``bentoml serve services.scorer:FraudScorer``.

Endpoints: ``POST /score`` ``{"transactions": [...], "explain": false}``, ``POST /feedback`` ``{"labels": [...]}``,
``POST /reload``; BentoML's ``/readyz`` (fails until a model is loaded), ``/livez``, ``/healthz``, ``/metrics``,
``/docs.json``. Settings are FRAUDOPS_* environment variables (`fraudops.settings.ServingConfig`); the logic lives
in `fraudops.serving`, this module only adapts it to BentoML. ``/feedback`` and ``/reload`` need
``Authorization: Bearer <token>`` (`fraudops.serving.auth`: FRAUDOPS_INTERNAL_TOKEN, FRAUDOPS_INTERNAL_TOKEN_FILE,
or a token generated at the first start, whose file the log names). With ``FRAUDOPS_WORKERS`` > 1 the worker that
takes ``/reload`` has the others reload too (`fraudops.serving.siblings`) and answers once they have.

Metrics on ``/metrics`` besides BentoML's own ``bentoml_service_*``:

| Metric | Type | Labels | Meaning |
|---|---|---|---|
| `fraudops_scorer_requests_total` | counter | `endpoint`, `outcome` | ok, invalid, unauthorized, unavailable, error |
| `fraudops_scorer_rows_scored_total` | counter | | transactions scored |
| `fraudops_scorer_request_latency_seconds` | histogram | `endpoint` | handler time, validation to response |
| `fraudops_scorer_score` | histogram | | fraud scores returned |
| `fraudops_scorer_decisions_total` | counter | `decision` | approve, review, decline |
| `fraudops_scorer_validation_errors_total` | counter | `reason` | problems found in rejected requests (below) |
| `fraudops_scorer_model_info` | gauge | `model_tag`, `trained_at` | 1 for the model serving, 0 once replaced |
| `fraudops_scorer_model_loads_total` | counter | `outcome` | model (re)load attempts: ok, failed |
| `fraudops_scorer_predlog_rows_written_total` | counter | `log` | rows written to the log: predictions, feedback |
| `fraudops_scorer_predlog_write_failures_total` | counter | `log` | failed log writes (rows kept, retried) |
| `fraudops_scorer_predlog_wal_write_failures_total` | counter | | rows not written ahead (memory only) |
| `fraudops_scorer_predlog_wal_recovered_rows_total` | counter | | rows recovered at start from a killed scorer |
| `fraudops_scorer_role_decisions_total` | counter | `role`, `decision` | decisions of each role (below) |
| `fraudops_scorer_role_score` | histogram | `role` | each model's scores in a rollout |
| `fraudops_scorer_role_model_seconds` | histogram | `role` | one model call's time (shadow: a micro-batch) |
| `fraudops_scorer_shadow_dropped_total` | counter | | requests not shadow-scored (queue full) |
| `fraudops_scorer_shadow_failures_total` | counter | | shadow scorings that failed (never the request) |
| `fraudops_scorer_feature_store_requests_total` | counter | | model calls that asked the online feature store |
| `fraudops_scorer_feature_store_fallbacks_total` | counter | | ... answered from the frozen snapshot (store down) |
| `fraudops_scorer_feature_store_reseeds_total` | counter | | polls that found the store empty: snapshot loaded again |
| `fraudops_scorer_feature_store_write_races_total` | counter | | writes that lost a race to a replica (read again) |
| `fraudops_scorer_feature_store_pending_writes` | gauge | | transactions held to record once the store is back |
| `fraudops_scorer_feature_store_dropped_writes_total` | counter | | held transactions dropped (rebuild from the log) |
| `fraudops_scorer_rollout_info` | gauge | `challenger`, `mode`, `percent` | 1 for the active rollout |
| `fraudops_scorer_feedback_labels_total` | counter | `source` | labels recorded: chargeback, manual_review, ... |

Roles: champion, canary (returned), shadow (the challenger's scores, not returned) and champion-on-canary (the
champion's scores of the canary's transactions, not returned: what the canary is compared with).

Validation reasons: missing, wrong_type, not_finite, negative, bad_time, time_order, not_object, unknown_field,
bad_format, not_allowed, batch_empty, batch_too_large; and from the request guard in front of the handlers
(`fraudops.httpguard`): content_type (415), too_large (413, FRAUDOPS_MAX_BODY_BYTES), bad_length (400),
body_timeout (408, FRAUDOPS_BODY_TIMEOUT_SECONDS). A request to /feedback or /reload without the token gets 401
and counts as outcome ``unauthorized``. Malformed JSON and a wrong top-level shape are rejected
by BentoML before the handler runs (400, counted in ``bentoml_service_request_total{http_response_code="400"}``);
HTTP-level latency is ``bentoml_service_request_duration_seconds``.
"""

from __future__ import annotations

import functools
import logging
from typing import Annotated, Any

import anyio
import bentoml
from pydantic import Field, StrictBool
from starlette.responses import Response

from fraudops.httpguard import RequestGuard
from fraudops.predlog import LogUnavailableError, json_text
from fraudops.serving import (
    FeedbackResponse,
    ModelLoadError,
    NotReadyError,
    ReloadResponse,
    RequestError,
    Scorer,
    ScoreResponse,
    ServingConfig,
    packaged_model_tag,
)
from fraudops.serving.auth import internal_token
from fraudops.serving.openapi import AmendedDocs, amend
from fraudops.serving.siblings import Siblings
from services import traffic

traffic.install()  # before the app is built: BentoML's request timer would hold every request for the timeout
CONFIG = ServingConfig.from_env()
# The model `bentoml build` packages; when serving a Bento it names the Bento's own copy (used without a registry).
PACKAGED_TAG = packaged_model_tag(CONFIG.model_tag)
INTERNAL_ROUTES = frozenset({"/feedback", "/reload"})

_EXAMPLE = {"transaction_id": "t-1", "user_id": "u123", "signup_time": "2026-01-02T10:00:00Z",
            "purchase_time": "2026-01-31T12:00:00Z", "amount": 59.9, "device_id": "ABCDEFGHIJKLM",
            "ip_address": "81.2.69.160", "country": "GB", "source": "Ads", "browser": "Chrome",
            "category": "electronics", "payment_method": "card"}


def _json(body: dict[str, Any], status: int = 200) -> Any:
    """A finished JSON response: BentoML passes Response objects through (the methods' return annotations
    document the success bodies for /docs.json)."""
    return Response(json_text(body), status_code=status, media_type="application/json")


def _error(message: str, status: int) -> Any:
    return _json({"error": message}, status)


@bentoml.service(name="fraud_scorer", workers=CONFIG.workers, traffic={"timeout": 60})
class FraudScorer:
    """Scores e-commerce transactions with the champion fraud model."""

    if PACKAGED_TAG:
        packaged_model = bentoml.models.BentoModel(PACKAGED_TAG)

    def __init__(self) -> None:
        logging.getLogger("fraudops").setLevel(logging.INFO)  # model switches in the log (BentoML's root: WARNING)
        _token()  # at start, so that a missing token file fails the worker and a generated one is logged now
        self.scorer = Scorer.from_config(CONFIG, packaged=PACKAGED_TAG,
                                         siblings=Siblings() if CONFIG.workers > 1 else None)
        _SCORERS.append(self.scorer)
        self.scorer.start()

    async def __is_ready__(self) -> bool:
        return self.scorer.ready

    @bentoml.api(route="/score")
    async def score(
        self,
        transactions: Annotated[list[Any], Field(description="1..FRAUDOPS_MAX_BATCH raw transactions (the training "
                                                 "schema; optional fields may be absent)", examples=[[_EXAMPLE]])],
        explain: Annotated[StrictBool, Field(description="add the top reason codes (SHAP) and the features the "
                                                         "model saw")] = False,
    ) -> ScoreResponse:
        """Fraud score, decision and (with explain) reason codes and features for each transaction."""
        try:
            return _json(await self.scorer.score_async(transactions, explain))
        except RequestError as exc:
            return _json(exc.body(), exc.status)
        except (NotReadyError, LogUnavailableError) as exc:
            return _error(str(exc), 503)

    @bentoml.api(route="/feedback")
    async def feedback(
        self,
        labels: Annotated[list[Any], Field(description="confirmed labels: request_id, row, is_fraud, source, ...",
                                           examples=[[{"request_id": "0" * 32, "row": 0, "is_fraud": True,
                                                       "source": "chargeback"}]])],
    ) -> FeedbackResponse:
        """Record confirmed labels (chargebacks, manual reviews) against the request ids /score returned."""
        try:
            return _json(self.scorer.feedback(labels))
        except RequestError as exc:
            return _json(exc.body(), exc.status)
        except LogUnavailableError as exc:
            return _error(str(exc), 503)

    @bentoml.api(route="/reload")
    async def reload(self) -> ReloadResponse:
        """Switch every worker to the model FRAUDOPS_MODEL_TAG points at now (409, old model kept, if it cannot be
        served)."""
        try:
            result = await anyio.to_thread.run_sync(self.scorer.reload_everywhere)
        except ModelLoadError as exc:
            model = self.scorer.model
            return _json({"error": str(exc), "model_tag": model.tag if model else None}, 409)
        return _json(result)

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Stop polling and write every logged row before the worker exits."""
        self.scorer.close()


def _count_refusal(path: str, reason: str) -> None:
    """Count a refusal of the request guard in this worker's scorer metrics (the guard runs before any handler)."""
    for scorer in _SCORERS:
        scorer.metrics.refused(path.strip("/"), reason)


def _docs(doc: dict[str, Any]) -> dict[str, Any]:
    """/docs.json with the error bodies, status codes, limits, fields (of the model serving now) and auth."""
    served = _SCORERS[0].model if _SCORERS else None
    return amend(doc, max_batch=CONFIG.max_batch, internal=INTERNAL_ROUTES, rows=served.schema if served else None)


@functools.cache
def _token() -> str:
    return internal_token(CONFIG)


# Bodies the service does not accept (not JSON, too large, too slow) get a 4xx before BentoML parses them.
_SCORERS: list[Scorer] = []
# /feedback and /reload are refused (401) without the internal token, before their body is read.
FraudScorer.add_asgi_middleware(RequestGuard, paths=frozenset(api.route for api in FraudScorer.apis.values()),
                                max_bytes=CONFIG.max_body_bytes, body_seconds=CONFIG.body_timeout_seconds,
                                on_reject=_count_refusal, protected=INTERNAL_ROUTES, token=_token)
FraudScorer.add_asgi_middleware(AmendedDocs, amend=_docs)
