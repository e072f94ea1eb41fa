"""onnxruntime sessions for ``surgeon blame``: one model at one level with named passes
disabled, the optimised graph saved on request, and onnxruntime's INFO log captured.

Built from the runner's public pieces (:mod:`surgeon.runner` stays the one module that
imports onnxruntime) rather than its ``Session``: blame needs the optimised graph saved
and onnxruntime's log captured (the process's stderr redirected), which only it uses.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from surgeon.errors import RuntimeFailure
from surgeon.model import Model
from surgeon.runner import RunOptions


class BlameRunner:
    """Sessions of one model at one level with passes disabled, built from one serialised
    copy of the model."""

    def __init__(self, model: Model, options: RunOptions, scratch: contextlib.ExitStack):
        from surgeon import runner

        self.model = model
        self.options = options
        # Weights left on disk stay there: onnxruntime maps them from the model's folder
        # (every reference checked first), as for the runner's sessions.
        self.folder = runner.session_folder(model)
        if runner.through_file(model):
            from surgeon.saving import save

            folder = scratch.enter_context(tempfile.TemporaryDirectory(prefix="surgeon-blame-"))
            path = Path(folder) / "model.onnx"
            save(model.with_proto(model.proto), path, external_data=True, durable=False)
            self.source: str | bytes = str(path)
            self.folder = None
        else:
            self.source = model.proto.SerializeToString()

    def session(
        self,
        level: str,
        disabled: Sequence[str] = (),
        *,
        save_to: Path | None = None,
        log: list[str] | None = None,
    ):
        from surgeon import runner

        ort = runner.ort_module()
        so = runner.session_options(
            RunOptions(
                optimization=level,
                custom_op_libraries=self.options.custom_op_libraries,
                threads=self.options.threads,
            )
        )
        if self.folder is not None:
            so.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", self.folder
            )
        if save_to is not None:
            so.optimized_model_filepath = str(save_to)
            # Weights go to a side file: only the graph's structure is read back.
            so.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", save_to.name + ".data"
            )
            so.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", "64"
            )
        capture = _captured_stderr() if log is not None else contextlib.nullcontext([])
        if log is not None:
            so.log_severity_level = 1  # INFO: "GraphTransformer X modified: 1"
        try:
            with runner.CREATE_LOCK, capture as text:
                with contextlib.redirect_stdout(_Discard()):
                    session = ort.InferenceSession(
                        self.source,
                        so,
                        providers=["CPUExecutionProvider"],
                        disabled_optimizers=set(disabled),
                    )
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise RuntimeFailure(
                f"onnxruntime could not load {self.model.name} at level `{level}`"
                + (f" with {', '.join(disabled)} disabled" if disabled else "")
                + f": {runner.first_line(e)}"
            ) from None
        if log is not None:
            log.extend(text)
        return session

    def run(self, session, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from surgeon import runner

        names = self.model.output_names
        accepted = {i.name for i in session.get_inputs()}
        try:
            values = session.run(names, {k: v for k, v in feeds.items() if k in accepted})
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise RuntimeFailure(
                f"onnxruntime could not run {self.model.name}: {runner.first_line(e)}"
            ) from None
        return dict(zip(names, values, strict=True))


class _Discard:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def _captured_stderr():
    """The process's file descriptor 2 into a list of lines while the block runs.

    onnxruntime's C++ logger writes to the process's stderr, below Python's sys.stderr,
    so the descriptor itself is redirected (callers hold the runner's creation lock).
    """
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())
