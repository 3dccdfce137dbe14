"""How a batch of edit requests sits against training, on tokens alone (exact matching, no model).

At SID position p a request (history, item c) is the edit s_p = (history, c_0..c_{p-1}) -> o_p = c_p. A training
sample (h, j) has the key (h, codes[j][:p]) and says codes[j][p] there. An edit whose key training already
answers with another code fights the training signal (``pseudo`` knowledge does by construction at p = 0); two
requests with one key and different targets fight each other.
"""
from __future__ import annotations

import numpy as np

from genrecedit.data.dataset import CaseSet
from genrecedit.edit.knowledge import EditRequests, row_ids


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if len(mask) else 0.0


def knowledge_diagnosis(requests: EditRequests, codes: np.ndarray, train: CaseSet, positions: list[int]) -> dict:
    """Per SID position in ``positions``: ``n_requests``; ``share_training_key``: share of requests whose key is
    some training sample's key (identical history, target with the same first p codes);
    ``share_contradicts_training``: of those, the share where no such training sample has the request's code at p
    (0.0 when none is a training key); ``share_conflicting_keys``: share of requests whose key another request
    shares with a different code at p; ``distinct_keys``: number of distinct request keys.

    codes [n_items, P] SIDs of the catalog; train: the backbone's training samples. Returns
    ``{"by_position": [{"position": p, ...}, ...]}``.
    """
    codes = np.asarray(codes)
    req_hist, train_hist = row_ids(requests.histories, train.histories)
    relevant = np.isin(train_hist, req_hist)  # only training samples with a request's history can share its key
    train_hist = train_hist[relevant]
    req_codes, train_codes = codes[requests.items], codes[train.targets[relevant]]
    out = []
    for p in positions:
        req_prefix, train_prefix = row_ids(req_codes[:, :p], train_codes[:, :p])
        req_key, train_key = row_ids(np.stack([req_hist, req_prefix], 1), np.stack([train_hist, train_prefix], 1))
        req_says, train_says = row_ids(np.stack([req_key, req_codes[:, p]], 1),
                                       np.stack([train_key, train_codes[:, p]], 1))
        is_key = np.isin(req_key, train_key)
        agrees = np.isin(req_says, train_says)  # implies is_key
        # per request key, how many different codes at p the requests ask for
        pairs = np.unique(np.stack([req_key, req_codes[:, p]], 1), axis=0)
        targets_per_key = np.bincount(pairs[:, 0], minlength=len(req_key)) if len(pairs) else np.zeros(0, np.int64)
        out.append({
            "position": int(p),
            "n_requests": len(requests),
            "share_training_key": _share(is_key),
            "share_contradicts_training": _share(~agrees[is_key]),
            "share_conflicting_keys": _share(targets_per_key[req_key] > 1),
            "distinct_keys": int(len(np.unique(req_key))),
        })
    return {"by_position": out}
