"""The scoring service's logic, one concern per module; `services/scorer.py` adapts it to BentoML.

| Module | Holds |
| --- | --- |
| `fraudops.settings` | `ServingConfig`: every FRAUDOPS_* variable of the service |
| `errors` | `Problem`, `RequestError`: bad rows and fields, named, with their metric reasons |
| `rows` | `RowSchema`: validation of raw transactions, normalised for the row adapters of the features |
| `model` | `ServedModel` (schema checks, probes, warm-up, scoring, log rows), `ModelSource` (where it comes from) |
| `challenger` | `Challenger`: the rollout's model beside the champion, the canary's sticky buckets |
| `shadow` | `ShadowProcess`: scoring nobody waits for, in a process of its own |
| `api` | request and response bodies |
| `metrics` | `ScorerMetrics` |
| `auth` | the bearer token of the internal endpoints |
| `scorer` | `Scorer`: requests, logging, model hot swap |
"""

from fraudops.serving.api import FeedbackLabel, FeedbackResponse, ReloadResponse, ScoredTransaction, ScoreResponse
from fraudops.serving.errors import Problem, RequestError, check_batch
from fraudops.serving.metrics import ScorerMetrics
from fraudops.serving.model import (
    ModelLoadError,
    ModelSource,
    ServedModel,
    packaged_model_tag,
    reason_codes,
    schema_mismatch,
)
from fraudops.serving.rows import RowSchema
from fraudops.serving.scorer import NotReadyError, Scorer
from fraudops.settings import ServingConfig

__all__ = ["FeedbackLabel", "FeedbackResponse", "ModelLoadError", "ModelSource", "NotReadyError", "Problem",
           "ReloadResponse", "RequestError", "RowSchema", "ScoreResponse", "ScoredTransaction", "Scorer",
           "ScorerMetrics", "ServedModel", "ServingConfig", "check_batch", "packaged_model_tag", "reason_codes",
           "schema_mismatch"]
