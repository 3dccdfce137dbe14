"""Which text signal proposes the right new item? Validation only (no test case is read): for every cold validation
case, the new items (catalog items absent from training) are ranked by a score between the history's last item and
each new item, items already in the history excluded (as the calibrated insertion's proposals exclude them), and
Recall@10 of the case's next item is reported, overall and split by whether the history's last item is new or warm.

    PYTHONPATH=bench python bench/proposal_signals.py --run runs/game [--out runs/bench/proposal_signals]

Signals:
- ``cosine``: the run's text embeddings (what the insertion's proposals use);
- ``ridge α``: a learnt text transition, W = argmin ‖X W − Y‖² + α‖W‖² over the training cases (X: the last history
  item's unit embedding, Y: the next item's), scored as cos(x W, new item);
- ``tfidf word`` / ``word 1-2`` / ``char 3-5``: TF-IDF cosine over the item texts (scikit-learn);
- ``+ w ·``: the cosine plus w times the other signal.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from common import hardware, md_table, write_result
from genrecedit.coldstart.prior import normalized
from genrecedit.runs.backbone import load_run

NAME = "proposal_signals"
K = 10


def recall_at_k(scores: np.ndarray, histories: np.ndarray, target_pos: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """[n] whether the target (its column ``target_pos``) is among the top K of ``scores`` [n, m] once the history's
    own new items (columns ``pos[item]``, -1 for any other item) are excluded."""
    scores = scores.copy()
    for j in range(histories.shape[1]):
        col = np.where(histories[:, j] >= 0, pos[np.maximum(histories[:, j], 0)], -1)
        rows = np.flatnonzero(col >= 0)
        scores[rows, col[rows]] = -np.inf
    top = np.argpartition(-scores, K, axis=1)[:, :K]
    return (top == target_pos[:, None]).any(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/proposal_signals"))
    args = ap.parse_args()
    run = load_run(args.run, ["threads=2"])
    split = run.prepared.split
    unit = normalized(run.prepared.embeddings).numpy()
    warm = np.asarray(split.warm, bool)
    new = np.flatnonzero(~warm)
    pos = np.full(split.n_items, -1, np.int64)
    pos[new] = np.arange(len(new))
    valid = split.valid
    cold = ~warm[valid.targets]
    histories, targets = valid.histories[cold], valid.targets[cold]
    last = histories[:, -1]
    novel = ~warm[last]
    target_pos = pos[targets]
    cosine = unit[last] @ unit[new].T

    train_last = split.train.histories[:, -1]
    ok = train_last >= 0
    x, y = unit[train_last[ok]], unit[split.train.targets[ok]]
    texts = run.prepared.dataset.items.loc[list(split.item_ids), "text"].astype(str).tolist()
    signals: dict[str, np.ndarray] = {}
    for alpha in (1.0, 10.0, 100.0):
        w = np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ y)
        q = unit[last] @ w
        signals[f"ridge α {alpha:g}"] = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ unit[new].T
    for name, vec in (("tfidf word", TfidfVectorizer(sublinear_tf=True, min_df=2)),
                      ("tfidf word 1-2", TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2))),
                      ("tfidf char 3-5", TfidfVectorizer(sublinear_tf=True, min_df=2, analyzer="char_wb",
                                                         ngram_range=(3, 5)))):
        m = vec.fit_transform(texts)
        signals[name] = (m[last] @ m[new].T).toarray()

    rows, data = [], {}

    def add(label: str, scores: np.ndarray) -> None:
        hit = recall_at_k(scores, histories, target_pos, pos)
        data[label] = {"all": float(hit.mean()), "last_new": float(hit[novel].mean()),
                       "last_warm": float(hit[~novel].mean())}
        rows.append([label, data[label]["all"], data[label]["last_new"], data[label]["last_warm"]])
        print(label, data[label], flush=True)

    add("cosine", cosine)
    for name, scores in signals.items():
        add(name, scores)
        for weight in ((0.5, 1.0, 2.0) if name.startswith("ridge") else (0.3, 0.5, 1.0)):
            add(f"cosine + {weight:g} · {name}", cosine + weight * scores)
    result = {"run": str(args.run), "n_cases": int(len(targets)), "n_last_new": int(novel.sum()),
              "n_new_items": int(len(new)), "recall@10": data, "hardware": hardware()}
    table = md_table(["signal", f"R@{K}", f"R@{K} last item new ({int(novel.sum()):,})",
                      f"R@{K} last item warm ({int((~novel).sum()):,})"], rows)
    write_result(args.out, NAME, result, table, f"Proposal signals on {len(targets):,} cold validation cases")
    print(table)


if __name__ == "__main__":
    main()
