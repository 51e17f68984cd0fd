"""Persistent person ids: the official SuperGlue-style optimal-transport tracker (spec §5.3).

Tracks are matched on the normalised decoder human tokens. The bank keeps tracks that were
not matched, so a person who leaves the view can be re-identified later; unlike the
official code (whose bank grows forever) it holds at most ``max_tracks``, dropping the
tracks unseen for longest, so memory and matching cost stay bounded on a long run.
"""

from __future__ import annotations

import math

import torch


def log_optimal_transport(scores: torch.Tensor, alpha: float, iters: int) -> torch.Tensor:
    """Log-space Sinkhorn with a dustbin row and column; returns the (K+1, n+1) log plan.

    ``scores`` is (K, n). The dustbins absorb unmatched tracks / detections with score
    ``alpha``; marginals are uniform with the dustbins weighted by the other side's count.
    """
    k, n = scores.shape
    coupling = scores.new_full((k + 1, n + 1), alpha)
    coupling[:k, :n] = scores
    norm = -math.log(k + n)
    log_mu = scores.new_full((k + 1,), norm)
    log_mu[k] = math.log(n) + norm
    log_nu = scores.new_full((n + 1,), norm)
    log_nu[n] = math.log(k) + norm
    u = torch.zeros_like(log_mu)
    v = torch.zeros_like(log_nu)
    for _ in range(iters):
        u = log_mu - torch.logsumexp(coupling + v[None, :], dim=1)
        v = log_nu - torch.logsumexp(coupling + u[:, None], dim=0)
    return coupling + u[:, None] + v[None, :] - norm


def mutual_matches(log_plan: torch.Tensor, threshold: float) -> torch.Tensor:
    """For each current detection (column), the matched bank row or -1."""
    plan = log_plan[:-1, :-1]
    best_col = plan.max(dim=1)  # per bank row
    best_row = plan.max(dim=0).indices  # per detection
    rows = torch.arange(plan.shape[0], device=plan.device)
    cols = torch.arange(plan.shape[1], device=plan.device)
    mutual_rows = best_row[best_col.indices] == rows
    mutual_cols = best_col.indices[best_row] == cols
    row_score = torch.where(mutual_rows, best_col.values.exp(), torch.zeros_like(best_col.values))
    valid_rows = mutual_rows & (row_score > threshold)
    valid_cols = mutual_cols & valid_rows[best_row]
    return torch.where(valid_cols, best_row, torch.full_like(best_row, -1))


class Tracker:
    """Assigns persistent ids to the humans of successive views."""

    def __init__(
        self,
        match_threshold: float = 0.2,
        sinkhorn_iters: int = 20,
        dustbin_score: float = -10.0,
        max_tracks: int = 512,
    ):
        if max_tracks < 1:
            raise ValueError(f"max_tracks must be >= 1, got {max_tracks}")
        self.match_threshold = match_threshold
        self.sinkhorn_iters = sinkhorn_iters
        self.dustbin_score = dustbin_score
        self.max_tracks = max_tracks
        self._max_id = -1
        self.reset()

    def reset(self) -> None:
        """Forget every track. Ids keep counting up, so an id is never given to two people."""
        self._tokens: torch.Tensor | None = None  # (K, D) bank of track features
        self._ids: torch.Tensor | None = None  # (K,) int64

    def __len__(self) -> int:
        """Tracks in the bank (at most max_tracks)."""
        return 0 if self._ids is None else int(self._ids.numel())

    def forget(self, ids) -> None:
        """Drop these ids from the bank (tracks that ended): that person gets a new id if seen again."""
        if self._ids is None or not len(ids):
            return
        keep = ~torch.isin(self._ids, torch.as_tensor(list(ids), dtype=torch.int64, device=self._ids.device))
        if not bool(keep.any()):
            self.reset()
            return
        self._tokens, self._ids = self._tokens[keep], self._ids[keep]

    def update(self, tokens: torch.Tensor) -> torch.Tensor:
        """Ids (n,) int64 for this view's human tokens (n, D); n = 0 leaves the bank as is."""
        n = tokens.shape[0]
        if n == 0:
            return torch.empty(0, dtype=torch.int64, device=tokens.device)
        if self._tokens is None:
            ids = torch.arange(n, device=tokens.device) + self._max_id + 1
            self._max_id += n
            self._tokens, self._ids = tokens[: self.max_tracks], ids[: self.max_tracks]
            return ids

        # Exact pairwise distances without a (K, n, D) intermediate.
        scores = -torch.cdist(self._tokens, tokens, compute_mode="donot_use_mm_for_euclid_dist")
        plan = log_optimal_transport(scores, self.dustbin_score, self.sinkhorn_iters)
        match = mutual_matches(plan, self.match_threshold)

        matched = match >= 0
        ids = torch.empty(n, dtype=torch.int64, device=tokens.device)
        ids[matched] = self._ids[match[matched]]
        n_new = int((~matched).sum())
        ids[~matched] = torch.arange(n_new, device=tokens.device) + self._max_id + 1
        self._max_id += n_new

        # Bank = current tracks first, then the old tracks that found no match, most recently
        # seen first (the bank is kept in that order), cut to max_tracks.
        unmatched_rows = torch.ones(self._tokens.shape[0], dtype=torch.bool, device=tokens.device)
        unmatched_rows[match[matched]] = False
        self._tokens = torch.cat([tokens, self._tokens[unmatched_rows]])[: self.max_tracks]
        self._ids = torch.cat([ids, self._ids[unmatched_rows]])[: self.max_tracks]
        return ids
