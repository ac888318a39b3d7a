"""CSV uploads of ``/v1/predict/batch``: one ``<modality>.csv`` per modality, in the
dataset format, read with the project's dataset loader (the same validation as
``site check``)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from server.serving.api.bodies import check_batch_size
from server.serving.predictor import InputError, Predictor

MAX_UPLOAD_FILES = 20
_CSV_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}\.csv$")


async def read_csv_upload(
    request: Request, predictor: Predictor, max_batch: int
) -> tuple[np.ndarray, np.ndarray, list[str | None], list[str]]:
    """A CSV upload as standardized ``x``, ``mask``, patient ids and dataset warnings.

    The files are written to a private temporary directory, removed before returning."""
    from common.dataset import inspect_dataset

    try:
        form = await request.form(max_files=MAX_UPLOAD_FILES, max_fields=MAX_UPLOAD_FILES)
    except HTTPException:  # body too large
        raise
    except Exception as exc:  # the parsers' errors all mean a malformed body
        raise InputError([{"loc": ["body"], "type": "multipart",
                           "msg": f"malformed multipart body ({exc})"}]) from exc
    try:
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            raise InputError([{"loc": ["body", "files"], "type": "missing",
                               "msg": "no file uploaded: send one <modality>.csv per modality"}])
        with tempfile.TemporaryDirectory(prefix="cancer-alpha-upload-") as tmp:
            names: set[str] = set()
            for up in uploads:
                name = Path(up.filename or "").name
                if not _CSV_NAME.match(name) or name in names:
                    raise InputError([{"loc": ["body", "files", up.filename or ""],
                                       "type": "value_error",
                                       "msg": "file names must be distinct <modality>.csv "
                                       "names (letters, digits, _ . -)"}])
                names.add(name)
                (Path(tmp) / name).write_bytes(await up.read())
            data, report = await run_in_threadpool(
                inspect_dataset, tmp, schema=predictor.schema, require_labels=False)
    finally:
        await form.close()
    if data is None:
        raise InputError([_finding_error(f, tmp) for f in report.errors][:20])
    check_batch_size(data.n, max_batch, ["body", "files"])
    x, mask = await run_in_threadpool(predictor.prepare_data, data)
    return x, mask, [str(p) for p in data.patient_ids], \
        [client_text(str(f), tmp) for f in report.warnings]


def _finding_error(f: Any, tmp: str) -> dict[str, Any]:
    """A dataset finding as a 422 error item located in the uploaded file."""
    loc: list[str | int] = ["body", "files"]
    loc += [client_text(str(x), tmp) for x in (f.file, f.column) if x is not None]
    if f.row is not None:
        loc.append(f"row {f.row}")
    return {"loc": loc, "msg": client_text(str(f), tmp), "type": "dataset"}


_NUMPY_REPR = re.compile(r"\bnp\.[a-z_0-9]+\(([^()]*)\)")


def client_text(text: str, tmp: str) -> str:
    """A message about an upload as its sender should read it: file names without the
    server's temporary directory, values without NumPy's ``np.str_(...)`` wrappers."""
    text = text.replace(tmp.rstrip("/") + "/", "").replace(tmp, "upload")
    return _NUMPY_REPR.sub(r"\1", text)
