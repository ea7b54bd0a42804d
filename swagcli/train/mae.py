"""Masked autoencoding on a timm ViT (MAE, He et al. 2022), the pre-pretraining stage of MAWS
(Singh et al. 2023; SPEC.md §4).

:class:`MaeModel` keeps the ViT under ``backbone`` (the same parameter names a
:class:`~swagcli.train.models.HashtagModel` has, so a hashtag run can start from it with
``init.from``) and adds a light decoder. Per image, a random ``mask_ratio`` (75%) of the patches is
dropped; the encoder sees the visible patches only (plus the class token); the decoder gets the
encoded patches and a shared mask token at every masked position, all with fixed 2-D sine-cosine
positions, and predicts the pixels of every patch. The loss is the mean squared error on the masked
patches only, against each patch's pixels normalized by their own mean and variance
(``norm_pix_loss``, MAE's better target).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from swagcli.errors import SwagError
from swagcli.fileio import savefig


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """[h * w, dim] fixed 2-D sine-cosine position embedding (MAE's decoder positions)."""
    if dim % 4:
        raise SwagError(f"mae.decoder_dim: {dim} is not a multiple of 4")
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    parts = []
    for pos in (ys.reshape(-1), xs.reshape(-1)):
        out = pos[:, None] * omega[None]
        parts += [out.sin(), out.cos()]
    return torch.cat(parts, dim=1).float()


class MaeModel(nn.Module):
    def __init__(self, backbone: nn.Module, mask_ratio: float = 0.75, decoder_dim: int = 512,
                 decoder_depth: int = 8, decoder_heads: int = 16, norm_pix_loss: bool = True):
        super().__init__()
        from timm.layers import trunc_normal_
        from timm.models.vision_transformer import Block

        if not all(hasattr(backbone, a) for a in ("patch_embed", "pos_embed", "blocks", "cls_token")):
            raise SwagError(f"objective mae: {type(backbone).__name__} is not a timm ViT (VisionTransformer "
                            "with a class token and learned positions)")
        self.backbone = backbone
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        pe = backbone.patch_embed
        self.patch = int(pe.patch_size[0])
        self.grid = tuple(int(g) for g in pe.grid_size)
        self.prefix = int(getattr(backbone, "num_prefix_tokens", 1))
        dim = backbone.embed_dim
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos", torch.cat([torch.zeros(self.prefix, decoder_dim),
                                                       sincos_2d(decoder_dim, *self.grid)])[None], persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                                            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * 3)
        trunc_normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- pieces -------------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, N, p*p*3]."""
        p, (h, w) = self.patch, self.grid
        if x.shape[-2:] != (h * p, w * p):
            raise SwagError(f"objective mae: images are {tuple(x.shape[-2:])} px, the model's grid needs "
                            f"{h * p}x{w * p} (data.resolution must match model.kwargs.img_size)")
        return x.reshape(x.shape[0], 3, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(x.shape[0], h * w, p * p * 3)

    def unpatchify(self, t: torch.Tensor) -> torch.Tensor:
        p, (h, w) = self.patch, self.grid
        return t.reshape(t.shape[0], h, w, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(t.shape[0], 3, h * p, w * p)

    def _positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(prefix, patch) learned positions of the encoder, resampled if the grid differs."""
        pos = self.backbone.pos_embed
        n = self.grid[0] * self.grid[1]
        embed_prefix = not getattr(self.backbone, "no_embed_class", False)
        pre, patches = (pos[:, :self.prefix], pos[:, self.prefix:]) if embed_prefix else (None, pos)
        if patches.shape[1] != n:
            from timm.layers import resample_abs_pos_embed

            side = int(math.isqrt(patches.shape[1]))
            patches = resample_abs_pos_embed(patches, self.grid, (side, side), num_prefix_tokens=0)
        return pre, patches

    def encode(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Encoder over the patches ``keep`` [B, K] (all if None): [B, prefix + K, D]."""
        b = self.backbone
        t = b.patch_embed(x)
        if t.ndim == 4:  # NHWC from dynamic-size patch embeddings
            t = t.flatten(1, 2)
        pre_pos, pos = self._positions()
        t = t + pos
        if keep is not None:
            t = torch.gather(t, 1, keep[..., None].expand(-1, -1, t.shape[-1]))
        prefix = b.cls_token.expand(t.shape[0], -1, -1)
        if getattr(b, "reg_token", None) is not None:
            prefix = torch.cat([prefix, b.reg_token.expand(t.shape[0], -1, -1)], dim=1)
        if pre_pos is not None:
            prefix = prefix + pre_pos
        t = b.norm_pre(torch.cat([prefix, t], dim=1))
        for blk in b.blocks:
            t = blk(t)
        return b.norm(t)

    def masking(self, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep [B, K] patch indices, restore [B, N]: the order that undoes the shuffle)."""
        n = self.grid[0] * self.grid[1]
        k = max(1, int(round(n * (1 - self.mask_ratio))))
        # drawn on the CPU: its RNG state is what checkpoints keep, so a resumed run redraws the same masks
        order = torch.rand(batch, n).argsort(dim=1).to(device)
        return order[:, :k], order.argsort(dim=1)

    def decode(self, z: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """[B, prefix + K, D] -> [B, N, p*p*3] pixel predictions for every patch."""
        t = self.decoder_embed(z)
        pre, vis = t[:, :self.prefix], t[:, self.prefix:]
        n = restore.shape[1]
        full = torch.cat([vis, self.mask_token.expand(t.shape[0], n - vis.shape[1], -1)], dim=1)
        full = torch.gather(full, 1, restore[..., None].expand(-1, -1, t.shape[-1]))
        t = torch.cat([pre, full], dim=1) + self.decoder_pos
        for blk in self.decoder_blocks:
            t = blk(t)
        return self.decoder_pred(self.decoder_norm(t))[:, self.prefix:]

    def target(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patchify(x)
        if self.norm_pix_loss:
            t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return t

    def forward(self, x: torch.Tensor):
        """(loss, predictions [B, N, p*p*3], mask [B, N]: 1 where the patch was hidden)."""
        target = self.target(x)  # checks the image size first
        keep, restore = self.masking(x.shape[0], x.device)
        pred = self.decode(self.encode(x, keep), restore)
        mask = torch.ones(x.shape[0], restore.shape[1], device=x.device)
        mask.scatter_(1, keep, 0.0)
        err = (pred.float() - target.float()).square().mean(dim=-1)
        return (err * mask).sum() / mask.sum(), pred, mask

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor):
        """(masked input, reconstruction with the visible patches pasted back) in input space."""
        _, pred, mask = self(x)
        pred = pred.float()
        if self.norm_pix_loss:  # back to pixels with the true patch statistics (MAE's visualization)
            t = self.patchify(x)
            pred = pred * (t.var(dim=-1, keepdim=True) + 1e-6).sqrt() + t.mean(dim=-1, keepdim=True)
        m = mask[..., None]
        masked = self.unpatchify(self.patchify(x) * (1 - m))
        recon = self.unpatchify(self.patchify(x) * (1 - m) + pred * m)
        return masked, recon


def evaluate_mae(model, norm, loader, env, device, limit=None) -> dict:
    """Mean masked-patch loss on held-out images, with masks drawn from a fixed seed (the same
    masks for every evaluation of a run, so the numbers compare)."""
    import torch.distributed as dist

    tot = torch.zeros(2, dtype=torch.float64)
    model.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234 + env.rank)
        for batch in loader:
            x = norm(batch["image"].to(device))
            loss = model(x)[0]
            if batch.get("ignore"):  # a rank out of batches keeping a sharded model's forwards in step
                continue
            tot += torch.tensor([len(x), float(loss) * len(x)], dtype=torch.float64)
            if limit and tot[0] * env.world >= limit:
                break
    model.train()
    if env.distributed:
        dist.all_reduce(tot)
    return {"eval_images": int(tot[0]), "eval_loss": tot[1].item() / max(tot[0].item(), 1)}


def reconstruction_figure(model, norm, images: torch.Tensor, path, device):
    """A PNG with a column per image: the original, what the encoder saw, the reconstruction
    (visible patches pasted back, as in MAE's figures)."""
    from swagcli.plots import pyplot

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = norm(images.to(device))
        masked, recon = model.eval().reconstruct(x)
    model.train()
    if path is None:  # another rank of a sharded model: its part of the forward passes is done
        return None

    def show(t):
        return ((t * norm.std + norm.mean).clamp(0, 255) / 255).permute(0, 2, 3, 1).cpu().numpy()

    rows = [("original", show(x)), (f"masked {model.mask_ratio:.0%}", show(masked)), ("reconstruction", show(recon))]
    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n, 4.2), squeeze=False, constrained_layout=True)
    for r, (name, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(imgs[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    savefig(fig, path, dpi=120)
    plt.close(fig)
    return path
