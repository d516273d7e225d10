"""Week 10: the service's settings, from MODERATION_* environment variables (pydantic-settings).

Every value is checked when the service starts, and so is every combination that cannot work:
a queue shorter than what one request may put in it would answer that request 503 forever, a
pixel budget smaller than two of the largest requests (a client alone gets half) likewise, and a
batch that may wait to fill as long as a request may wait (or forever: no number may be inf or
nan) would answer 504. Such a configuration stops the start with one line that names the
variables and the fix (`one_line`).
"""

import os
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from curriculum.cli import UserError
from stage3_moderation import batching, engines
from stage3_moderation import policy as policies
from stage3_moderation.inputs import Limits
from stage3_moderation.service import STAGES, Options

LIMITS = Limits()
# what MODERATION_AUTH_METRICS_AND_DOCS protects; /healthz and /readyz stay open for the load balancer
OPERATOR_PATHS = ("/metrics", "/docs", "/openapi.json")
PositiveInt = Annotated[int, Field(ge=1)]


class Settings(BaseSettings):
    """MODERATION_<FIELD> sets each field, e.g. MODERATION_MAX_QUEUE=512; batching also per stage,
    e.g. MODERATION_CAPTION_MAX_BATCH_SIZE (stages: clip_image, clip_text, caption)."""

    # every number must be finite: inf passes `ge=0` (MODERATION_MAX_WAIT_MS=inf: batches that wait
    # forever, every request 504), and nan was refused only as "not >= 0"
    model_config = SettingsConfigDict(
        env_prefix="MODERATION_", env_ignore_empty=True, extra="forbid", allow_inf_nan=False
    )

    engine: Literal[engines.ENGINES] = engines.DEFAULT_ENGINE
    clip: str = "tiny"
    blip2: str = "tiny"
    policy: Path = policies.DEFAULT_POLICY
    onnx_dir: Optional[Path] = None  # default: outputs/onnx/<models>, exported at start-up if missing
    # One thread per model call: the three stages already run side by side on their own threads,
    # so more would oversubscribe the cores (measured: 1 and 2 are within noise on 2 cores).
    threads: PositiveInt = 1
    # Model calls at once over the three stages (default: the cores this process may use // threads):
    # past that a call only time-slices the cores with the others, and every batch finishes later
    # (measured in docs/week11.md, "the batchers people deploy").
    model_calls_at_once: Optional[PositiveInt] = None
    decode_threads: PositiveInt = 2  # image decoding, off the event loop
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()  # comma-separated; empty: no authentication
    auth_metrics_and_docs: bool = False  # with api_keys: /metrics, /docs and /openapi.json need a key too

    max_batch_size: PositiveInt = 16
    max_wait_ms: float = Field(5.0, ge=0)
    clip_image_max_batch_size: Optional[PositiveInt] = None
    clip_image_max_wait_ms: Optional[float] = Field(None, ge=0)
    clip_text_max_batch_size: Optional[PositiveInt] = None
    clip_text_max_wait_ms: Optional[float] = Field(None, ge=0)
    caption_max_batch_size: Optional[PositiveInt] = None
    caption_max_wait_ms: Optional[float] = Field(None, ge=0)
    max_queue: PositiveInt = 256
    timeout_s: float = Field(30.0, gt=0)
    cache_entries: int = Field(4096, ge=0)

    max_body_bytes: PositiveInt = LIMITS.max_body_bytes
    max_text_chars: PositiveInt = LIMITS.max_text_chars
    max_inputs: PositiveInt = LIMITS.max_inputs
    max_image_pixels: PositiveInt = LIMITS.max_image_pixels
    max_aspect_ratio: float = Field(LIMITS.max_aspect_ratio, ge=1)
    max_frames: PositiveInt = LIMITS.max_frames
    max_request_pixels: PositiveInt = LIMITS.max_request_pixels
    max_pixels_in_flight: PositiveInt = 2 * LIMITS.max_request_pixels

    # HTTP, held by the server that `python -m stage3_moderation.serve` runs (serve.py)
    max_header_bytes: PositiveInt = 64 * 1024  # the request line and headers
    header_timeout_s: float = Field(10.0, gt=0)  # from a connection's opening or a request's first byte
    body_timeout_s: float = Field(30.0, gt=0)  # from the last header: an 8 MiB body needs 280 kB/s
    keep_alive_s: float = Field(5.0, gt=0)  # an idle keep-alive connection is closed after this
    max_connections: PositiveInt = 512

    @field_validator("api_keys", mode="before")
    @classmethod
    def comma_separated(cls, value):
        return tuple(k.strip() for k in value.split(",") if k.strip()) if isinstance(value, str) else value

    @model_validator(mode="after")
    def workable(self):
        """Combinations that would refuse every request of some allowed shape, forever."""
        most = max(self.max_inputs, self.max_frames)
        if self.max_queue < most:
            raise ValueError(
                f"MODERATION_MAX_QUEUE={self.max_queue} is shorter than one request may fill "
                f"(MODERATION_MAX_INPUTS={self.max_inputs} texts, MODERATION_MAX_FRAMES="
                f"{self.max_frames} frames): such a request would get 503 forever; set it to at "
                f"least {most}"
            )
        if self.max_request_pixels < self.max_image_pixels:
            raise ValueError(
                f"MODERATION_MAX_REQUEST_PIXELS={self.max_request_pixels:,} is below "
                f"MODERATION_MAX_IMAGE_PIXELS={self.max_image_pixels:,}: an allowed image could "
                "never be sent"
            )
        if self.max_pixels_in_flight < 2 * self.max_request_pixels:
            raise ValueError(
                f"MODERATION_MAX_PIXELS_IN_FLIGHT={self.max_pixels_in_flight:,} is below twice "
                f"MODERATION_MAX_REQUEST_PIXELS={self.max_request_pixels:,}: a client alone may hold half "
                "the budget (the other half is kept for others), so the largest allowed request would "
                "get 503 forever"
            )
        for name, stage in self.options().batching.items():
            # a batch of one closes at once; a larger one waits for company up to max_wait_ms
            if stage.max_batch_size > 1 and stage.max_wait_ms >= 1000 * self.timeout_s:
                own = getattr(self, f"{name}_max_wait_ms") is not None
                variable = f"MODERATION_{name.upper()}_MAX_WAIT_MS" if own else "MODERATION_MAX_WAIT_MS"
                raise ValueError(
                    f"{variable}={stage.max_wait_ms:g} is not below MODERATION_TIMEOUT_S={self.timeout_s:g} "
                    f"({1000 * self.timeout_s:g} ms): a {name} batch that waits to fill would outlast "
                    "its requests, which would get 504; keep the wait a few milliseconds (default 5)"
                )
        if self.auth_metrics_and_docs and not self.api_keys:
            raise ValueError("MODERATION_AUTH_METRICS_AND_DOCS needs MODERATION_API_KEYS: there is no key to ask for")
        return self

    @classmethod
    def from_environment(cls):
        """Settings() from MODERATION_* variables; a MODERATION_ name that is no setting is refused,
        since a typo (MODERATION_MAX_QUEUEE) would otherwise be ignored without a word."""
        prefix = "MODERATION_"
        unknown = sorted(
            name
            for name in os.environ
            if name.startswith(prefix) and name[len(prefix) :].lower() not in cls.model_fields
        )
        if unknown:
            raise UserError(
                f"unknown setting {', '.join(unknown)}: the settings are MODERATION_ + one of "
                f"{', '.join(n.upper() for n in cls.model_fields)}"
            )
        return cls()

    def requires_key(self, path):
        """Whether a request to `path` must carry one of the API keys."""
        if not self.api_keys:
            return False
        return path.startswith("/v1/") or (self.auth_metrics_and_docs and path in OPERATOR_PATHS)

    def limits(self):
        return Limits(
            self.max_body_bytes,
            self.max_image_pixels,
            self.max_aspect_ratio,
            self.max_text_chars,
            self.max_inputs,
            self.max_frames,
            self.max_request_pixels,
        )

    def options(self):
        def stage(name):
            size, wait = getattr(self, f"{name}_max_batch_size"), getattr(self, f"{name}_max_wait_ms")
            return batching.Settings(
                size or self.max_batch_size, self.max_wait_ms if wait is None else wait, self.max_queue, self.timeout_s
            )

        calls = self.model_calls_at_once or max(1, len(os.sched_getaffinity(0)) // self.threads)
        return Options({name: stage(name) for name in STAGES}, cache_entries=self.cache_entries, model_calls=calls)


def one_line(error: ValidationError):
    """pydantic's report -> one line naming the environment variables, e.g.
    'MODERATION_MAX_QUEUE=abc: Input should be a valid integer, unable to parse string as an integer'."""
    problems = []
    for e in error.errors():
        message = e["msg"].removeprefix("Value error, ")
        if e["loc"]:
            name = "MODERATION_" + "_".join(str(p) for p in e["loc"]).upper()
            message = f"{name}={e['input']!r}: {message}" if not isinstance(e["input"], dict) else f"{name}: {message}"
        problems.append(message)
    return "; ".join(problems)
