"""Stand-in item content embeddings for imported logs (no content embedding
exists): a truncated SVD of the train-period user-item matrix plus a fixed
random projection of the item's topic; items unseen in train get the mean
of their topic."""

from __future__ import annotations

import numpy as np

from pinrank.backend import schema

#: Stored values per slice of a product: the slice's gathered rows (values x
#: width floats) stay ~100 MB instead of GBs at tens of millions of actions.
_SLICE_VALUES = 1 << 18


class _Sparse:
    """A COO matrix with the two products randomized SVD needs (no scipy in
    the runtime deps): rows pre-sorted so each product is a reduceat per
    slice of whole rows. Each row's sum is reduced alone, so slicing gives
    the same floats as one reduceat over everything."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> None:
        self.shape = shape
        self._fwd = self._prep(rows, cols, vals)
        self._bwd = self._prep(cols, rows, vals)

    @staticmethod
    def _prep(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, ...]:
        order = np.argsort(rows, kind="stable")
        r = rows[order]
        starts = np.concatenate([[0], np.flatnonzero(np.diff(r)) + 1])
        cuts = np.unique(np.searchsorted(starts, np.arange(0, r.size, _SLICE_VALUES)))  # row index per slice
        return r[starts], np.append(starts, r.size), cols[order], vals[order], np.append(cuts, starts.size)

    @staticmethod
    def _mul(prep: tuple[np.ndarray, ...], x: np.ndarray, n_out: int) -> np.ndarray:
        out_rows, bounds, cols, vals, cuts = prep
        out = np.zeros((n_out, x.shape[1]))
        for first, last in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            lo, hi = bounds[first], bounds[last]
            part = x[cols[lo:hi]]
            part *= vals[lo:hi, None]
            out[out_rows[first:last]] = np.add.reduceat(part, bounds[first:last] - lo, axis=0)
        return out

    def dot(self, x: np.ndarray) -> np.ndarray:  # A @ x
        return self._mul(self._fwd, x, self.shape[0])

    def tdot(self, x: np.ndarray) -> np.ndarray:  # A.T @ x
        return self._mul(self._bwd, x, self.shape[1])


def _svd_item_factors(users: np.ndarray, items: np.ndarray, n_items: int, k: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Item factors V_k * sqrt(S_k) of the binary user-item matrix, rows
    weighted by 1/sqrt(user degree); randomized SVD (Halko et al.)."""
    out = np.zeros((n_items, k))
    if users.size == 0:
        return out
    pairs = np.unique(users.astype(np.int64) * n_items + items)
    u, i = pairs // n_items, pairs % n_items
    n_users = int(u.max()) + 1
    deg = np.bincount(u, minlength=n_users)
    a = _Sparse(u, i, 1.0 / np.sqrt(deg[u]), (n_users, n_items))
    rank = min(k, n_users, int(np.unique(i).size))
    width = min(rank + 8, n_items)
    y = a.dot(rng.standard_normal((n_items, width)))
    for _ in range(4):  # power iterations sharpen the spectrum
        q, _r = np.linalg.qr(y)
        z, _r = np.linalg.qr(a.tdot(q))
        y = a.dot(z)
    q, _r = np.linalg.qr(y)
    vecs, sing, _vt = np.linalg.svd(a.tdot(q), full_matrices=False)  # (Q^T A)^T = U_b S V_b^T
    factors = vecs[:, :rank] * np.sqrt(sing[:rank])
    # SVD signs are arbitrary; pin them so equal inputs give equal files.
    flip = np.sign(factors[np.abs(factors).argmax(axis=0), np.arange(rank)])
    out[:, :rank] = factors * np.where(flip == 0, 1.0, flip)
    return out


def item_embeddings(item_topic: np.ndarray, train_users: np.ndarray, train_items: np.ndarray,
                    seed: int = 0, dim: int = schema.ITEM_EMB_DIM) -> np.ndarray:
    """Deterministic stand-in content embeddings, float32 [num_items, dim].

    `train_users` / `train_items` are dense indices of train-period
    engagements. Each row = unit-norm SVD factor + 0.7 * a fixed random unit
    vector for the item's topic; items absent from train get their topic's
    mean over train items (or the topic vector alone).
    """
    rng = np.random.default_rng(seed)
    n_items = item_topic.shape[0]
    n_topics = int(item_topic.max()) + 1 if n_items else 0
    topic_vec = rng.standard_normal((n_topics, dim))
    topic_vec /= np.linalg.norm(topic_vec, axis=1, keepdims=True)
    factors = _svd_item_factors(train_users, train_items, n_items, dim, rng)
    norm = np.linalg.norm(factors, axis=1, keepdims=True)
    factors = np.divide(factors, norm, out=np.zeros_like(factors), where=norm > 0)
    emb = factors + 0.7 * topic_vec[item_topic]
    seen = np.zeros(n_items, dtype=bool)
    seen[train_items] = True
    topic_sum = np.zeros((n_topics, dim))
    np.add.at(topic_sum, item_topic[seen], emb[seen])
    topic_n = np.bincount(item_topic[seen], minlength=n_topics)[:, None]
    topic_mean = np.where(topic_n > 0, topic_sum / np.maximum(topic_n, 1), 0.7 * topic_vec)
    emb[~seen] = topic_mean[item_topic[~seen]]
    return emb.astype(np.float32)
