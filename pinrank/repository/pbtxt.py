"""config.pbtxt <-> Triton's protobuf ModelConfig: the one reader and writer
(configs are built as messages, never as text templates)."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

#: What parse_pbtxt raises on text that is not a ModelConfig.
ParseError = text_format.ParseError


def to_pbtxt(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    """Parse a config.pbtxt; raises ParseError when it is invalid."""
    return text_format.Parse(text, mc.ModelConfig())


def read_config(path: str | Path) -> mc.ModelConfig:
    """The ModelConfig in the file at `path` (ParseError, UnicodeDecodeError, OSError)."""
    return parse_pbtxt(Path(path).read_text())


def write_config(path: str | Path, cfg: mc.ModelConfig, *, tmp_suffix: str = ".tmp") -> None:
    """Write `cfg` to `path` atomically: a server polling the repository sees
    the old config or the new one, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{tmp_suffix}")
    tmp.write_text(to_pbtxt(cfg))
    tmp.replace(path)
