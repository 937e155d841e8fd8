"""Records of an offline W&B run, read back from its ``run-<id>.wandb`` file.

wandb >= 0.19 ships no Python reader of its transaction log (its Go core writes and reads it), so this
reads the file's framing (LevelDB's log format: 32 KiB blocks of records with a 7-byte header
crc32/length/type, after wandb's own 7-byte ':W&B' header) and decodes each record with wandb's own
protobuf message, ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

_BLOCK = 32 * 1024
_HEADER = struct.Struct("<IHB")  # crc32, length, type: 1 full, 2 first, 3 middle, 4 last


def wandb_records(path: Path) -> list:
    """Every Record of a .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B transaction log"
    bodies, pending, pos = [], b"", 7
    while pos + _HEADER.size <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _HEADER.size:  # a block's tail too short for a header is padding
            pos += room
            continue
        _, length, kind = _HEADER.unpack_from(data, pos)
        if kind == 0:  # zero padding up to the block end
            pos += room
            continue
        body = data[pos + _HEADER.size:pos + _HEADER.size + length]
        pos += _HEADER.size + length
        pending = body if kind in (1, 2) else pending + body
        if kind in (1, 4):
            bodies.append(pending)
    records = []
    for body in bodies:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(body)
        records.append(record)
    return records


def offline_run(wandb_dir: Path) -> dict:
    """{'name', 'config', 'history': {step: {tag: value}}, 'summary': {key: value}} of the one offline run
    under ``wandb_dir`` (the ``wandb`` folder of a run directory)."""
    files = sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline run under {wandb_dir}, found {files}"
    run = {"name": None, "config": {}, "history": {}, "summary": {}}
    for record in wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["name"] = record.run.display_name
            run["config"].update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            run["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            row = {_key(item): json.loads(item.value_json) for item in record.history.item}
            run["history"][record.history.step.num] = {k: v for k, v in row.items() if not k.startswith("_")}
        elif kind == "summary":
            run["summary"].update({_key(item): json.loads(item.value_json) for item in record.summary.update})
    return run


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)
