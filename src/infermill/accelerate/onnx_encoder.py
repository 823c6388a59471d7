"""``accelerate = "onnx"`` and ``"onnx-int8"``: a sentence-transformers model's transformer through ONNX Runtime.

What is converted: the model's first module only (the sentence-transformers ``Transformer``: tokens in,
token embeddings out), exported with ``torch.onnx.export`` (the TorchScript exporter, batch and sequence
as dynamic axes). Everything after it (``Pooling`` in the model's own mode, ``Normalize``, ``Dense``...)
still runs as the model's own torch modules on ONNX Runtime's output, and then the job's ``truncate_dim`` and
``normalize`` (``SentenceModel.finish``): the pooling is sentence-transformers' code, not a copy of it.
Tokenization is unchanged too (the kind's ``preprocess``: the model's tokenizer, micro batches of similar
length, each padded to its own longest text).

The session runs with every ONNX Runtime graph optimization (operator fusion, constant folding, layout
changes); its intra-op threads follow the kind's lanes: one thread per lane when ``parallel = "batches"``
runs ``threads`` batches at once, else ``threads``. ``"onnx-int8"`` quantizes the exported model's weights to
int8 (``onnxruntime.quantization.quantize_dynamic``): about twice as fast on a CPU, but the vectors move
(min cosine around 0.9 on the worst text of a corpus, see docs/accelerate.md), so its default bound is the
same 0.999 as fp32's and it is used only with an ``accelerate_tolerance`` the user chose.

Artifacts (a folder holding ``model.onnx``) are cached under the keys of ``base.artifact_path``: the model
folder's fingerprint, the method and the versions of torch, transformers, sentence-transformers and ONNX
Runtime (and onnx for int8). Two workers of one job build once (``base.build_once``).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .base import Accelerator, Built, Metric, artifact_path, build_once

if TYPE_CHECKING:
    import numpy as np

    from ..models.base import ModelAdapter
    from ..models.sentence_transformers_model import SentenceModel

__all__ = ["OnnxEncoder", "OnnxInt8Encoder", "cosines"]

MODEL_FILE = "model.onnx"
"""The ONNX file inside an artifact folder (a folder, so a model over 2 GB can keep its external data)."""
OPSET = 17
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""Tokenizer outputs the exported graph may take (others, such as ``prompt_length``, only reach the modules
after the transformer)."""
_PIP = "pip install 'infermill[onnx]' onnx"


class OnnxEncoder(Accelerator):
    """The transformer of a ``kind = "sentence-transformers"`` model in ONNX Runtime, fp32."""

    method: ClassVar[str] = "onnx"
    metric: ClassVar[Metric] = "min_cosine"
    default_bound: ClassVar[float] = 0.999
    int8: ClassVar[bool] = False

    def unavailable(self, adapter: ModelAdapter) -> str | None:
        from ..models.sentence_transformers_model import SentenceModel

        if not isinstance(adapter, SentenceModel):
            return f"'{self.method}' converts kind 'sentence-transformers' models, not kind '{adapter.kind}'"
        for module in ("onnxruntime", "onnx"):
            try:
                __import__(module)
            except ImportError:
                return f"'{self.method}' needs the '{module}' package, which is not installed: {_PIP}"
        if adapter.model is None or adapter.device is None:
            return "the model is not loaded (setup() has not run)"
        if adapter.device.type != "cpu":
            return f"'{self.method}' runs on the CPU; this worker's model is on {adapter.device}"
        if adapter.settings.dtype != "float32":
            return f"'{self.method}' converts float32 models; this job loads the model as {adapter.settings.dtype}"
        first = next(iter(adapter.model.children()), None)
        if first is None or type(first).__name__ != "Transformer" or not hasattr(first, "auto_model"):
            return f"the model's first module is {type(first).__name__}, not a sentence-transformers Transformer"
        config = getattr(first.auto_model, "config", None)
        if getattr(config, "output_hidden_states", False):
            return "the model uses every layer's hidden states (output_hidden_states), which the export leaves out"
        return None

    def build(self, adapter: ModelAdapter, cache_dir: Path) -> Built:
        model = _sentence_model(adapter)
        started = time.perf_counter()
        versions = _versions(int8=False)
        fp32 = artifact_path(cache_dir, model.fingerprint(), OnnxEncoder.method, versions)
        target = fp32
        if self.int8:
            target = artifact_path(cache_dir, model.fingerprint(), self.method, _versions(int8=True))
            # The fp32 export is only needed when the int8 artifact is not there yet.
            hit = target.exists() or build_once(
                target, lambda tmp: _quantize(_fp32_artifact(model, fp32), tmp)
            )
        else:
            hit = build_once(fp32, lambda tmp: _export(model, tmp))
        predict = _Session(model, target / MODEL_FILE).predict
        return Built(
            predict=predict,
            artifact=str(target / MODEL_FILE),
            build_seconds=0.0 if hit else time.perf_counter() - started,
            cache_hit=hit,
        )

    def agreement(self, original: Any, accelerated: Any) -> float:
        """The lowest cosine similarity between a row's original and accelerated embedding."""
        values = cosines(original, accelerated)
        return float(values.min()) if len(values) else 1.0


class OnnxInt8Encoder(OnnxEncoder):
    """The same, with the weights of the exported model quantized to int8 (dynamic quantization)."""

    method: ClassVar[str] = "onnx-int8"
    int8: ClassVar[bool] = True


def cosines(original: Any, accelerated: Any) -> np.ndarray:
    """Cosine similarity of each row's two embeddings; ``original`` and ``accelerated`` are two results of
    ``predict`` on the same inputs (``(prepared, [vectors of each micro batch])``). Two zero vectors agree."""
    import numpy as np

    a = np.concatenate(original[1]).astype(np.float64) if original[1] else np.empty((0, 0))
    b = np.concatenate(accelerated[1]).astype(np.float64) if accelerated[1] else np.empty((0, 0))
    if a.shape != b.shape:
        return np.zeros(max(len(a), len(b)))
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    result: np.ndarray = np.where(both_zero, 1.0, values)
    return result


def _sentence_model(adapter: ModelAdapter) -> SentenceModel:
    from ..models.sentence_transformers_model import SentenceModel

    if not isinstance(adapter, SentenceModel) or adapter.model is None:
        raise TypeError(f"the onnx encoder needs a set-up sentence-transformers adapter, not {adapter!r}")
    return adapter


def _versions(*, int8: bool) -> dict[str, str]:
    """What the exported graph depends on besides the weights (an exporter or fusion change rebuilds it)."""
    names = ["torch", "transformers", "sentence-transformers", "onnxruntime"] + (["onnx"] if int8 else [])
    return {name: metadata.version(name) for name in names}


def _fp32_artifact(model: SentenceModel, fp32: Path) -> Path:
    build_once(fp32, lambda tmp: _export(model, tmp))
    return fp32 / MODEL_FILE


def _export(model: SentenceModel, folder: Path) -> None:
    """Export the model's first module to ``folder/model.onnx``."""
    import pyarrow as pa
    import torch

    # Two texts of different lengths: the traced graph must take the attention mask path that padding needs
    # (transformers skips the mask when a batch has no padding, and tracing would keep that shortcut).
    texts = ["a short text", "a longer text, with a few more words than the first one"]
    column = model.settings.text_column or "text"
    sample = model.preprocess(pa.RecordBatch.from_arrays([pa.array(texts)], names=[column])).parts[0]
    names = [name for name in _INPUTS if isinstance(sample.get(name), torch.Tensor)]
    first = next(iter(model.model.children()))
    extra = {k: v for k, v in sample.items() if not isinstance(v, torch.Tensor)}  # e.g. modality = "text"
    output = getattr(first, "module_output_name", "token_embeddings")

    class Encoder(torch.nn.Module):
        """The first module as a function of tensors (what the exporter traces)."""

        def __init__(self) -> None:
            super().__init__()
            self.first = first

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            features = {**extra, **dict(zip(names, tensors, strict=True))}
            result: torch.Tensor = self.first(features)[output]
            return result

    # In eval mode before the exporter sees it: the exporter restores the wrapper's mode afterwards, and a
    # wrapper left in training mode would switch the job's own model to training (dropout on) with it.
    wrapper = Encoder().eval()
    dynamic = {name: {0: "batch", 1: "sequence"} for name in [*names, "token_embeddings"]}
    folder.mkdir(parents=True)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns about its own deprecation and about traced Python branches; the
        # verification on the job's own rows is what decides whether the graph is right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(sample[name] for name in names),
            str(folder / MODEL_FILE),
            input_names=names,
            output_names=["token_embeddings"],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _quantize(source: Path, folder: Path) -> None:
    """Dynamic int8 quantization of ``source`` (weights int8, activations quantized per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder.mkdir(parents=True)
    with _quiet_root_logger():
        quantize_dynamic(str(source), str(folder / MODEL_FILE), weight_type=QuantType.QInt8)


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs advice ("consider pre-processing") through the root logger: keep it off
    the job's output while quantizing."""

    def drop(record: logging.LogRecord) -> bool:
        return record.name != "root" or record.levelno > logging.WARNING

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


class _Session:
    """An ONNX Runtime session for the first module, and the rest of the model in torch."""

    def __init__(self, model: SentenceModel, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One thread per call when the engine runs several lanes (the lanes are the parallelism), as the
        # kind's torch calls do; else the worker's threads.
        options.intra_op_num_threads = 1 if model.lanes() > 1 else model.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.model = model
        first, *rest = list(model.model.children())
        self.output = getattr(first, "module_output_name", "token_embeddings")
        self.rest = rest

    def predict(self, inputs: Any) -> tuple[Any, list[np.ndarray]]:
        """Same contract as ``SentenceModel.predict``."""
        import numpy as np
        import torch

        vectors = []
        with torch.inference_mode():
            for part in inputs.parts:
                feed = {name: part[name].numpy() for name in self.inputs}
                (hidden,) = self.session.run(["token_embeddings"], feed)
                features = dict(part)
                features[self.output] = torch.from_numpy(hidden)
                for module in self.rest:
                    features = module(features)
                vectors.append(self.model.finish(features).numpy().astype(np.float32, copy=False))
        return inputs, vectors
