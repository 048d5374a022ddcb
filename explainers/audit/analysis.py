"""Per-class analysis of a dataset's explanation maps: Spectral Relevance Analysis and flags.

A dataset audit asks what a model looks at *across* many images, not in one. Following Spectral
Relevance Analysis (SpRAy; Lapuschkin et al., "Unmasking Clever Hans predictors and assessing what
machines really learn", Nature Communications 10, 1096, 2019), the maps of one class are compared
with each other: maps that put their evidence in the same places form a cluster, and a cluster
whose evidence sits at one fixed place while the objects move, or off the object, is a candidate
"Clever Hans" strategy (a watermark, a border, a corner marker).

Everything here is a pure function on arrays, with no file I/O and no model:

* :func:`class_mean_maps` — per class, the mean of the per-image normalised positive maps;
* :func:`spray` — SpRAy on the maps of one class → :class:`SprayResult`;
* :func:`flags` — plain-sentence findings (:class:`Flag`) on the clusters and the predictions;
* :func:`analyse` — all of the above for every class → :class:`AuditAnalysis`.

Inputs share one convention: ``maps`` is float (N, S, S), the raw signed maps of N images at one
small fixed size (e.g. 32 × 32, area-resized); a row holding any NaN or infinity is an image whose
map failed and is left out of every statistic. ``labels`` and ``predictions`` are int (N,),
``probabilities`` float (N,) the probability of the predicted class, ``object_masks`` and
``marker_masks`` float (N, S, S) in [0, 1] (the fraction of each cell covered by the object or a
known artefact). Positions are in units of the image side: (row, column) in [0, 1], so thresholds
do not depend on S.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from scipy import sparse

from explainers.audit.store import AuditRun, open_run
from explainers.core.maps import resize_map
from explainers.errors import ParameterError

__all__ = [
    "AuditAnalysis",
    "ClassAnalysis",
    "Flag",
    "SprayResult",
    "analyse",
    "analyse_run",
    "attention_peaks",
    "choose_clusters",
    "class_mean_maps",
    "default_neighbours",
    "downsample",
    "flags",
    "mask_centroids",
    "mass_share",
    "normalise_maps",
    "spray",
    "spread",
    "valid_rows",
]

Normalisation = Literal["sum", "max"]

#: Default SpRAy resolution: maps are area-downsampled to this side before they are compared.
SPRAY_SIZE = 16
#: Above this many maps the Laplacian's spectrum is found by ARPACK instead of a dense solver.
DENSE_LIMIT = 2000
#: Largest number of clusters the eigengap may choose.
MAX_CLUSTERS = 8
#: Below this many images t-SNE is not run; the display uses two spectral coordinates instead.
TSNE_MIN_IMAGES = 12
#: Fraction of a map's cells (the highest) whose mass-weighted centroid is the attention peak.
PEAK_TOP_FRACTION = 0.10
#: ``fixed_location``: largest spread of a cluster's peaks (fraction of the image side), with masks.
FIXED_SPREAD = 0.08
#: ``fixed_location``: the same limit when there are no object masks to compare with.
FIXED_SPREAD_WITHOUT_MASKS = 0.04
#: ``fixed_location``: the objects' spread (or the class's other peaks') must be at least this many
#: times the cluster's peak spread.
SPREAD_RATIO = 2.0
#: ``outside_object``: a median share of positive mass inside the object mask below this ...
INSIDE_SHARE = 0.3
#: ... and a median share over the object's area fraction below this.
INSIDE_LIFT = 2.0
#: ``confident_error``: smallest probability of a wrong prediction.
CONFIDENT = 0.9
#: Clusters smaller than this are never flagged (a spread of two or three points says little).
MIN_FLAG_SIZE = 5
#: Classes with fewer valid images than this are skipped by :func:`analyse`.
MIN_CLASS_IMAGES = 10


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SprayResult:
    """SpRAy on the maps of one class.

    Attributes
    ----------
    images : np.ndarray
        int (n,): the analysed maps (the valid rows) as indices into the array given to
        :func:`spray`; in an :class:`AuditAnalysis`, indices into the whole dataset.
    labels : np.ndarray
        int (n,): the cluster of each analysed map, 0 .. n_clusters - 1, clusters numbered by
        size (largest first; equal sizes by their first image).
    n_clusters : int
        The number of clusters the eigengap chose.
    eigenvalues : np.ndarray
        float (m,): the smallest eigenvalues of the affinity graph's normalised Laplacian,
        ascending, m = min(max_clusters + 1, n) (more when ``n_clusters`` forces more clusters).
    gaps : np.ndarray
        float (m - 1,): ``gaps[j] = eigenvalues[j + 1] - eigenvalues[j]``; choosing k clusters
        means the gap after the k-th eigenvalue, ``gaps[k - 1]``, is the largest.
    embedding : np.ndarray
        float (n, 2): coordinates for a scatter plot (t-SNE, or spectral; see ``embedding_kind``).
    embedding_kind : str
        ``"tsne"`` or ``"spectral"``.
    mean_maps : np.ndarray
        float (n_clusters, S, S): per cluster, the mean of its normalised positive maps at the
        input size S.
    sizes : np.ndarray
        int (n_clusters,): images per cluster.
    n_neighbours : int
        The k of the k-nearest-neighbour graph.
    empty : np.ndarray
        bool (n,): maps with no positive mass (they compare as all-zero maps).
    """

    images: np.ndarray
    labels: np.ndarray
    n_clusters: int
    eigenvalues: np.ndarray
    gaps: np.ndarray
    embedding: np.ndarray
    embedding_kind: str
    mean_maps: np.ndarray
    sizes: np.ndarray
    n_neighbours: int
    empty: np.ndarray

    def members(self, cluster: int) -> np.ndarray:
        """int (size,): the caller's indices of the images in ``cluster``."""
        return self.images[self.labels == cluster]


@dataclass(frozen=True)
class Flag:
    """One finding of the audit.

    Attributes
    ----------
    kind : str
        ``"fixed_location"``, ``"outside_object"``, ``"misclassified"`` or ``"confident_error"``.
    class_index : int
        The class (of the grouping :func:`analyse` used: label or prediction).
    cluster : int or None
        The SpRAy cluster the finding is about, or None for a finding about single images.
    images : np.ndarray
        int (m,): the caller's indices of the images concerned, ascending.
    evidence : str
        A plain sentence with the numbers behind the finding.
    values : dict
        The same numbers, by name, for a program to read.
    """

    kind: str
    class_index: int
    cluster: int | None
    images: np.ndarray
    evidence: str
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClassAnalysis:
    """The analysis of one class.

    Attributes
    ----------
    class_index, class_name
        The class.
    images : np.ndarray
        int (n,): the caller's indices of the class's valid images.
    mean_map : np.ndarray
        float (S, S): the mean of the class's normalised positive maps.
    spray : SprayResult
        SpRAy on the class's maps.
    """

    class_index: int
    class_name: str
    images: np.ndarray
    mean_map: np.ndarray
    spray: SprayResult


@dataclass(frozen=True)
class AuditAnalysis:
    """The analysis of a dataset, class by class.

    Attributes
    ----------
    group_by : str
        ``"label"`` or ``"prediction"``: what put an image in a class.
    class_names : list of str
    classes : dict of int to ClassAnalysis
        The analysed classes.
    skipped : dict of int to str
        Classes not analysed, with the reason (too few images).
    mean_maps : np.ndarray
        float (n_classes, S, S): :func:`class_mean_maps` for every class, skipped ones included
        (all NaN for a class without a valid image).
    failed : np.ndarray
        int (f,): images whose map failed (NaN or infinite values), left out everywhere.
    flags : list of Flag
        All findings, class by class.
    """

    group_by: str
    class_names: list[str]
    classes: dict[int, ClassAnalysis]
    skipped: dict[int, str]
    mean_maps: np.ndarray
    failed: np.ndarray
    flags: list[Flag]

    def flags_of(self, class_index: int, kind: str | None = None) -> list[Flag]:
        """The flags of one class, optionally of one kind."""
        return [
            f
            for f in self.flags
            if f.class_index == class_index and (kind is None or f.kind == kind)
        ]


# --------------------------------------------------------------------------- map statistics


def valid_rows(maps: np.ndarray) -> np.ndarray:
    """bool (N,): True for the maps (N, S, S) with only finite values."""
    maps = np.asarray(maps)
    return np.isfinite(maps.reshape(len(maps), -1)).all(axis=1)


def normalise_maps(maps: np.ndarray, how: Normalisation = "sum") -> np.ndarray:
    """The positive part of each map, scaled to unit sum (``"sum"``) or unit maximum (``"max"``).

    ``maps`` is float (N, S, S) (finite); returns float64 (N, S, S). A map with no positive mass
    stays all zero.
    """
    if how not in ("sum", "max"):
        raise ValueError(f"expected normalisation 'sum' or 'max', got {how!r}")
    positive = np.clip(np.asarray(maps, np.float64), 0.0, None)
    flat = positive.reshape(len(positive), -1)
    scale = flat.sum(axis=1) if how == "sum" else flat.max(axis=1, initial=0.0)
    scale = np.where(scale > 0, scale, 1.0)
    return positive / scale[:, None, None]


def class_mean_maps(
    maps: np.ndarray,
    classes: np.ndarray,
    n_classes: int | None = None,
    *,
    normalise: Normalisation = "sum",
) -> np.ndarray:
    """Per class, the mean of the per-image normalised positive maps.

    Parameters
    ----------
    maps : np.ndarray
        float (N, S, S) raw signed maps; rows with NaN or infinity are left out.
    classes : np.ndarray
        int (N,): the class of each image (labels or predictions).
    n_classes : int or None
        Number of classes (default: ``max(classes) + 1``).
    normalise : {"sum", "max"}
        How each map's positive part is scaled before averaging (see :func:`normalise_maps`).

    Returns
    -------
    np.ndarray
        float64 (n_classes, S, S); all NaN for a class without a valid image.
    """
    maps = np.asarray(maps)
    classes = np.asarray(classes).astype(int)
    if n_classes is None:
        n_classes = int(classes.max()) + 1 if len(classes) else 0
    keep = valid_rows(maps)
    normalised = normalise_maps(maps[keep], normalise)
    kept = classes[keep]
    out = np.full((n_classes, *maps.shape[1:]), np.nan)
    for c in range(n_classes):
        if np.any(kept == c):
            out[c] = normalised[kept == c].mean(axis=0)
    return out


def downsample(maps: np.ndarray, size: int) -> np.ndarray:
    """Area-downsample maps (N, S, S) to (N, size, size): block means when ``size`` divides S,
    otherwise :func:`explainers.core.maps.resize_map` (antialiased bilinear). Maps already at
    ``size`` or smaller are returned as they are (float64)."""
    maps = np.asarray(maps, np.float64)
    side = maps.shape[-1]
    if size >= side:
        return maps.copy()
    if side % size == 0:
        f = side // size
        return maps.reshape(len(maps), size, f, size, f).mean(axis=(2, 4))
    return np.stack([resize_map(m, (size, size)) for m in maps]).astype(np.float64)


def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres (rows, columns) in units of the side, each (side, side)."""
    centres = (np.arange(side) + 0.5) / side
    return np.meshgrid(centres, centres, indexing="ij")


def attention_peaks(maps: np.ndarray, top: float = PEAK_TOP_FRACTION) -> np.ndarray:
    """Where each map's positive evidence concentrates: the centroid (row, column) in units of
    the side of the top ``top`` fraction of cells (the highest values, at least one cell),
    weighted by their values.

    ``maps`` float (N, S, S); returns float (N, 2), NaN for a map with no positive mass. The
    centroid of the top cells is steadier than the argmax on flat or twin-peaked maps.
    """
    positive = np.clip(np.asarray(maps, np.float64), 0.0, None)
    n, side = len(positive), positive.shape[-1]
    flat = positive.reshape(n, -1)
    count = max(1, round(top * flat.shape[1]))
    order = np.argsort(-flat, axis=1, kind="stable")[:, :count]
    weights = np.take_along_axis(flat, order, axis=1)
    rows, cols = (g.reshape(-1)[order] for g in _grid(side))
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        peaks = np.stack([(rows * weights).sum(1) / total, (cols * weights).sum(1) / total], 1)
    peaks[total <= 0] = np.nan
    return peaks


def mask_centroids(masks: np.ndarray) -> np.ndarray:
    """Centroid (row, column) in units of the side of each mask (N, S, S) in [0, 1]; float
    (N, 2), NaN for an empty mask."""
    masks = np.clip(np.asarray(masks, np.float64), 0.0, None)
    rows, cols = _grid(masks.shape[-1])
    total = masks.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.stack(
            [(masks * rows).sum((1, 2)) / total, (masks * cols).sum((1, 2)) / total], axis=1
        )
    out[total <= 0] = np.nan
    return out


def mass_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """float (N,): the share of each map's positive mass that lies inside its mask (cell mass ×
    the mask's coverage of the cell); NaN for a map with no positive mass."""
    positive = np.clip(np.asarray(maps, np.float64), 0.0, None)
    total = positive.sum(axis=(1, 2))
    inside = (positive * np.clip(np.asarray(masks, np.float64), 0.0, 1.0)).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = inside / total
    share[total <= 0] = np.nan
    return share


def spread(points: np.ndarray) -> float:
    """Root-mean-square distance of points (m, 2) from their mean (NaN rows ignored); NaN when
    fewer than two points remain. In the points' units (here: fractions of the image side)."""
    points = np.asarray(points, np.float64)
    points = points[np.isfinite(points).all(axis=1)]
    if len(points) < 2:
        return float("nan")
    return float(np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=1).mean()))


# --------------------------------------------------------------------------- SpRAy


def choose_clusters(eigenvalues: np.ndarray, max_clusters: int = MAX_CLUSTERS) -> int:
    """The eigengap heuristic: the k in 1 .. max_clusters whose gap λ[k] − λ[k−1] (eigenvalues
    ascending, 0-based) is the largest.

    Ties go to the smallest k. One cluster is chosen when the first gap, λ[1] − λ[0], is the
    largest — a single well-connected group has one eigenvalue near 0 and the rest well above it.
    With fewer than two eigenvalues there is one cluster.
    """
    values = np.asarray(eigenvalues, np.float64)
    usable = min(max_clusters, len(values) - 1)
    if usable < 1:
        return 1
    gaps = np.diff(values[: usable + 1])
    return int(np.argmax(gaps)) + 1  # argmax returns the first of equal maxima


def _knn_affinity(features: np.ndarray, k: int) -> sparse.csr_matrix:
    """Symmetric 0/1 k-nearest-neighbour affinity (n, n), sparse.

    i links to its k nearest maps (Euclidean, never itself) and to every map exactly as near as
    the k-th, so equal maps are all linked (without the ties, which of several identical maps
    count as "nearest" would depend on their order). The graph is made symmetric: i and j are
    linked when either chose the other. Distances are computed in blocks of rows.
    """
    n = len(features)
    squared = (features**2).sum(axis=1)
    tolerance = 1e-10 * max(float(squared.max(initial=0.0)), 1e-30)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    block = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n, block):
        stop = min(n, start + block)
        part = features[start:stop]
        distances = squared[start:stop, None] + squared[None, :] - 2.0 * part @ features.T
        distances = np.maximum(distances, 0.0)
        distances[np.arange(stop - start), np.arange(start, stop)] = np.inf
        kth = np.partition(distances, k - 1, axis=1)[:, k - 1]
        linked_rows, linked_cols = np.nonzero(distances <= kth[:, None] + tolerance)
        rows.append(linked_rows + start)
        cols.append(linked_cols)
    row_index, col_index = np.concatenate(rows), np.concatenate(cols)
    chosen = sparse.csr_matrix((np.ones(len(row_index)), (row_index, col_index)), shape=(n, n))
    return chosen.maximum(chosen.T).tocsr()


def _laplacian_spectrum(affinity: sparse.csr_matrix, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The m smallest eigenvalues (ascending, float (m,)) and their eigenvectors (n, m) of the
    normalised Laplacian I − D^−½ A D^−½ (a node without links keeps degree 1).

    Dense ``eigh`` up to :data:`DENSE_LIMIT` nodes; above, ARPACK on I + D^−½ A D^−½ (the same
    eigenvectors, eigenvalues 2 − λ, largest first) from a fixed start vector.
    """
    n = affinity.shape[0]
    degree = np.asarray(affinity.sum(axis=1)).ravel()
    inv_sqrt = sparse.diags(1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)))
    walk = (inv_sqrt @ affinity @ inv_sqrt).tocsr()
    if n <= DENSE_LIMIT:
        values, vectors = np.linalg.eigh(np.eye(n) - walk.toarray())
        values, vectors = values[:m], vectors[:, :m]
    else:
        from scipy.sparse.linalg import eigsh

        shifted = (sparse.identity(n, format="csr") + walk).tocsr()
        top, vectors = eigsh(shifted, k=m, which="LA", v0=np.full(n, 1.0 / np.sqrt(n)))
        order = np.argsort(-top, kind="stable")
        values, vectors = 2.0 - top[order], vectors[:, order]
    values = np.clip(values, 0.0, 2.0)
    # A fixed sign per eigenvector (largest |entry| positive) makes the embedding deterministic.
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])])
    return values, vectors * np.where(signs == 0, 1.0, signs)


def default_neighbours(n: int) -> int:
    """k of the k-nearest-neighbour graph for n maps: ``ceil(log2 n) + 1``, at most 10 and at
    most n − 1 (about log n keeps the graph connected within a group but sparse between groups)."""
    return int(max(1, min(10, n - 1, int(np.ceil(np.log2(max(n, 2)))) + 1)))


def spray(
    maps: np.ndarray,
    *,
    size: int = SPRAY_SIZE,
    normalise: Normalisation = "sum",
    n_neighbours: int | None = None,
    max_clusters: int = MAX_CLUSTERS,
    n_clusters: int | None = None,
    embedding: Literal["tsne", "spectral"] = "tsne",
    random_state: int = 0,
) -> SprayResult:
    """Spectral Relevance Analysis of the maps of one class.

    1. Rows with NaN or infinity are left out.
    2. Each map is area-downsampled to ``size`` × ``size`` (:func:`downsample`), its positive part
       kept and scaled to unit sum (or maximum); a map with no positive mass stays all zero.
    3. Affinity: symmetric 0/1 k-nearest-neighbour graph on the flattened maps (Euclidean; maps
       tied with the k-th nearest are linked too), with k = ``n_neighbours`` or
       :func:`default_neighbours`.
    4. Spectrum of the normalised Laplacian I − D^−½ A D^−½; the number of clusters is chosen by
       :func:`choose_clusters` on its smallest ``max_clusters + 1`` eigenvalues (or forced by
       ``n_clusters``).
    5. Clustering: k-means (10 starts, ``random_state``) on the first k eigenvectors with each row
       scaled to unit length (Ng, Jordan & Weiss, 2002); clusters renumbered largest first.
    6. Display: t-SNE (``random_state``, PCA start, perplexity min(30, (n − 1) / 3)) of the
       spectral coordinates 2 .. max_clusters + 1; with fewer than :data:`TSNE_MIN_IMAGES` maps,
       or ``embedding="spectral"``, the second and third eigenvectors themselves.

    Parameters
    ----------
    maps : np.ndarray
        float (N, S, S) raw signed maps of one class.

    Returns
    -------
    SprayResult
        Deterministic for fixed inputs and ``random_state``.
    """
    maps = np.asarray(maps, np.float64)
    if maps.ndim != 3:
        raise ValueError(f"expected maps of shape (N, S, S), got {maps.shape}")
    images = np.flatnonzero(valid_rows(maps))
    valid = maps[images]
    n = len(images)
    if n == 0:
        raise ValueError("no valid map to analyse (every row holds NaN or infinity)")
    normalised = normalise_maps(valid, normalise)
    features = normalise_maps(downsample(valid, size), normalise).reshape(n, -1)
    empty = features.sum(axis=1) <= 0

    k = min(n_neighbours or default_neighbours(n), max(n - 1, 1))
    m = min(max(max_clusters, n_clusters or 1) + 1, n)
    if n == 1:
        eigenvalues, vectors = np.zeros(1), np.ones((1, 1))
    else:
        eigenvalues, vectors = _laplacian_spectrum(_knn_affinity(features, k), m)
    if n_clusters is None:
        chosen = choose_clusters(eigenvalues, max_clusters)
    else:
        chosen = int(np.clip(n_clusters, 1, n))
    labels = _cluster(vectors, chosen, random_state)
    chosen = int(labels.max()) + 1
    coordinates, kind = _display(vectors[:, 1:m], embedding, random_state)
    mean_maps = np.stack([normalised[labels == c].mean(axis=0) for c in range(chosen)])
    return SprayResult(
        images=images,
        labels=labels,
        n_clusters=chosen,
        eigenvalues=eigenvalues,
        gaps=np.diff(eigenvalues),
        embedding=coordinates,
        embedding_kind=kind,
        mean_maps=mean_maps,
        sizes=np.bincount(labels, minlength=chosen),
        n_neighbours=int(k),
        empty=empty,
    )


def _cluster(vectors: np.ndarray, k: int, random_state: int) -> np.ndarray:
    """k-means labels on the row-normalised first k eigenvectors, renumbered largest first."""
    n = len(vectors)
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    from sklearn.cluster import KMeans

    coordinates = vectors[:, :k].copy()
    norms = np.linalg.norm(coordinates, axis=1, keepdims=True)
    coordinates /= np.where(norms > 0, norms, 1.0)
    raw = KMeans(n_clusters=k, n_init=10, random_state=random_state).fit_predict(coordinates)
    present = np.unique(raw)
    sizes = np.array([np.sum(raw == c) for c in present])
    firsts = np.array([np.flatnonzero(raw == c)[0] for c in present])
    order = present[np.lexsort((firsts, -sizes))]
    renumber = {int(c): i for i, c in enumerate(order)}
    return np.array([renumber[int(c)] for c in raw], dtype=np.int64)


def _display(spectral: np.ndarray, embedding: str, random_state: int) -> tuple[np.ndarray, str]:
    """(n, 2) display coordinates from the non-trivial spectral coordinates (n, m)."""
    n = len(spectral)
    if embedding == "tsne" and n >= TSNE_MIN_IMAGES and spectral.shape[1] >= 2:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (n - 1) / 3.0))
        tsne = TSNE(
            n_components=2,
            perplexity=perplexity,
            init="pca",
            random_state=random_state,
            method="barnes_hut" if n > 500 else "exact",
        )
        return tsne.fit_transform(spectral).astype(np.float64), "tsne"
    if embedding not in ("tsne", "spectral"):
        raise ValueError(f"expected embedding 'tsne' or 'spectral', got {embedding!r}")
    out = np.zeros((n, 2))
    out[:, : min(2, spectral.shape[1])] = spectral[:, :2]
    return out, "spectral"


# --------------------------------------------------------------------------- flags


def _name(class_names: list[str] | None, index: int) -> str:
    if class_names is not None and 0 <= index < len(class_names):
        return f"'{class_names[index]}'"
    return str(index)


def _percent(part: int, whole: int) -> str:
    return f"{part} of {whole} ({100.0 * part / max(whole, 1):.0f} %)"


def _where(cluster: int, name: str, size: int, of: int) -> str:
    return f"Cluster {cluster} of class {name} ({size} of its {of} images)"


def _fixed_location(
    maps: np.ndarray,
    members: np.ndarray,
    others: np.ndarray,
    object_masks: np.ndarray | None,
) -> tuple[bool, dict[str, float]]:
    """Whether a cluster's attention peaks stay put while the objects (or the class's other maps)
    move, with the numbers; see :func:`flags`."""
    peaks = attention_peaks(maps[members])
    peak_spread = spread(peaks)
    values = {"peak_spread": peak_spread, "images_with_peak": float(np.isfinite(peaks[:, 0]).sum())}
    if np.isfinite(peaks).all(axis=1).any():
        centre = np.nanmean(peaks, axis=0)
        values.update(peak_row=float(centre[0]), peak_column=float(centre[1]))
    if object_masks is not None:
        reference = spread(mask_centroids(object_masks[members]))
        values["object_spread"] = reference
        limit = FIXED_SPREAD
    else:
        reference = spread(attention_peaks(maps[others])) if len(others) else float("nan")
        values["other_peak_spread"] = reference
        limit = FIXED_SPREAD_WITHOUT_MASKS
    values["limit"] = limit
    flagged = (
        values["images_with_peak"] >= MIN_FLAG_SIZE
        and np.isfinite(peak_spread)
        and np.isfinite(reference)
        and peak_spread <= limit
        and reference > limit
        and reference >= SPREAD_RATIO * peak_spread
    )
    return bool(flagged), values


def flags(
    maps: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    probabilities: np.ndarray,
    clusterings: dict[int, SprayResult],
    *,
    group_by: Literal["label", "prediction"] = "label",
    object_masks: np.ndarray | None = None,
    marker_masks: np.ndarray | None = None,
    class_names: list[str] | None = None,
    confident: float = CONFIDENT,
) -> list[Flag]:
    """Findings on the clusters of each class and on its predictions.

    Parameters
    ----------
    maps : np.ndarray
        float (N, S, S) raw signed maps; rows with NaN or infinity (failed maps) are left out of
        every flag, the prediction flags included.
    labels, predictions : np.ndarray
        int (N,): the true and the predicted class of each image.
    probabilities : np.ndarray
        float (N,): the probability of the predicted class.
    clusterings : dict of int to SprayResult
        Per class, SpRAy on that class's maps, with ``images`` indexing ``maps`` (as
        :func:`analyse` builds them). Classes without one get only the prediction flags.
    group_by : {"label", "prediction"}
        Whether an image counts in the class of its label or of its prediction (as in the
        ``clusterings``).
    object_masks, marker_masks : np.ndarray or None
        float (N, S, S) in [0, 1]: the object, and a known artefact (e.g. a watermark). The
        marker share only enters the evidence.
    class_names : list of str or None
        Names for the sentences.
    confident : float
        Smallest probability of a wrong prediction for ``confident_error``.

    Returns
    -------
    list of Flag
        Class by class (ascending); within a class the cluster flags first (clusters ascending,
        ``fixed_location`` before ``outside_object``), then ``misclassified``, then
        ``confident_error``.

    The flags
    ---------
    ``fixed_location`` (per cluster)
        Each image's attention peak is the centroid of its top 10 % cells
        (:func:`attention_peaks`); the cluster's *peak spread* is their RMS distance from their
        mean, in units of the image side (:func:`spread`). With object masks the reference is
        the *object spread*, the same measure on the objects' centroids (:func:`mask_centroids`)
        of the same images; without, the peak spread of the class's images outside the cluster.
        Flagged when the cluster has at least :data:`MIN_FLAG_SIZE` maps with positive mass, its
        peak spread is at most :data:`FIXED_SPREAD` (0.08 of the side) — at most
        :data:`FIXED_SPREAD_WITHOUT_MASKS` (0.04) without masks — and the reference is both above
        that limit and at least :data:`SPREAD_RATIO` (2) times the peak spread.

        Why these numbers: measured on the demo data (per class 40 images with the corner marker
        and 40 without, Grad-CAM area-resized to 32 × 32, SpRAy with the defaults; three data
        seeds). The shortcut model's marker clusters have peak spreads 0.001-0.069 against
        object spreads 0.17-0.26, a ratio of at least 3.0; the honest model's clusters, which
        SpRAy forms by where the object lies, have a peak spread close to their object spread
        (ratio 0.91-1.23, peak spreads 0.053-0.16). A ratio of 2 sits between 1.23 and 3.0
        (near their geometric mean). 0.08 is under a twelfth of the side (one Grad-CAM cell of
        the demo models) and keeps out the shortcut model's clusters of images without a marker
        (peak spreads ≥ 0.10: it looks at a broad region near the empty corner). Without masks a
        tight cluster of an honest model (peak spreads down to 0.053 above, its objects lying in
        one region) cannot be told from a fixed place by the peaks alone, hence the stricter
        0.04 there — a weaker test, to read as a hint.
    ``outside_object`` (per cluster, only with object masks)
        The share of each map's positive mass inside its object mask (:func:`mass_share`) and
        that share over the mask's area fraction (the *lift*: 1 is what a flat map gets).
        Flagged when, over the cluster's maps with positive mass (at least
        :data:`MIN_FLAG_SIZE`), the median share is below :data:`INSIDE_SHARE` (0.3) *and* the
        median lift below :data:`INSIDE_LIFT` (2). The lift keeps a blurred map of a small
        object (whose mass spills over the edges: on the same data the honest model's triangle
        clusters have median shares 0.23-0.33, but lifts ≥ 4.3) from being flagged; every
        cluster of the shortcut model, with or without the marker, has a lift ≤ 1.3 (it looks
        at the corner, not at the shape).
    ``misclassified`` (per class, cluster None)
        The class's images whose prediction is not their label.
    ``confident_error`` (per class, cluster None)
        Those of them predicted with probability ≥ ``confident``.
    """
    maps = np.asarray(maps, np.float64)
    labels = np.asarray(labels).astype(int)
    predictions = np.asarray(predictions).astype(int)
    probabilities = np.asarray(probabilities, np.float64)
    if group_by not in ("label", "prediction"):
        raise ValueError(f"expected group_by 'label' or 'prediction', got {group_by!r}")
    classes = labels if group_by == "label" else predictions
    _check_lengths(maps, labels=labels, predictions=predictions, probabilities=probabilities)
    if object_masks is not None:
        object_masks = np.asarray(object_masks, np.float64)
    if marker_masks is not None:
        marker_masks = np.asarray(marker_masks, np.float64)
    valid = valid_rows(maps)
    found: list[Flag] = []
    for c in sorted({*np.unique(classes[valid]).tolist(), *clusterings}):
        name = _name(class_names, c)
        result = clusterings.get(c)
        if result is not None:
            found += _cluster_flags(maps, c, name, result, object_masks, marker_masks)
        members = np.flatnonzero(valid & (classes == c))
        members = members[labels[members] >= 0]  # an unlabelled image is never a mistake
        wrong = members[predictions[members] != labels[members]]
        whose = f"images of class {name}" if group_by == "label" else f"images predicted {name}"
        if len(wrong):
            # The other side of each mistake: the wrong answer, or the true class.
            other = predictions[wrong] if group_by == "label" else labels[wrong]
            commonest = int(np.bincount(other).argmax())
            side = "wrong answer" if group_by == "label" else "true class"
            found.append(
                Flag(
                    kind="misclassified",
                    class_index=c,
                    cluster=None,
                    images=wrong,
                    evidence=(
                        f"{_percent(len(wrong), len(members))} {whose} are misclassified; the "
                        f"commonest {side} is {_name(class_names, commonest)} "
                        f"({int(np.sum(other == commonest))} images)."
                    ),
                    values={"count": float(len(wrong)), "of": float(len(members))},
                )
            )
        sure = wrong[probabilities[wrong] >= confident]
        if len(sure):
            found.append(
                Flag(
                    kind="confident_error",
                    class_index=c,
                    cluster=None,
                    images=sure,
                    evidence=(
                        f"{_percent(len(sure), len(members))} {whose} are wrong with a "
                        f"probability of at least {confident:g} (median "
                        f"{np.median(probabilities[sure]):.3f})."
                    ),
                    values={
                        "count": float(len(sure)),
                        "of": float(len(members)),
                        "median_probability": float(np.median(probabilities[sure])),
                    },
                )
            )
    return found


def _cluster_flags(
    maps: np.ndarray,
    c: int,
    name: str,
    result: SprayResult,
    object_masks: np.ndarray | None,
    marker_masks: np.ndarray | None,
) -> list[Flag]:
    found: list[Flag] = []
    for cluster in range(result.n_clusters):
        members = result.members(cluster)
        others = result.images[result.labels != cluster]
        where = _where(cluster, name, len(members), len(result.images))
        marker = ""
        marker_values: dict[str, float] = {}
        if marker_masks is not None:
            on_marker = float(np.nanmedian(mass_share(maps[members], marker_masks[members])))
            if np.isfinite(on_marker):
                marker = f" The median share of positive map mass on the marker is {on_marker:.2f}."
                marker_values = {"marker_share": on_marker}

        fixed, values = _fixed_location(maps, members, others, object_masks)
        if fixed:
            with_peak = int(values["images_with_peak"])
            counted = (
                "maps'"
                if with_peak == len(members)
                else f"{with_peak} maps' (the others have no positive mass)"
            )
            if object_masks is not None:
                compared = (
                    f"while the centres of their objects spread {values['object_spread']:.3f} "
                    f"({values['object_spread'] / max(values['peak_spread'], 1e-12):.1f} times "
                    "more)"
                )
            else:
                compared = (
                    f"while the peaks of the class's other images spread "
                    f"{values['other_peak_spread']:.3f} (no object masks to compare with)"
                )
            found.append(
                Flag(
                    kind="fixed_location",
                    class_index=c,
                    cluster=cluster,
                    images=np.sort(members),
                    evidence=(
                        f"{where}: the {counted} attention peaks stay at one place, around row "
                        f"{values['peak_row']:.2f}, column {values['peak_column']:.2f} of the "
                        f"image, with a spread of {values['peak_spread']:.3f} of the image side "
                        f"(limit {values['limit']:.2f}), {compared}.{marker}"
                    ),
                    values={**values, **marker_values},
                )
            )
        if object_masks is None:
            continue
        share = mass_share(maps[members], object_masks[members])
        area = object_masks[members].mean(axis=(1, 2))
        usable = np.isfinite(share) & (area > 0)
        if usable.sum() < MIN_FLAG_SIZE:
            continue
        median_share = float(np.median(share[usable]))
        median_lift = float(np.median(share[usable] / area[usable]))
        if median_share < INSIDE_SHARE and median_lift < INSIDE_LIFT:
            found.append(
                Flag(
                    kind="outside_object",
                    class_index=c,
                    cluster=cluster,
                    images=np.sort(members),
                    evidence=(
                        f"{where}: a median {median_share:.2f} of the maps' positive mass lies "
                        f"inside the object (flagged below {INSIDE_SHARE:g}); the objects cover "
                        f"a median {np.median(area[usable]):.2f} of the image, so the maps put "
                        f"{median_lift:.2f} times a flat map's share on them (flagged below "
                        f"{INSIDE_LIFT:g}).{marker}"
                    ),
                    values={
                        "inside_share": median_share,
                        "inside_lift": median_lift,
                        "object_area": float(np.median(area[usable])),
                        **marker_values,
                    },
                )
            )
    return found


def _check_lengths(maps: np.ndarray, **arrays: np.ndarray) -> None:
    for key, array in arrays.items():
        if len(array) != len(maps):
            raise ValueError(f"expected {len(maps)} {key} (one per map), got {len(array)}")


# --------------------------------------------------------------------------- the whole dataset


def analyse(
    maps: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    probabilities: np.ndarray,
    *,
    object_masks: np.ndarray | None = None,
    marker_masks: np.ndarray | None = None,
    class_names: list[str] | None = None,
    group_by: Literal["label", "prediction"] = "label",
    min_images: int = MIN_CLASS_IMAGES,
    size: int = SPRAY_SIZE,
    normalise: Normalisation = "sum",
    n_neighbours: int | None = None,
    max_clusters: int = MAX_CLUSTERS,
    embedding: Literal["tsne", "spectral"] = "tsne",
    confident: float = CONFIDENT,
    random_state: int = 0,
) -> AuditAnalysis:
    """Class mean maps, SpRAy and flags for every class of a dataset.

    Parameters
    ----------
    maps : np.ndarray
        float (N, S, S) raw signed maps; rows with NaN or infinity are failed images, reported in
        ``failed`` and left out everywhere.
    labels, predictions : np.ndarray
        int (N,): true and predicted classes.
    probabilities : np.ndarray
        float (N,): probability of the predicted class.
    object_masks, marker_masks : np.ndarray or None
        float (N, S, S) in [0, 1], optional.
    class_names : list of str or None
        Default: ``"class 0"`` ... for every class seen.
    group_by : {"label", "prediction"}
        Whether an image belongs to the class of its label or of its prediction.
    min_images : int
        Classes with fewer valid images are skipped (listed in ``skipped`` with the reason);
        they still get the prediction flags.
    size, normalise, n_neighbours, max_clusters, embedding, random_state
        Passed to :func:`spray`.
    confident
        Passed to :func:`flags`.

    Returns
    -------
    AuditAnalysis
        Deterministic for fixed inputs.
    """
    maps = np.asarray(maps, np.float64)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise ValueError(f"expected maps of shape (N, S, S), got {maps.shape}")
    labels = np.asarray(labels).astype(int)
    predictions = np.asarray(predictions).astype(int)
    _check_lengths(maps, labels=labels, predictions=predictions, probabilities=probabilities)
    for key, masks in (("object_masks", object_masks), ("marker_masks", marker_masks)):
        if masks is not None and np.shape(masks) != maps.shape:
            raise ValueError(f"expected {key} of shape {maps.shape}, got {np.shape(masks)}")
    if group_by not in ("label", "prediction"):
        raise ValueError(f"expected group_by 'label' or 'prediction', got {group_by!r}")
    classes = labels if group_by == "label" else predictions
    n_classes = int(max(labels.max(initial=-1), predictions.max(initial=-1))) + 1
    if class_names is None:
        class_names = [f"class {i}" for i in range(n_classes)]
    class_names = list(class_names)
    n_classes = max(n_classes, len(class_names))

    valid = valid_rows(maps)
    means = class_mean_maps(maps, classes, n_classes, normalise=normalise)
    analysed: dict[int, ClassAnalysis] = {}
    skipped: dict[int, str] = {}
    clusterings: dict[int, SprayResult] = {}
    for c in range(n_classes):
        members = np.flatnonzero(valid & (classes == c))
        if len(members) < min_images:
            total = int(np.sum(classes == c))
            failed = f" ({total - len(members)} failed)" if total > len(members) else ""
            skipped[c] = (
                f"{len(members)} valid images{failed} with {group_by} {_name(class_names, c)}, "
                f"fewer than the {min_images} SpRAy needs"
            )
            continue
        result = spray(
            maps[members],
            size=size,
            normalise=normalise,
            n_neighbours=n_neighbours,
            max_clusters=max_clusters,
            embedding=embedding,
            random_state=random_state,
        )
        result = replace(result, images=members[result.images])
        clusterings[c] = result
        analysed[c] = ClassAnalysis(
            class_index=c,
            class_name=class_names[c],
            images=members,
            mean_map=means[c],
            spray=result,
        )
    found = flags(
        maps,
        labels,
        predictions,
        probabilities,
        clusterings,
        group_by=group_by,
        object_masks=object_masks,
        marker_masks=marker_masks,
        class_names=class_names,
        confident=confident,
    )
    return AuditAnalysis(
        group_by=group_by,
        class_names=class_names,
        classes=analysed,
        skipped=skipped,
        mean_maps=means,
        failed=np.flatnonzero(~valid),
        flags=found,
    )


def analyse_run(
    run: AuditRun | str | os.PathLike,
    method: str = "grad_cam",
    *,
    group_by: Literal["label", "prediction"] = "label",
    **options: Any,
) -> AuditAnalysis:
    """:func:`analyse` on a run folder's committed rows (:func:`explainers.audit.open_run`).

    Images that failed, and for ``group_by="label"`` images without a label, are left out (their
    maps count as failed). Masks are read from the run's cell shares (0..255 → 0..1).
    ``options`` go to :func:`analyse`.
    """
    if not isinstance(run, AuditRun):
        run = open_run(run)
    if method not in run.maps:
        raise ParameterError(
            f"the run has no {method!r} maps; it has {', '.join(run.maps) or 'none'}"
        )
    columns = run.table.to_pydict()
    maps = np.asarray(run.maps[method], np.float32).copy()
    labels = np.array([-1 if v is None else v for v in columns["label"]], np.int64)
    predictions = np.array([-1 if v is None else v for v in columns["prediction"]], np.int64)
    probabilities = np.array(
        [np.nan if v is None else v for v in columns["probability"]], np.float64
    )
    unusable = predictions < 0
    if group_by == "label":
        unusable |= labels < 0
    maps[unusable] = np.nan
    masks = {kind: np.asarray(values, np.float32) / 255.0 for kind, values in run.masks.items()}
    return analyse(
        maps,
        labels,
        predictions,
        probabilities,
        object_masks=masks.get("object"),
        marker_masks=masks.get("marker"),
        class_names=list(run.manifest["model"]["class_names"]),
        group_by=group_by,
        **options,
    )
