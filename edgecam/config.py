"""Runtime configuration: a YAML file validated into pydantic v2 models.

Every section forbids unknown keys and every field has a description and bounds. Relative paths in the file
are resolved against the file's folder. String values may name environment variables as ``${NAME}`` (for an
RTSP password, say); a variable that is not set is an error naming the key. A bad file gives one line per
problem, ``FILE: key.path: value: message`` (values that look like secrets are masked), and the CLI exits 2.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgecam import EdgecamError
from edgecam.mqtt.config import MqttConfig, config_from_url, mask_secrets

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_KEYS = ("password", "secret", "token", "key")


class ConfigError(EdgecamError):
    """A config file that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """A path relative to the config file's folder (``base`` in the validation context), user (~) expanded."""
    value = value.expanduser()
    base = (info.context or {}).get("base")
    return value if value.is_absolute() or base is None else Path(base) / value


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    value = _resolve_path(value, info)
    if not value.exists():
        raise ValueError(f"file not found: {value}")
    return value


def _model_ref(value: str, info: ValidationInfo) -> str:
    """A shipped model name (``face_detector``) or a model folder, resolved against the config's folder."""
    from edgecam.manifest import ModelError, resolve_model_dir

    base = (info.context or {}).get("base")
    if base is not None and not Path(value).is_absolute() and (Path(base) / value).is_dir():
        value = str(Path(base) / value)
    try:
        resolve_model_dir(value)
    except ModelError as e:
        raise ValueError(str(e)) from None
    return value


RelPath = Annotated[Path, AfterValidator(_resolve_path)]
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
ModelRef = Annotated[str, AfterValidator(_model_ref)]
Point = Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=2, max_length=2)]
Polygon = Annotated[list[Point], Field(min_length=3, description="polygon [[x, y], ...] in frame pixels")]


# ---------------------------------------------------------------------------------------------- camera


class LiveSourceConfig(Section):
    """Options shared by live cameras: stall detection and reconnect backoff."""

    stall_timeout_s: float = Field(default=5.0, gt=0, le=600, description="no frame for this long = stalled, reopen")
    reconnect_initial_s: float = Field(default=0.5, gt=0, le=60, description="first reopen delay, doubled per failure")
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600, description="largest reopen delay")

    @model_validator(mode="after")
    def _backoff_order(self) -> LiveSourceConfig:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError(f"reconnect_max_s {self.reconnect_max_s} is below reconnect_initial_s "
                             f"{self.reconnect_initial_s}")
        return self


class OpenCVSourceConfig(LiveSourceConfig):
    """OpenCV VideoCapture: USB index, RTSP/HTTP URL or file."""

    type: Literal["opencv"] = "opencv"
    device: int | str = Field(default=0, description="USB camera index, RTSP/HTTP URL or file path")

    @field_validator("device")
    @classmethod
    def _relative_file(cls, v: int | str, info: ValidationInfo) -> int | str:
        """A relative file path is relative to the config file, like every other path."""
        if isinstance(v, str) and "://" not in v and not Path(v).is_absolute():
            base = (info.context or {}).get("base")
            if base is not None and (Path(base) / v).exists():
                return str(Path(base) / v)
        return v
    width: int | None = Field(default=None, ge=16, le=7680, description="requested frame width (default: the camera's)")
    height: int | None = Field(default=None, ge=16, le=4320,
                               description="requested frame height (default: the camera's)")
    fps: float | None = Field(default=None, gt=0, le=240, description="requested frame rate (default: the camera's)")


class PiCamera2SourceConfig(LiveSourceConfig):
    """A Raspberry Pi CSI camera through picamera2."""

    type: Literal["picamera2"] = "picamera2"
    camera_num: int = Field(default=0, ge=0, le=7, description="camera number on a multi-camera board")
    width: int = Field(default=1280, ge=64, le=4608, description="frame width")
    height: int = Field(default=720, ge=64, le=3472, description="frame height")
    fps: float | None = Field(default=None, gt=0, le=120, description="frame rate (default: the sensor mode's)")


class ReplaySourceConfig(Section):
    """A recorded file replayed through the pipeline."""

    type: Literal["replay"] = "replay"
    path: ExistingFile = Field(description="video file to replay")
    speed: Literal["max", "realtime"] = Field(default="max", description="as fast as possible, or at the file's pace")


SourceConfig = Annotated[
    OpenCVSourceConfig | PiCamera2SourceConfig | ReplaySourceConfig, Field(discriminator="type")
]


class CameraConfig(Section):
    """The camera: its name (in topics and events) and its source."""

    name: str = Field(default="camera", pattern=r"^[A-Za-z0-9_-]{1,64}$",
                      description="camera name in topics and events")
    source: SourceConfig = Field(default_factory=OpenCVSourceConfig, description="where frames come from")


# ---------------------------------------------------------------------------------------------- stages


class MotionConfig(Section):
    """The motion gate in front of the detector."""

    enabled: bool = Field(default=True, description="false: run the detector on every frame")
    width: int = Field(default=160, ge=32, le=1280, description="width of the downscaled grey frame compared")
    threshold: int = Field(default=20, ge=1, le=255, description="grey-level change that counts a pixel as moving")
    min_area: float = Field(default=0.002, ge=0, le=1, description="fraction of the watched pixels that must move")
    background_alpha: float = Field(default=0.1, gt=0, le=1, description="running background update weight per frame")
    force_every: int = Field(default=25, ge=0, le=100000,
                             description="run the detector at least every N frames (0 never)")
    hold_frames: int = Field(default=10, ge=0, le=10000,
                             description="keep detecting this many frames after motion stops")
    zones: list[Polygon] = Field(default_factory=list, description="only motion inside these counts (empty: all)")
    masks: list[Polygon] = Field(default_factory=list, description="motion inside these is ignored")


class DetectorConfig(Section):
    """The face detector (attention)."""

    enabled: bool = Field(default=True, description="initial state of the detection switch")
    model: ModelRef = Field(default="face_detector", description="shipped model name or model folder")
    score_threshold: float | None = Field(default=None, gt=0, lt=1,
                                          description="minimum face score (default: the model's calibrated one)")
    nms_threshold: float | None = Field(default=None, gt=0, lt=1,
                                        description="IoU above which overlapping boxes merge (default: the model's)")
    max_side: int | None = Field(default=None, ge=32, le=7680,
                                 description="downscale frames with a longer side first (default: the model's)")
    threads: int = Field(default=1, ge=0, le=64, description="inference threads (0: onnxruntime decides)")
    providers: list[str] | None = Field(default=None, description="onnxruntime providers in order (default: CPU)")


class CropsConfig(Section):
    """Aligned crops and the quality gate deciding whether a crop may name someone."""

    min_size_px: float = Field(default=24.0, ge=0, le=4096, description="smallest face box side in frame pixels")
    min_sharpness: float = Field(default=20.0, ge=0, le=1e6, description="smallest Laplacian variance of the crop")
    max_yaw: float = Field(default=0.35, ge=0, le=1,
                           description="largest nose offset from the eye midline / eye distance")


class RecognizerConfig(Section):
    """The recognizer stage; leave the section out to report every face as ``unknown``."""

    type: Literal["identity", "classifier"] = Field(default="identity",
                                                    description="embedding+gallery, or ONNX classifier")
    model: ModelRef = Field(default="face_recognizer", description="shipped model name or model folder")
    gallery: ExistingFile | None = Field(default=None, description="enrolled gallery file (type identity; none: "
                                                                  "nobody enrolled, every face unknown)")
    threads: int = Field(default=1, ge=0, le=64, description="inference threads (0: onnxruntime decides)")
    max_votes: int = Field(default=10, ge=1, le=10000, description="stop recognizing a track after this many votes")
    threshold: float | None = Field(default=None, gt=0, lt=1,
                                    description="matching strictness: the similarity a face needs to be named "
                                    "(higher is stricter; the uncertain band moves with it; classifier: class "
                                    "probability; default: the model's calibrated thresholds.known)")

    @model_validator(mode="after")
    def _gallery_only_for_identity(self) -> RecognizerConfig:
        if self.type == "classifier" and self.gallery is not None:
            raise ValueError("type classifier takes no gallery")
        return self


class TrackerConfig(Section):
    """Tracks across frames and the event lifecycle."""

    iou_threshold: float = Field(default=0.3, gt=0, lt=1, description="smallest IoU to continue a track")
    min_hits: int = Field(default=3, ge=1, le=1000, description="detections before a track is confirmed (event new)")
    confirm_score: float = Field(default=0.65, ge=0, le=1,
                                 description="a track is confirmed (event new) only once confirm_hits of its "
                                 "detections scored at least this: a face with confidence (0: no gate)")
    confirm_hits: int = Field(default=2, ge=1, le=1000,
                              description="detections scoring at least confirm_score before a track is confirmed")
    max_age: int = Field(default=12, ge=1, le=10000, description="detector runs without a match before a track "
                         "ends (a face turned away for a moment keeps its id)")
    match_distance: float = Field(default=1.0, ge=0, le=10,
                                  description="a detection overlapping no track continues the nearest unmatched "
                                  "track whose predicted centre is within this many face widths and whose size "
                                  "is within 2x (a face missed for a few frames keeps its id; 0: IoU only)")
    update_interval_s: float = Field(default=1.0, ge=0, le=3600, description="least time between snapshot-only updates")
    label: str = Field(default="face", pattern=r"^[a-z0-9_]{1,32}$", description="label of the events")
    vote_full_size_px: float = Field(default=64.0, gt=0, le=4096,
                                     description="face box side (frame pixels) at which a crop's identity vote "
                                     "counts fully; a smaller face's vote weighs (size / this)^2")
    vote_full_sharpness: float = Field(default=100.0, gt=0, le=1e6,
                                       description="crop sharpness (Laplacian variance) at which a vote counts "
                                       "fully; a blurrier crop's vote weighs sharpness / this (times the size "
                                       "factor)")
    vote_min_weight: float = Field(default=1.0, ge=0, le=10000,
                                   description="total vote weight (one large sharp crop: 1) a track needs before "
                                   "its identity is decided; until then its status is uncertain (pending), never "
                                   "unknown (0: decide on the first vote, unknown before any)")


class SnapshotConfig(Section):
    """The JPEG of a track's best face."""

    margin: float = Field(default=0.4, ge=0, le=3, description="context around the box, as a fraction of its size")
    max_size: int = Field(default=256, ge=32, le=2048, description="longest side of the snapshot")
    jpeg_quality: int = Field(default=85, ge=10, le=100, description="JPEG quality")


class VisitorsConfig(Section):
    """Visitors: repeat unknown faces remembered on the device under stable ids (``visitor-17``), named later."""

    enabled: bool = Field(default=False, description="remember unknown faces (off: nothing is stored)")
    threshold: float | None = Field(default=None, gt=0, lt=1,
                                    description="similarity at which a visit is a visitor seen before (higher: "
                                    "fewer people sharing an id, more ids per person; default: calibrated for the "
                                    "recognizer, see edgecam.visitors.DEFAULT_THRESHOLD)")
    min_crops: int = Field(default=2, ge=1, le=1000,
                           description="good-quality recognitions a track needs before it counts as a visit")
    retention_days: float = Field(default=30.0, gt=0, le=3650,
                                  description="visitors not seen for this many days are deleted")
    max_visitors: int = Field(default=1000, ge=1, le=1_000_000, description="most visitors kept (the ones seen "
                              "longest ago are deleted first)")
    max_bytes: int = Field(default=64 << 20, ge=1 << 16, le=1 << 40,
                           description="most bytes of crops and embeddings kept (64 MiB; the same rule)")
    embeddings_per_visitor: int = Field(default=16, ge=1, le=1000,
                                        description="visit embeddings kept per visitor (the newest)")
    fsync: bool = Field(default=True, description="sync every visit to storage (survives power loss)")


class LoggingConfig(Section):
    """Logging on stderr (journald under systemd)."""

    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log level")


def _default_state_dir() -> Path:
    return Path(os.environ.get("STATE_DIRECTORY", "~/.local/state/edgecam").split(":")[0]).expanduser()


class Config(Section):
    """The whole daemon configuration."""

    camera: CameraConfig = Field(default_factory=CameraConfig, description="camera name and source")
    motion: MotionConfig = Field(default_factory=MotionConfig, description="motion gate")
    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="face detector")
    crops: CropsConfig = Field(default_factory=CropsConfig, description="crop quality gate")
    recognizer: RecognizerConfig | None = Field(default=None, description="recognizer (none: faces are unknown)")
    tracker: TrackerConfig = Field(default_factory=TrackerConfig, description="tracker and events")
    snapshot: SnapshotConfig = Field(default_factory=SnapshotConfig, description="best-face snapshot")
    mqtt: MqttConfig | None = Field(default=None, description="MQTT broker (none: events as JSON lines on stdout)")
    state_dir: RelPath = Field(default_factory=_default_state_dir, description="outbox and state "
                               "(default: $STATE_DIRECTORY or ~/.local/state/edgecam)")
    stats_interval_s: float = Field(default=30.0, ge=1, le=86400, description="seconds between stats messages")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="logging")
    visitors: VisitorsConfig = Field(default_factory=VisitorsConfig,
                                     description="repeat unknown faces (off by default; stored in state_dir)")

    @field_validator("visitors")
    @classmethod
    def _visitors_need_embeddings(cls, v: VisitorsConfig, info: ValidationInfo) -> VisitorsConfig:
        rec = info.data.get("recognizer")
        if v.enabled and (rec is None or rec.type != "identity"):
            raise ValueError("enabled visitors need a recognizer section of type identity (visitors are matched "
                             "on its embeddings)")
        return v

    @field_validator("tracker")
    @classmethod
    def _vote_weight_reachable(cls, v: TrackerConfig, info: ValidationInfo) -> TrackerConfig:
        rec = info.data.get("recognizer")
        if rec is not None and v.vote_min_weight > rec.max_votes:
            raise ValueError(f"vote_min_weight {v.vote_min_weight} is never reached with recognizer.max_votes "
                             f"{rec.max_votes} (a vote weighs at most 1): every track would stay uncertain")
        return v

    @field_validator("state_dir")
    @classmethod
    def _state_dir_not_file(cls, v: Path) -> Path:
        if v.exists() and not v.is_dir():
            raise ValueError(f"{v} exists and is not a folder")
        return v


# ---------------------------------------------------------------------------------------------- loading


def _expand_env(node: Any, path: tuple[str | int, ...], problems: list[tuple[tuple[str | int, ...], str]]) -> Any:
    """``node`` with ``${NAME}`` replaced from the environment; unset names go to ``problems``."""
    if isinstance(node, dict):
        return {k: _expand_env(v, (*path, k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, (*path, i), problems) for i, v in enumerate(node)]
    if isinstance(node, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in os.environ:
                problems.append((path, f"environment variable {m.group(1)} is not set"))
                return ""
            return os.environ[m.group(1)]

        return _ENV_REF.sub(sub, node)
    return node


def _show(loc: tuple[str | int, ...], value: Any) -> str:
    """A value for an error line: secrets masked, long values cut."""
    if any(s in str(part).lower() for part in loc for s in _SECRET_KEYS):
        return "***"
    text = "(missing)" if value is None else repr(value) if isinstance(value, str) else str(value)
    text = mask_secrets(text)
    return text if len(text) <= 80 else text[:77] + "..."


def _loc(parts: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in parts) or "(root)"


_UNION_BRANCHES = {"opencv", "picamera2", "replay", "int", "str", "float", "bool", "none"}
"""Labels pydantic puts in an error's location for the branch of a union; not config keys."""


def format_validation_error(source: str, exc: ValidationError) -> list[str]:
    """One ``SOURCE: key.path: value: message`` line per problem (union branches of one key merged)."""
    merged: dict[tuple[str | int, ...], tuple[Any, list[str]]] = {}
    for e in exc.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in _UNION_BRANCHES))
        value = None if e["type"] == "missing" else e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("union_tag_invalid", "union_tag_not_found") and isinstance(value, dict):
            loc, value = (*loc, "type"), value.get("type")
            msg = f"must be one of {e.get('ctx', {}).get('expected_tags', 'the source types')}"
        merged.setdefault(loc, (value, []))[1].append(msg)
    return [f"{source}: {_loc(loc)}: {_show(loc, value)}: {' or '.join(dict.fromkeys(msgs))}"
            for loc, (value, msgs) in merged.items()]


def parse_config(data: Any, source: str = "<config>", base: Path | None = None) -> Config:
    """Validate a parsed YAML document; ConfigError with every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: (root): {_show((), data)}: must be a mapping of sections"])
    env_problems: list[tuple[tuple[str | int, ...], str]] = []
    data = _expand_env(data, (), env_problems)
    problems = [f"{source}: {_loc(loc)}: {msg}" for loc, msg in env_problems]
    try:
        cfg = Config.model_validate(data, context={"base": base})
    except ValidationError as e:
        raise ConfigError(problems + format_validation_error(source, e)) from None
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: Path | None) -> Config:
    """Read and validate a YAML config file (None: the built-in defaults); ConfigError with every problem."""
    if path is None:
        return parse_config({})
    if not path.is_file():
        raise ConfigError([f"{path}: no such config file"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not a UTF-8 text file"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"{path}: {where}invalid YAML: {problem}"]) from None
    return parse_config(data, str(path), path.parent)


def apply_overrides(cfg: Config, mqtt_url: str | None = None, camera: str | None = None) -> Config:
    """``cfg`` with the command line's ``--camera`` and ``--mqtt`` applied (each validated like the file)."""
    if camera is None and mqtt_url is None:
        return cfg
    cfg = cfg.model_copy(deep=True)
    if camera is not None:
        try:
            cfg.camera.name = camera
        except ValidationError as e:
            raise ConfigError([f"--camera {camera!r}: {err['msg']}" for err in e.errors()]) from None
    if mqtt_url is not None:
        cfg.mqtt = config_from_url(mqtt_url, cfg.mqtt)
    return cfg
