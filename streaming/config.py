"""The job configuration: one TOML file, validated by pydantic, overridable with ``--set a.b=value``.

Sections: ``[solver]`` (which PDE, its config, the parameter design), ``[sample]`` (what a training
sample is), ``[model]``, ``[optim]``, ``[buffer]``, ``[workers]``, ``[validation]``, ``[checkpoint]``,
``[logging]``. Unknown keys are errors (typos must not pass silently); every error names the key,
the bad value and what is allowed.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streaming.external_solver import NAME as EXTERNAL
from streaming.external_solver import ExternalSection
from streaming.transport import BACKENDS


class ConfigError(ValueError):
    """A job configuration is invalid; the message names the key, the value and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AdaptiveSection(_Section):
    """Options of ``solver.design = "adaptive"`` (the loss-steered design; :class:`streaming.adaptive.AdaptiveCursor`
    takes this section as its options)."""

    base: Literal["lhs", "sobol", "uniform"] = Field("lhs", description="the design the floor fraction and the "
                                                     "warmup draw from")
    floor: float = Field(0.5, ge=0, le=1, description="fraction of simulations drawn from the base design, so no "
                         "region starves")
    bandwidth: float = Field(0.05, gt=0, le=1, description="std of the Gaussian kernel around high-loss "
                             "simulations, in unit-cube coordinates (log parameters: in log space)")
    smooth: float = Field(0.1, ge=0, le=1, description="std of the kernel that averages the losses of neighbouring "
                          "simulations before a centre is picked (initial conditions add noise); 0 = off")
    warmup: int = Field(16, ge=0, description="simulations from the base design before steering starts")
    spread: bool = Field(False, description="the warmup and floor simulations take consecutive points of one "
                         "scrambled Sobol sequence over the run (even coverage however few); false: the base "
                         "design's point of each simulation id")
    exponent: float = Field(1.0, ge=0, description="a simulation is picked as a kernel centre with probability "
                            "proportional to loss ** exponent (0: uniform over recent simulations)")
    memory: int = Field(256, ge=1, description="the most recently reported simulations the proposal uses")
    ema: float = Field(0.5, gt=0, le=1, description="weight of a new report in a simulation's running loss")
    relative: bool = Field(True, description="report each sample's loss divided by the loss of predicting zero "
                           "(mse: the squared relative L2 error, the scale the rollout error is judged on); false: "
                           "the loss itself, which starves regions whose fields are small (decayed flows)")
    loss_every: int = Field(1, ge=1, description="gradient steps between the per-sample losses kept (the train "
                            "step's own, from its forward pass: no extra model call)")
    report_every: int = Field(20, ge=1, description="gradient steps between loss reports to the design")
    ahead: int = Field(0, ge=0, description="pacing: a new task goes out only while fewer than max(warmup, m + 1) "
                       "+ ahead simulations have been handed out, m the index of the newest simulation with a reported "
                       "loss (-1 before any); free workers wait for the trainer's next report. Backends ray, mpi and "
                       "external (not local, which runs in step with the trainer). 0 = off")


class SolverSection(_Section):
    name: str = "heat2d"
    config: dict[str, Any] = Field(default_factory=dict, description="solver config overrides")
    fixed: dict[str, float] = Field(default_factory=dict, description="parameters held at a value, e.g. { nu = 1e-3 }")
    steps: int = Field(50, ge=1, description="solver steps per simulation")
    every: int = Field(1, ge=1, description="keep every k-th step as a frame")
    design: Literal["uniform", "lhs", "sobol", "adaptive"] = "lhs"
    n_sims: int = Field(64, ge=0, description="training simulations; 0 = unlimited until the step budget")
    seed: int = 0
    adaptive: AdaptiveSection = Field(default_factory=AdaptiveSection, description="design = 'adaptive': the "
                                      "loss-steered design's options")
    external: ExternalSection | None = Field(None, description="name = 'external': a program of your own "
                                             "(streaming.external_solver)")

    @model_validator(mode="after")
    def _steps_multiple(self) -> SolverSection:
        if self.steps % self.every:
            raise ValueError(f"steps={self.steps} must be a multiple of every={self.every}")
        if (self.name == EXTERNAL) != (self.external is not None):
            raise ValueError(f"solver.name={self.name!r} with{'out' if self.external is None else ''} a "
                             "[solver.external] section: name = 'external' declares a program in [solver.external] "
                             "(channels, grid, dt, frames, params, command); a pdestream solver takes none")
        if self.external is not None and (self.config or self.every != 1):
            raise ValueError("solver.config and solver.every do not apply to an external solver; its frames are "
                             "set by solver.external.frames and solver.external.dt")
        return self

    def frames_per_sim(self) -> int:
        """Frames of one simulation: ``steps // every + 1``, or ``external.frames`` for an external solver."""
        return self.external.frames if self.external is not None else self.steps // self.every + 1


class SampleSection(_Section):
    kind: Literal["next_step", "field", "bundle"] = "next_step"
    window: int = Field(1, ge=1, description="input frames (next_step, bundle)")
    horizon: int = Field(1, ge=1, description="output frames (bundle: K; next_step: 1)")
    condition_on_params: bool = Field(True, description="feed the PDE parameters to the model as cond")

    @model_validator(mode="after")
    def _consistent(self) -> SampleSection:
        if self.kind == "next_step" and self.horizon != 1:
            raise ValueError("sample.horizon must be 1 for kind='next_step'; use kind='bundle' for K > 1")
        return self


class ModelSection(_Section):
    name: str = "fno"
    hparams: dict[str, Any] = Field(default_factory=dict)
    predict: Literal["state", "increment"] = Field("state", description="the model outputs the next frames, or "
                                                   "their increment over the last input frame")


class UnrollSection(_Section):
    """Curriculum on the autoregressive model calls trained through: ``start`` at step 0, linearly to ``end``
    at ``ramp_steps`` (surrogates.training.linear_unroll)."""

    start: int = Field(1, ge=1)
    end: int = Field(1, ge=1)
    ramp_steps: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _order(self) -> UnrollSection:
        if self.end < self.start:
            raise ValueError(f"unroll.end={self.end} is below unroll.start={self.start}")
        return self


class OptimSection(_Section):
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    schedule: Literal["constant", "cosine", "warmup_cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    clip_norm: float = Field(1.0, ge=0, description="global gradient-norm clip; 0 = off")
    batch_size: int = Field(32, ge=1)
    steps: int = Field(1000, ge=1, description="gradient steps")
    loss: Literal["mse", "relative_l2", "nrmse"] = "mse"
    pushforward: int = Field(0, ge=0)
    unroll: UnrollSection = Field(default_factory=UnrollSection)
    input_noise: float = Field(0.0, ge=0, description="std of the noise added to model inputs, normalised units")
    seed: int = 0


class BufferSection(_Section):
    kind: Literal["fifo", "firo", "reservoir", "epoch"] = "reservoir"  # epoch: offline datasets
    capacity: int = Field(4096, ge=1)
    watermark: int = Field(256, ge=1)
    max_reuse: int | None = Field(None, ge=1)
    ingest_ratio: float | None = Field(
        None, gt=0, description="once the buffer is full, at most this many new samples are taken in per sample "
        "drawn for training; the rest waits at the workers (backpressure), so solvers faster than training do not "
        "take the trainer's CPU; None = everything the workers send")

    @model_validator(mode="after")
    def _watermark(self) -> BufferSection:
        if self.watermark > self.capacity:
            raise ValueError(f"buffer.watermark={self.watermark} exceeds buffer.capacity={self.capacity}")
        if self.ingest_ratio is not None and self.ingest_ratio < 1 and self.consumes:
            raise ValueError(f"buffer.ingest_ratio={self.ingest_ratio} is below 1 with a {self.kind} buffer whose "
                             "samples leave after max_reuse draws: it would empty while the workers are held back; "
                             "use ingest_ratio >= 1, or a reservoir without max_reuse")
        return self

    @property
    def consumes(self) -> bool:
        """Drawn samples leave the buffer (fifo, firo, or after ``max_reuse`` draws)."""
        return self.kind in ("fifo", "firo") or self.max_reuse is not None


class WorkersSection(_Section):
    backend: str = Field("ray", description="a registered transport (python -m streaming.transport)")
    count: int = Field(2, ge=1)
    sims_per_task: int = Field(4, ge=1, description="simulations a worker runs together (vmap); over Ray a task "
                               "travels in objects of up to 4 MiB, each costing milliseconds of CPU")
    chunk_frames: int = Field(8, ge=1, description="frames per chunk message")
    max_inflight: int = Field(4, ge=1, description="messages in flight per worker (backpressure): chunks over MPI "
                              "and the client API, bundles of chunks (about 4 MiB) over Ray")
    device: Literal["cpu", "gpu"] = "cpu"
    gpu_fraction: float = Field(0.1, gt=0, le=1, description="memory share of a GPU per worker if device=gpu")
    max_failures: int = Field(5, ge=0, description="worker failures tolerated before the job stops")
    address: str | None = Field(None, description="Ray cluster address (HOST:PORT of a `ray start --head`); None "
                                "starts a local cluster of the job's own")
    placement: Literal["default", "spread"] = Field("default", description="Ray: where the actors go; default "
                                                    "fills the driver's node first, spread puts them on the "
                                                    "cluster's nodes in turn")
    listen: str = Field("127.0.0.1:47011", description="external backend: HOST:PORT that streaming.client "
                        "connects to; port 0 picks a free port")
    token: str | None = Field(None, description="external backend: shared secret clients present (PDESTREAM_TOKEN "
                              "or TOKEN@HOST:PORT); None = none on loopback, generated (secrets) and printed once "
                              "when listening beyond loopback")
    client_timeout: float = Field(3600.0, gt=0, description="external backend: seconds a client connection may stay "
                                  "silent while the job holds none of its messages (or stuck mid-message) before it "
                                  "is closed and its simulation dropped; above the time a solver takes for one "
                                  "message's frames")
    max_message_mb: float = Field(256.0, gt=0, description="external backend: largest message payload (MiB) a "
                                  "client may send; checked before anything is allocated")
    listener_ring_mb: float = Field(64.0, ge=0, description="external backend: shared memory (MiB) through which "
                                    "the listener, in a process of its own, hands chunks to the trainer; 0 runs the "
                                    "listener's threads in the trainer's process")
    nice: int = Field(10, ge=0, le=19, description="OS priority drop of worker processes and of the trainer's "
                      "receiver thread (Linux), so the train step keeps its CPU")

    @field_validator("backend")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in BACKENDS:
            names = ", ".join(repr(b) for b in BACKENDS)
            raise ValueError(f"Input should be one of {names} (the registered transports)")
        return name


class ValidationSection(_Section):
    n_sims: int = Field(8, ge=1)
    interval: int = Field(100, ge=1, description="gradient steps between validations")
    seed: int = 12345
    rollout_steps: int = Field(10, ge=1, description="autoregressive steps for the rollout error")
    design: Literal["uniform", "grid", "sobol"] = Field("uniform", description="where the validation simulations "
                                                        "sit: uniform draws, a regular grid (floor(n_sims ** (1/P)) "
                                                        "cell centres per free parameter) or a Sobol set")
    select: Literal["rollout", "one_step"] = Field("rollout", description="the validation error that picks the "
                                                   "exported surrogate")


class CheckpointSection(_Section):
    interval: int = Field(500, ge=1)
    keep: int = Field(2, ge=1)


class LoggingSection(_Section):
    run_dir: str = "runs"
    name: str | None = None
    tensorboard: bool = True
    progress: bool = True
    interval: int = Field(20, ge=1, description="steps between log lines")


class JobConfig(_Section):
    solver: SolverSection = Field(default_factory=SolverSection)
    sample: SampleSection = Field(default_factory=SampleSection)
    model: ModelSection = Field(default_factory=ModelSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    buffer: BufferSection = Field(default_factory=BufferSection)
    workers: WorkersSection = Field(default_factory=WorkersSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)

    @model_validator(mode="after")
    def _cross(self) -> JobConfig:
        if self.optim.batch_size > self.buffer.capacity:
            raise ValueError(f"optim.batch_size={self.optim.batch_size} exceeds buffer.capacity={self.buffer.capacity}")
        frames = self.solver.frames_per_sim()
        calls = self.optim.pushforward + self.optim.unroll.end  # model calls a training sample's targets span
        if self.sample.kind == "field" and (calls > 1 or self.model.predict != "state"):
            raise ValueError("optim.pushforward, optim.unroll and model.predict='increment' need input frames; "
                             "sample.kind='field' has none")
        need = self.sample.window + (self.sample.horizon * calls if self.sample.kind != "field" else 0)
        if need > frames:
            raise ValueError(f"a sample needs {need} frames but a simulation has only {frames}; raise solver.steps")
        a = self.solver.adaptive
        # pacing waits for the trainer, which must be able to train (the local backend is not paced)
        if self.solver.design == "adaptive" and a.ahead and self.workers.backend != "local":
            if self.buffer.consumes:
                raise ValueError("solver.adaptive.ahead with a buffer whose samples leave after max_reuse draws: it "
                                 "can run dry while the design waits for losses the trainer has yet to report; use "
                                 "a reservoir without max_reuse, or ahead = 0")
            paced = a.warmup + a.ahead  # simulations handed out before the first report
            samples = paced * (frames - (1 if self.sample.kind == "field" else need) + 1)
            if (self.solver.n_sims == 0 or self.solver.n_sims > paced) and samples < self.buffer.watermark:
                raise ValueError(f"solver.adaptive.warmup + ahead = {paced} simulations give {samples} samples, below "
                                 f"buffer.watermark={self.buffer.watermark}: training would never start to report "
                                 "losses; raise ahead or lower buffer.watermark")
        return self


def _format_error(e: ValidationError, source: str) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            section = err["loc"][:-1]
            allowed = _allowed_keys(section)
            parts.append(f"unknown key {loc!r}" + (f"; allowed: {', '.join(allowed)}" if allowed else ""))
        elif err["type"] == "literal_error":
            parts.append(f"{loc}={err['input']!r}: {msg}")
        elif loc:
            parts.append(f"{loc}={err.get('input')!r}: {msg}")
        else:
            parts.append(msg)
    return f"{source}: " + "; ".join(parts)


def _allowed_keys(section: tuple) -> list[str]:
    model: type[BaseModel] = JobConfig
    for name in section:
        field = model.model_fields.get(str(name))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return list(model.model_fields)


def _parse_value(text: str) -> Any:
    """``--set`` values: TOML syntax where it parses (numbers, booleans, strings, arrays), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict, overrides: dict[str, str]) -> dict:
    """Apply ``{"optim.lr": "1e-4"}`` style overrides to a nested dict (a copy); the value ``none``
    removes the key, so its default applies (e.g. ``buffer.ingest_ratio=none``: TOML has no null)."""
    out = json.loads(json.dumps(data))
    for dotted, text in overrides.items():
        keys = dotted.split(".")
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: {k!r} is not a section")
        if text.strip().lower() == "none":
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = _parse_value(text)
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, str] | None = None) -> JobConfig:
    """Read a TOML job file (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    source = str(path) if path else "defaults"
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{p}: no such config file; see configs/quickstart.toml for an example")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML ({e})") from e
    data = apply_overrides(data, overrides or {})
    try:
        return JobConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None


def dump_toml(cfg: JobConfig) -> str:
    """The resolved config as TOML (None values are left out, as TOML has no null)."""
    lines = []
    for section, values in cfg.model_dump().items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise ConfigError(f"cannot write {v!r} to TOML")
