"""Meta-classifiers: which known dataset does a batch of fingerprints resemble most?

A fingerprint is the pooled feature vector of a frozen ImageNet CNN for one image. Every known
dataset is one class; a meta-classifier is trained offline on the fingerprints of all of them
and, at run time, maps a batch of fingerprints of ONE unknown dataset to a belief over the known
datasets (section 6.1 of the paper, "Approach 1"). This module holds what a run needs: each
kind's scoring and its saved arrays, and `load_selector`; the training of each kind is in
`offline/meta_classifiers.py` (subclasses of these, so the arrays and the standardisation a
run applies are the ones training wrote). Four kinds:

- `nearest_centroid`: the paper's k-means baseline. k-means centroids per known dataset; each
  sample votes for the dataset owning its nearest centroid; scores are the vote fractions.
- `mlp_vote`: a two-layer perceptron (Swish, dropout) classifies every sample; majority vote.
- `moments_mlp`: the "precalculation layer": per feature, the batch's values beyond the `trim`
  quantiles are dropped and moments (mean, median, std, variance, skewness, kurtosis) of the rest
  are fed to the same two-layer perceptron, trained on random batches of many sizes.
- `vae_ttest`: a small VAE; the batch's latent means are compared with every known dataset's by
  Welch's t-test per latent dimension; the mean log p-value is the dataset's logit.

All standardise features with the training mean and std. A classifier is saved as one .npz file
(`offline.meta_classifiers.save_selector`): its arrays plus a JSON string `meta` (kind, names,
feature dimension, hyper-parameters, format version); `load_selector` validates it and names the
file and field at fault.
"""
from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, NamedTuple

import numpy as np
import torch
from scipy import stats
from torch import nn

FORMAT_VERSION = 1
MOMENTS = ("mean", "median", "std", "variance", "skewness", "kurtosis")
STD_FLOOR = 1e-6          # features this constant are only centred, not scaled
MOMENT_VAR_FLOOR = 1e-8   # below it (standardised units) skewness and kurtosis are set to 0
LATENT_VAR_FLOOR = 1e-4   # keeps Welch's test finite for constant latents and one sample
MAX_ABS_T = 30.0          # beyond it log p underflows for large df; no extra evidence anyway


def feature_scale(std: np.ndarray) -> np.ndarray:
    """The divisor that standardises features of standard deviation `std`: the deviation
    itself, or 1 for a feature constant in the training data (it is only centred)."""
    return np.where(std < STD_FLOOR, 1.0, std)


class SelectorError(ValueError):
    """A selector file is invalid; the message names the file and field."""


class _Spec(NamedTuple):
    """An expected array: its shape (ints, or names that must agree across arrays) and range."""

    shape: tuple[int | str, ...]
    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None


@dataclass(eq=False, kw_only=True)
class MetaClassifier:
    """Base class: parameter checks, standardisation, scoring, the saved arrays.

    Subclasses are dataclasses whose fields are the hyper-parameters; they implement
    `_raw_scores` (on standardised features; non-negative, any scale), and describe their
    fitted arrays with `_array_spec`, `_get_arrays` and `_set_arrays`.
    """

    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.names: list[str] = []
        self.dim = 0
        self._mean = np.zeros(0, dtype=np.float32)
        self._std = np.ones(0, dtype=np.float32)
        for spec in fields(self):
            value = getattr(self, spec.name)
            default = spec.default
            # JSON gives lists for tuples and ints for floats: accept both, store the Python type.
            if isinstance(default, tuple) and isinstance(value, list):
                value = tuple(value)
            if isinstance(default, float) and isinstance(value, int) \
                    and not isinstance(value, bool):
                value = float(value)
            if type(value) is not type(default):
                raise ValueError(f"{self.kind}: parameter '{spec.name}' must be "
                                 f"{type(default).__name__}, got {value!r}")
            setattr(self, spec.name, value)
        for name, ok in self._param_checks():
            if not ok:
                raise ValueError(f"{self.kind}: parameter '{name}' has invalid value "
                                 f"{getattr(self, name)!r}")

    def _param_checks(self) -> list[tuple[str, bool]]:
        return []

    @property
    def params(self) -> dict[str, Any]:
        """The hyper-parameters, as the constructor takes them."""
        return {spec.name: getattr(self, spec.name) for spec in fields(self)}

    # -- scoring ------------------------------------------------------------------------------
    def scores(self, batch: np.ndarray) -> np.ndarray:
        """The belief over the known datasets (sums to 1) for `batch` [b, d] of one dataset."""
        if not self.names:
            raise RuntimeError(f"{self.kind}: scores() before fit()")
        batch = np.asarray(batch)
        if batch.ndim != 2 or batch.shape[0] < 1 or batch.shape[1] != self.dim:
            raise ValueError(f"{self.kind}: batch must have shape [b >= 1, {self.dim}], got "
                             f"{list(batch.shape)}")
        if not np.isfinite(batch).all():
            raise ValueError(f"{self.kind}: batch holds non-finite values")
        with torch.no_grad():
            raw = np.asarray(self._raw_scores(self._standardise(batch)), dtype=np.float64)
        return raw / raw.sum()

    def select(self, batch: np.ndarray) -> tuple[str, float]:
        """The most similar known dataset and its score."""
        scores = self.scores(batch)
        best = int(np.argmax(scores))
        return self.names[best], float(scores[best])

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) - self._mean) / self._std

    def _raw_scores(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- persistence --------------------------------------------------------------------------
    def _array_spec(self) -> dict[str, _Spec]:
        return {"feature_mean": _Spec((self.dim,)),
                "feature_std": _Spec((self.dim,), minimum=STD_FLOOR / 2)}

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {"feature_mean": self._mean, "feature_std": self._std}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._mean = arrays["feature_mean"].astype(np.float32)
        self._std = arrays["feature_std"].astype(np.float32)


class _Mlp(nn.Sequential):
    """The paper's two-layer perceptron: Linear, Swish, dropout, Linear."""

    def __init__(self, inputs: int, hidden: int, outputs: int, dropout: float) -> None:
        super().__init__(nn.Linear(inputs, hidden), nn.SiLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, outputs))


@dataclass(eq=False, kw_only=True)
class _MlpClassifier(MetaClassifier):
    """Shared by the two perceptron kinds: the network and its arrays."""

    hidden: int = 256
    dropout: float = 0.2
    learning_rate: float = 1e-3

    def _param_checks(self) -> list[tuple[str, bool]]:
        return [("hidden", 1 <= self.hidden <= 16384),
                ("dropout", 0.0 <= self.dropout < 1.0),
                ("learning_rate", 0.0 < self.learning_rate <= 1.0)]

    def _input_dim(self) -> int:
        return self.dim

    def _new_net(self) -> _Mlp:
        return _Mlp(self._input_dim(), self.hidden, len(self.names), self.dropout)

    def _array_spec(self) -> dict[str, _Spec]:
        return {**super()._array_spec(), **_module_spec(_empty(self._new_net))}

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {**super()._get_arrays(), **_module_arrays(self._net)}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        super()._set_arrays(arrays)
        self._net = _load_module(_empty(self._new_net), arrays)


@dataclass(eq=False, kw_only=True)
class NearestCentroid(MetaClassifier):
    """k-means per known dataset; every sample votes for the owner of its nearest centroid."""

    kind: ClassVar[str] = "nearest_centroid"
    clusters_per_dataset: int = 8
    n_init: int = 3
    max_iter: int = 300

    def _param_checks(self) -> list[tuple[str, bool]]:
        return [("clusters_per_dataset", 1 <= self.clusters_per_dataset <= 1024),
                ("n_init", 1 <= self.n_init <= 100),
                ("max_iter", 1 <= self.max_iter <= 10000)]

    def _raw_scores(self, z: np.ndarray) -> np.ndarray:
        # Squared distances up to the per-sample constant |z|^2, which does not change argmin.
        distances = (self._centroids ** 2).sum(axis=1) - 2.0 * z @ self._centroids.T
        votes = self._owners[np.argmin(distances, axis=1)]
        return np.bincount(votes, minlength=len(self.names)) / len(z)

    def _array_spec(self) -> dict[str, _Spec]:
        return {**super()._array_spec(), "centroids": _Spec(("k", self.dim)),
                "centroid_owners": _Spec(("k",), integer=True, minimum=0,
                                         maximum=len(self.names) - 1)}

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {**super()._get_arrays(), "centroids": self._centroids,
                "centroid_owners": self._owners}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        super()._set_arrays(arrays)
        self._centroids = arrays["centroids"].astype(np.float32)
        self._owners = arrays["centroid_owners"].astype(np.int64)


@dataclass(eq=False, kw_only=True)
class MlpVote(_MlpClassifier):
    """The perceptron classifies every sample; scores are the vote fractions."""

    kind: ClassVar[str] = "mlp_vote"
    epochs: int = 30
    batch_size: int = 256

    def _param_checks(self) -> list[tuple[str, bool]]:
        return [*super()._param_checks(), ("epochs", 1 <= self.epochs <= 10000),
                ("batch_size", 1 <= self.batch_size <= 65536)]

    def _raw_scores(self, z: np.ndarray) -> np.ndarray:
        votes = self._net(torch.from_numpy(z)).argmax(dim=1).numpy()
        return np.bincount(votes, minlength=len(self.names)) / len(z)


@dataclass(eq=False, kw_only=True)
class MomentsMlp(_MlpClassifier):
    """The perceptron on the batch's trimmed moments per feature (the precalculation layer).

    Trimming drops, per feature, the floor(trim * b) smallest and largest values of the batch
    (so b = 1 and b = 2 keep everything); the moments are population moments of what is left.
    Every training step draws one batch size b from `train_batch_sizes` (capped at each
    dataset's size) and, per known dataset, max(1, samples_per_step // b) random batches of
    it: many cheap small batches, whose moments vary most, and few costly large ones. The moment
    vector is standardised with statistics of training batches of every size.
    """

    kind: ClassVar[str] = "moments_mlp"
    trim: float = 0.1
    moments: tuple[str, ...] = MOMENTS
    steps: int = 300
    samples_per_step: int = 64
    train_batch_sizes: tuple[int, ...] = tuple(2 ** i for i in range(11))

    def _param_checks(self) -> list[tuple[str, bool]]:
        return [*super()._param_checks(), ("trim", 0.0 <= self.trim <= 0.4),
                ("moments", len(self.moments) > 0 and len(set(self.moments)) == len(self.moments)
                 and all(m in MOMENTS for m in self.moments)),
                ("steps", 1 <= self.steps <= 10 ** 6),
                ("samples_per_step", 1 <= self.samples_per_step <= 65536),
                ("train_batch_sizes", len(self.train_batch_sizes) > 0
                 and all(type(s) is int and 1 <= s <= 65536 for s in self.train_batch_sizes))]

    def _input_dim(self) -> int:
        return len(self.moments) * self.dim

    def _standardise_moments(self, vectors: np.ndarray) -> np.ndarray:
        return (vectors - self._moment_mean) / self._moment_std

    def _raw_scores(self, z: np.ndarray) -> np.ndarray:
        inputs = self._standardise_moments(batch_moments(z[None], self.trim, self.moments))
        return torch.softmax(self._net(torch.from_numpy(inputs))[0].double(), dim=0).numpy()

    def _array_spec(self) -> dict[str, _Spec]:
        width = self._input_dim()
        return {**super()._array_spec(), "moment_mean": _Spec((width,)),
                "moment_std": _Spec((width,), minimum=STD_FLOOR / 2)}

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {**super()._get_arrays(), "moment_mean": self._moment_mean,
                "moment_std": self._moment_std}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        super()._set_arrays(arrays)
        self._moment_mean = arrays["moment_mean"].astype(np.float32)
        self._moment_std = arrays["moment_std"].astype(np.float32)


def batch_moments(x: np.ndarray, trim: float, moments: tuple[str, ...]) -> np.ndarray:
    """Trimmed moments across the batch axis: float32 `x` [B, b, d] -> [B, len(moments) * d].

    Per feature the floor(trim * b) smallest and largest values are dropped. Spread and shape
    moments are 0 where the kept values are (nearly) constant, e.g. for b = 1. numpy, not
    torch: its vectorised sort is several times faster on CPU, and nothing here needs gradients.
    """
    b = x.shape[1]
    cut = int(trim * b)
    if cut or "median" in moments:
        x = np.sort(x, axis=1)[:, cut:b - cut]
    kept = x.shape[1]
    mean = x.mean(axis=1)
    centred = x - mean[:, None]
    squared = centred * centred
    variance = squared.mean(axis=1)
    spread = variance > MOMENT_VAR_FLOOR
    safe = np.maximum(variance, MOMENT_VAR_FLOOR)

    def shape_moment(power: np.ndarray, norm: float, offset: float) -> np.ndarray:
        # einsum sums the products without another [B, b, d] temporary.
        sums = np.einsum("nbd,nbd->nd", squared, power) / kept
        return np.where(spread, sums / safe ** norm - offset, 0.0).astype(np.float32)

    values = {
        "mean": lambda: mean,
        "median": lambda: (x[:, (kept - 1) // 2] + x[:, kept // 2]) / 2,
        "std": lambda: np.sqrt(variance),
        "variance": lambda: variance,
        "skewness": lambda: shape_moment(centred, 1.5, 0.0),
        "kurtosis": lambda: shape_moment(squared, 2.0, 3.0),
    }
    return np.concatenate([values[name]() for name in moments], axis=1)


class _Vae(nn.Module):
    """Encoder d -> hidden -> (mean, log-variance); decoder latent -> hidden -> d."""

    def __init__(self, inputs: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(inputs, hidden), nn.SiLU(),
                                     nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.SiLU(),
                                     nn.Linear(hidden, inputs))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return mean, log_var.clamp(-10.0, 10.0)



@dataclass(eq=False, kw_only=True)
class VaeTTest(MetaClassifier):
    """Welch's t-test per latent dimension between the batch and every known dataset.

    Each dataset is summarised by the mean, variance and count of its training samples' latent
    means. A batch of one sample has no variance of its own: the dataset's variance stands in
    (a one-sample test of whether the sample could come from that dataset).
    """

    kind: ClassVar[str] = "vae_ttest"
    latent: int = 16
    hidden: int = 256
    learning_rate: float = 1e-3
    epochs: int = 10
    batch_size: int = 256

    def _param_checks(self) -> list[tuple[str, bool]]:
        return [("latent", 1 <= self.latent <= 1024), ("hidden", 1 <= self.hidden <= 16384),
                ("learning_rate", 0.0 < self.learning_rate <= 1.0),
                ("epochs", 1 <= self.epochs <= 10000),
                ("batch_size", 1 <= self.batch_size <= 65536)]

    def _new_vae(self) -> _Vae:
        return _Vae(self.dim, self.hidden, self.latent)

    def _raw_scores(self, z: np.ndarray) -> np.ndarray:
        codes = self._vae.encode(torch.from_numpy(z))[0].double().numpy()
        b = len(codes)
        mean = codes.mean(axis=0)
        n = self._counts[:, None].astype(np.float64)
        c = self._latent_var / n
        if b > 1:
            a = np.maximum(codes.var(axis=0, ddof=1), LATENT_VAR_FLOOR)[None] / b
            # Welch-Satterthwaite; a dataset of one sample adds no degrees of freedom.
            df = (a + c) ** 2 / (a ** 2 / (b - 1) + c ** 2 / np.maximum(n - 1, 1))
        else:
            # One sample against the dataset's spread: all the variance comes from the dataset.
            a = self._latent_var
            df = np.broadcast_to(n - 1, c.shape)
        t = (mean[None] - self._latent_mean) / np.sqrt(a + c)
        log_p = math.log(2.0) + stats.t.logsf(np.minimum(np.abs(t), MAX_ABS_T),
                                              np.maximum(df, 1.0))
        logits = log_p.mean(axis=1)
        return np.exp(logits - logits.max())

    def _array_spec(self) -> dict[str, _Spec]:
        shape = (len(self.names), self.latent)
        return {**super()._array_spec(), **_module_spec(_empty(self._new_vae)),
                "latent_mean": _Spec(shape),
                "latent_var": _Spec(shape, minimum=LATENT_VAR_FLOOR / 2),
                "counts": _Spec((len(self.names),), integer=True, minimum=1)}

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {**super()._get_arrays(), **_module_arrays(self._vae),
                "latent_mean": self._latent_mean, "latent_var": self._latent_var,
                "counts": self._counts}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        super()._set_arrays(arrays)
        self._vae = _load_module(_empty(self._new_vae), arrays)
        self._latent_mean = arrays["latent_mean"].astype(np.float64)
        self._latent_var = arrays["latent_var"].astype(np.float64)
        self._counts = arrays["counts"].astype(np.int64)


KINDS: dict[str, type[MetaClassifier]] = {
    cls.kind: cls for cls in (NearestCentroid, MlpVote, MomentsMlp, VaeTTest)}


def load_selector(path: Path | str) -> MetaClassifier:
    """Read and validate a file written by `save_selector`."""
    path = Path(path)
    if not path.is_file():
        raise SelectorError(f"{path}: file missing")
    arrays = _read_npz(path)
    meta = _read_meta(path, arrays.pop("meta", None))
    try:
        classifier = KINDS[meta["kind"]](**meta["params"])
    except (TypeError, ValueError) as err:
        raise SelectorError(f"{path}: field 'meta.params' is invalid: {err}") from err
    classifier.names = meta["names"]
    classifier.dim = meta["dim"]
    spec = classifier._array_spec()
    unexpected = sorted(set(arrays) - set(spec))
    if unexpected:
        raise SelectorError(f"{path}: unexpected field(s) {unexpected} for kind {meta['kind']}")
    sizes: dict[str, int] = {}
    for name, expected in spec.items():
        _check_array(path, name, arrays.get(name), expected, sizes)
    classifier._set_arrays(arrays)
    return classifier


# -- helpers ----------------------------------------------------------------------------------
def _empty(new: Callable[[], nn.Module]) -> nn.Module:
    """A module with shapes but no values, to load into: loading then neither spends time on
    initialisation nor draws from (and so shifts) the caller's torch random generator."""
    with torch.device("meta"):
        return new()


def _module_spec(module: nn.Module) -> dict[str, _Spec]:
    return {f"net.{name}": _Spec(tuple(value.shape)) for name, value in
            module.state_dict().items()}


def _module_arrays(module: nn.Module) -> dict[str, np.ndarray]:
    return {f"net.{name}": value.detach().numpy().copy() for name, value in
            module.state_dict().items()}


def _load_module(module: nn.Module, arrays: dict[str, np.ndarray]) -> nn.Module:
    module.load_state_dict({name: torch.from_numpy(arrays[f"net.{name}"].astype(np.float32))
                            for name in module.state_dict()}, assign=True)
    return module.eval()


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise SelectorError(f"{path}: not an .npz file ({err})") from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise SelectorError(f"{path}: not an .npz file (a single array)")
    arrays = {}
    with data:
        for name in data.files:
            try:
                arrays[name] = data[name]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
                raise SelectorError(f"{path}: field '{name}' cannot be read ({err})") from err
    return arrays


def _read_meta(path: Path, raw: np.ndarray | None) -> dict[str, Any]:
    if raw is None:
        raise SelectorError(f"{path}: field 'meta' is missing")
    if raw.shape != () or raw.dtype.kind != "U":
        raise SelectorError(f"{path}: field 'meta' must be a JSON string")
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as err:
        raise SelectorError(f"{path}: field 'meta' is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise SelectorError(f"{path}: field 'meta' must be a JSON object")
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "format_version": (lambda v: type(v) is int and v == FORMAT_VERSION,
                           f"{FORMAT_VERSION}"),
        "kind": (lambda v: isinstance(v, str) and v in KINDS, f"one of {sorted(KINDS)}"),
        "names": (lambda v: isinstance(v, list) and len(v) >= 2 and len(set(v)) == len(v)
                  and all(isinstance(name, str) for name in v), "at least 2 distinct strings"),
        "dim": (lambda v: type(v) is int and v >= 1, "a positive integer"),
        "params": (lambda v: isinstance(v, dict), "an object"),
    }
    for name, (ok, expected) in checks.items():
        if name not in meta:
            raise SelectorError(f"{path}: field 'meta.{name}' is missing")
        if not ok(meta[name]):
            raise SelectorError(f"{path}: field 'meta.{name}' must be {expected}, "
                                f"got {meta[name]!r}")
    return meta


def _check_array(path: Path, name: str, value: np.ndarray | None, spec: _Spec,
                 sizes: dict[str, int]) -> None:
    """Presence, type, shape (binding named sizes in `sizes`), finiteness and range."""
    if value is None:
        raise SelectorError(f"{path}: field '{name}' is missing")
    kind = "integer" if spec.integer else "floating-point"
    if value.dtype.kind not in ("iu" if spec.integer else "f"):
        raise SelectorError(f"{path}: field '{name}' must be {kind}, got {value.dtype}")
    expected = tuple(sizes.setdefault(size, value.shape[axis])
                     if isinstance(size, str) and axis < value.ndim else size
                     for axis, size in enumerate(spec.shape))
    if value.shape != expected or 0 in value.shape:
        raise SelectorError(f"{path}: field '{name}' has shape {list(value.shape)}, expected "
                            f"{list(expected)}")
    if not np.isfinite(value).all():
        raise SelectorError(f"{path}: field '{name}' holds non-finite values")
    if spec.minimum is not None and value.min() < spec.minimum \
            or spec.maximum is not None and value.max() > spec.maximum:
        raise SelectorError(f"{path}: field '{name}' has values outside "
                            f"[{spec.minimum}, {spec.maximum}]")
