"""A shared trunk with one linear head per task."""

from __future__ import annotations

from torch import Tensor, nn


class MultiHeadNet(nn.Module):
    """Trunk ``x -> [B, feat_dim]`` plus a linear head per task; ``heads`` maps name -> outputs
    and must contain ``"main"``."""

    def __init__(self, trunk: nn.Module, feat_dim: int, heads: dict[str, int]) -> None:
        super().__init__()
        if "main" not in heads:
            raise ValueError(f"heads must contain 'main', got {sorted(heads)}")
        if "features" in heads:
            raise ValueError("'features' is reserved for forward(..., return_features=True)")
        self.trunk = trunk
        self.feat_dim = feat_dim
        self.heads = nn.ModuleDict({name: nn.Linear(feat_dim, n) for name, n in heads.items()})

    def features(self, x: Tensor) -> Tensor:
        """Flat trunk features ``[B, feat_dim]``."""
        return self.trunk(x)

    def heads_from(self, features: Tensor) -> dict[str, Tensor]:
        """Logits of every head from precomputed features."""
        return {name: head(features) for name, head in self.heads.items()}

    def forward(self, x: Tensor, return_features: bool = False) -> dict[str, Tensor]:
        """Logits per head; with ``return_features`` the dict also holds ``"features"`` (one trunk pass)."""
        feats = self.features(x)
        out = self.heads_from(feats)
        if return_features:
            out["features"] = feats
        return out
