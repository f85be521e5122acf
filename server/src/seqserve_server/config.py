"""Server settings: one definition, read from flags and `SEQSERVE_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """`seqserve serve` flags; every flag `--some-name` is also `SEQSERVE_SOME_NAME`."""

    model_config = SettingsConfigDict(
        env_prefix="SEQSERVE_",
        protected_namespaces=(),
        cli_kebab_case=True,
        cli_prog_name="seqserve serve",
    )

    model_repository: Path = Field(Path("models"), description="model repository directory")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 for all)")
    port: int = Field(8500, ge=0, le=65535, description="gRPC port (0: pick a free one)")
    metrics_port: int = Field(8502, ge=-1, le=65535, description="Prometheus port (-1: off)")
    workers: int = Field(1, ge=1, description="server processes sharing --port (SO_REUSEPORT)")
    reuse_port: bool = Field(False, description="open --port with SO_REUSEPORT (set by --workers)")
    compute_threads: int = Field(1, ge=1, description="threads per model for its computations")
    tf_intra_op_threads: int = Field(0, ge=0, description="TensorFlow intra-op threads (0: TF)")
    tf_inter_op_threads: int = Field(0, ge=0, description="TensorFlow inter-op threads (0: TF)")
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest message")
    grace_period_s: float = Field(10.0, ge=0, description="time to finish in-flight work on stop")
    log_level: str = Field("INFO", description="logging level")
